"""S3 input, output and checkpoint against a real S3-compatible server (moto_server) on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import chat_rows, connection_env, invoke, write_jsonl

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """A moto_server process on a free loopback port, once it answers; returns it and its URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            return proc, url
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)


def create_bucket(endpoint: str, name: str) -> None:
    from pyarrow import fs as pafs

    pafs.S3FileSystem(
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        endpoint_override=endpoint.split("://")[1],
        scheme="http",
        allow_bucket_creation=True,
    ).create_dir(name)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    proc, url = start_moto()
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh bucket; AWS_* variables point the code under test at moto."""
    for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": moto_endpoint}.items():
        monkeypatch.setenv(name, value)
    readable = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower().replace("_", "-"))[:40].strip("-")
    name = f"bkt-{readable}-{hashlib.blake2b(request.node.name.encode(), digest_size=3).hexdigest()}"
    create_bucket(moto_endpoint, name)
    return name


def put(uri: str, data: bytes) -> None:
    from inferbatch import storage

    storage.write_bytes(uri, data)


def get(uri: str) -> bytes | None:
    from inferbatch import storage

    return storage.read_bytes(uri)


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def test_jsonl_input_from_s3_output_to_s3(sim, runner, bucket: str) -> None:
    server = sim()
    put(f"s3://{bucket}/in/prompts.jsonl", jsonl_bytes(chat_rows(30)))
    result = invoke(
        runner,
        [
            "run",
            f"s3://{bucket}/in/prompts.jsonl",
            "-o",
            f"s3://{bucket}/out/results.jsonl",
            "--summary-json",
            f"s3://{bucket}/out/summary.json",
        ],
        env=connection_env(server),
    )
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in (get(f"s3://{bucket}/out/results.jsonl") or b"").splitlines()]
    assert [r["id"] for r in rows] == [f"row{i}" for i in range(30)]
    assert json.loads(get(f"s3://{bucket}/out/summary.json") or b"{}")["ok"] == 30
    # Complete (SPEC §8.2): one object, the completion record, stays; no `folder/` marker keys anywhere.
    keys = all_keys(bucket)
    assert not [k for k in keys if k.endswith("/")], keys
    assert [k for k in keys if ".checkpoint" in k] == ["out/results.jsonl.checkpoint/manifest.json"]
    assert (
        json.loads(get(f"s3://{bucket}/out/results.jsonl.checkpoint/manifest.json") or b"{}")["complete"]["rows"] == 30
    )

    # The same command again: nothing sent, the output untouched, exit 0.
    before = get(f"s3://{bucket}/out/results.jsonl")
    sent = server.stats.requests
    again = invoke(
        runner,
        ["run", f"s3://{bucket}/in/prompts.jsonl", "-o", f"s3://{bucket}/out/results.jsonl"],
        env=connection_env(server),
    )
    assert again.exit_code == 0, again.stderr
    assert "already complete" in again.stderr
    assert server.stats.requests == sent
    assert get(f"s3://{bucket}/out/results.jsonl") == before


def all_keys(bucket: str) -> list[str]:
    """Every key in the bucket as S3 lists it, directory markers included (pyarrow's listing hides them)."""
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_parquet_input_from_s3_and_parquet_output(sim, runner, bucket: str, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from inferbatch import storage

    server = sim()
    local = Path(__file__).resolve().parent.parent / "sample_data" / "prompts.parquet"
    storage.upload_file(str(local), f"s3://{bucket}/prompts.parquet")
    result = invoke(
        runner,
        ["run", f"s3://{bucket}/prompts.parquet", "-o", f"s3://{bucket}/results.parquet"],
        env=connection_env(server),
    )
    assert result.exit_code == 0, result.stderr
    (tmp_path / "r.parquet").write_bytes(get(f"s3://{bucket}/results.parquet") or b"")
    table = pq.read_table(tmp_path / "r.parquet")
    assert table.num_rows == 50 and set(table.column("status").to_pylist()) == {"ok"}
    report = invoke(runner, ["report", f"s3://{bucket}/results.parquet"])
    assert report.exit_code == 0 and "ok=50" in report.stdout


def test_missing_s3_input_is_exit_2_with_one_line(sim, runner, bucket: str) -> None:
    server = sim()
    result = invoke(
        runner, ["run", f"s3://{bucket}/nope.jsonl", "-o", f"s3://{bucket}/out.jsonl"], env=connection_env(server)
    )
    assert result.exit_code == 2
    assert "no such S3 object" in result.stderr and "Traceback" not in result.stderr
    assert server.stats.requests == 0


def test_kill_9_with_the_checkpoint_on_s3_then_resume(sim_process: Any, bucket: str, tmp_path: Path) -> None:
    server = sim_process("--latency-ms", "50")
    rows = 1500
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"q {i}"} for i in range(rows)])
    output = f"s3://{bucket}/results.jsonl"
    env = {**os.environ, "INFERENCE_URL": server.url, "INFERENCE_KEY": "k", "INFERENCE_MODEL_ID": "m"}
    args = [
        sys.executable,
        "-m",
        "inferbatch",
        "run",
        str(source),
        "-o",
        output,
        "-c",
        "16",
        "-q",
        "--checkpoint-interval",
        "0.5",
    ]
    from inferbatch import storage

    kills = 0
    for _ in range(2):
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        parts_before = len(storage.list_objects(f"{output}.checkpoint/parts"))
        while len(storage.list_objects(f"{output}.checkpoint/parts")) < parts_before + 1:
            assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint parts appeared"
            time.sleep(0.1)
        proc.kill()
        proc.wait(timeout=10)
        kills += 1  # the rerun starts at once: the killed run's lease names a gone process on this host (§8.36)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = [json.loads(line) for line in (get(output) or b"").splitlines()]
    assert [r["id"] for r in result] == [f"r{i}" for i in range(rows)]
    assert {r["status"] for r in result} == {"ok"}
    requests = server.stats()["requests"]
    # Each kill re-sends at most its in-flight rows plus what finished since the last part
    # (parts go up at most once a second: 16 slots / 50 ms = 320 rows a second).
    assert requests <= rows + kills * (16 + 320 * 1.5)
    keys = all_keys(bucket)
    assert [k for k in keys if ".checkpoint" in k] == ["results.jsonl.checkpoint/manifest.json"], keys
    assert not [k for k in keys if k.endswith("/")], keys


def test_a_live_lease_refuses_a_second_run(sim, runner, bucket: str) -> None:
    import orjson

    server = sim()
    put(f"s3://{bucket}/in.jsonl", jsonl_bytes(chat_rows(3)))
    lease = {"run_id": "someone-else", "host": "web.1", "pid": 4, "expires_at": time.time() + 60}
    put(f"s3://{bucket}/out.jsonl.checkpoint/lease.json", orjson.dumps(lease))
    result = invoke(
        runner, ["run", f"s3://{bucket}/in.jsonl", "-o", f"s3://{bucket}/out.jsonl"], env=connection_env(server)
    )
    assert result.exit_code == 2
    assert "another inferbatch run" in result.stderr
    assert server.stats.requests == 0
    expired = {**lease, "expires_at": time.time() - 1}
    put(f"s3://{bucket}/out.jsonl.checkpoint/lease.json", orjson.dumps(expired))
    again = invoke(
        runner, ["run", f"s3://{bucket}/in.jsonl", "-o", f"s3://{bucket}/out.jsonl"], env=connection_env(server)
    )
    assert again.exit_code == 0, again.stderr


def test_a_run_killed_with_9_on_this_host_leaves_a_lease_taken_over_at_once(
    sim_process: Any, bucket: str, tmp_path: Path
) -> None:
    """Promise (SPEC §8.36): a lease whose holder ran on this host and whose process is gone (kill -9) is taken
    over at once: the rerun starts immediately (it was refused until the lease expired, 15 s by default)."""
    server = sim_process("--latency-ms", "50")
    rows = 600
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"q {i}"} for i in range(rows)])
    output = f"s3://{bucket}/results.jsonl"
    env = {**os.environ, "INFERENCE_URL": server.url, "INFERENCE_KEY": "k", "INFERENCE_MODEL_ID": "m"}
    args = [sys.executable, "-m", "inferbatch", "run", str(source), "-o", output, "-q"]  # default interval: 15 s lease
    holder = subprocess.Popen([*args, "-c", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while get(f"{output}.checkpoint/lease.json") is None:
        assert time.monotonic() < deadline and holder.poll() is None, "the run took no lease"
        time.sleep(0.05)
    assert json.loads(get(f"{output}.checkpoint/lease.json") or b"{}")["pid"] == holder.pid
    holder.kill()
    holder.wait(timeout=10)

    rerun = subprocess.run([*args, "-c", "16"], env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "taking over the checkpoint lease" in rerun.stderr
    result = [json.loads(line) for line in (get(output) or b"").splitlines()]
    assert [r["id"] for r in result] == [f"r{i}" for i in range(rows)]
    assert {r["status"] for r in result} == {"ok"}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to read a process's start time")
@pytest.mark.parametrize(
    ("holder", "taken_over"),
    [
        ("alive", False),
        ("gone", True),
        ("pid-reused", True),
        ("zombie", True),
        ("other-boot", False),
        ("other-host", False),
    ],
)
def test_which_leases_a_rerun_takes_over(holder: str, taken_over: bool, sim, runner, bucket: str) -> None:
    """Promise (SPEC §8.36, §8.20): only a lease whose holder is on this host (same host name, boot and pid
    namespace) and provably gone (no such pid, a zombie, or the pid now names a process started at another
    time) is taken over at once; a live holder, or one on another host or boot, still refuses the run."""
    import orjson

    from inferbatch.checkpoint_s3 import _process_status, this_process

    server = sim()
    put(f"s3://{bucket}/in.jsonl", jsonl_bytes(chat_rows(3)))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        status = _process_status(sleeper.pid)
        assert status is not None
        lease = {
            "run_id": "another-run",
            **this_process(),
            "pid": sleeper.pid,
            "started": status[1],
            "expires_at": time.time() + 600,
        }
        if holder == "pid-reused":
            lease["started"] = str(int(status[1]) - 1)
        elif holder == "zombie":
            sleeper.kill()  # killed, not reaped: os.kill(pid, 0) still succeeds
            deadline = time.monotonic() + 30
            while (_process_status(sleeper.pid) or ("",))[0] != "Z":
                assert time.monotonic() < deadline, "the killed process never became a zombie"
                time.sleep(0.01)
        elif holder != "alive":
            sleeper.kill()
            sleeper.wait()
            if holder == "other-boot":
                lease["boot_id"] = f"not-{lease['boot_id']}"
            elif holder == "other-host":
                lease["host"] = "web.1"
        put(f"s3://{bucket}/out.jsonl.checkpoint/lease.json", orjson.dumps(lease))
        result = invoke(
            runner, ["run", f"s3://{bucket}/in.jsonl", "-o", f"s3://{bucket}/out.jsonl"], env=connection_env(server)
        )
    finally:
        sleeper.kill()
        sleeper.wait()
    if taken_over:
        assert result.exit_code == 0, result.stderr
        assert server.stats.requests == 3
    else:
        assert result.exit_code == 2
        assert "another inferbatch run" in result.stderr
        assert server.stats.requests == 0


def test_worker_on_s3_names_outputs_by_the_whole_key_and_resumes_an_old_checkpoint(sim, runner, bucket: str) -> None:
    """Promise (SPEC §8.19, §8.2): on S3, `a.jsonl`, `a.csv` and `day1/a.jsonl` under the inbox are three inputs with
    three results, named by their whole key below the inbox (they were one name, `a`, and two were never run);
    an unfinished checkpoint an older worker left under the stem name is resumed, not paid for again."""
    from inferbatch import storage

    server = sim()
    inbox, outbox = f"s3://{bucket}/inbox", f"s3://{bucket}/outbox"
    rows = chat_rows(4, "j")
    rows[1]["messages"][0]["content"] += " [[sim:400]]"  # an error row keeps the checkpoint
    put(f"{inbox}/a.jsonl", jsonl_bytes(rows))
    put(f"{inbox}/a.csv", b"id,prompt\n" + b"".join(b"c%d,question %d\n" % (i, i) for i in range(3)))
    put(f"{inbox}/day1/a.jsonl", jsonl_bytes(chat_rows(2, "d")))
    old = invoke(runner, ["run", f"{inbox}/a.jsonl", "-o", f"{outbox}/a.results.jsonl"], env=connection_env(server))
    assert old.exit_code == 1, old.stderr
    assert storage.object_size(f"{outbox}/a.results.jsonl.checkpoint/manifest.json") is not None
    sent_before = server.stats.requests

    args = ["worker", "--inbox", inbox, "--outbox", outbox, "--once", "--poll", "0.2"]
    result = invoke(runner, args, env=connection_env(server))
    assert result.exit_code == 0, result.stderr
    assert server.stats.requests == sent_before + 3 + 2  # a.jsonl's finished rows were not sent again
    assert [r["status"] for r in map(json.loads, (get(f"{outbox}/a.jsonl.results.jsonl") or b"").splitlines())] == [
        "ok",
        "error",
        "ok",
        "ok",
    ]
    assert len((get(f"{outbox}/a.csv.results.jsonl") or b"").splitlines()) == 3
    assert len((get(f"{outbox}/day1/a.jsonl.results.jsonl") or b"").splitlines()) == 2
    for name in ("a.jsonl", "a.csv", "day1/a.jsonl"):
        assert json.loads(get(f"{outbox}/{name}.done.json") or b"{}")["input"] == f"{inbox}/{name}"
    assert storage.list_objects(f"{outbox}/a.results.jsonl.checkpoint") == []

    again = invoke(runner, args, env=connection_env(server))
    assert again.exit_code == 0 and server.stats.requests == sent_before + 5


def test_a_damaged_manifest_on_s3_is_one_line_and_restart_starts_over(sim, runner, bucket: str) -> None:
    """Its error says "rerun with --restart": that must work (it read the damaged manifest first, and failed)."""
    server = sim()
    put(f"s3://{bucket}/in/p.jsonl", jsonl_bytes(chat_rows(5)))
    put(f"s3://{bucket}/out/r.jsonl.checkpoint/manifest.json", b'{"input": {"size": 1')  # cut short
    args = ["run", f"s3://{bucket}/in/p.jsonl", "-o", f"s3://{bucket}/out/r.jsonl"]

    refused = invoke(runner, args, env=connection_env(server))
    restarted = invoke(runner, [*args, "--restart"], env=connection_env(server))

    assert refused.exit_code == 2, refused.stderr
    assert "manifest.json is damaged; rerun with --restart" in refused.stderr
    assert "Traceback" not in refused.output
    assert restarted.exit_code == 0, restarted.stderr
    rows = [json.loads(line) for line in (get(f"s3://{bucket}/out/r.jsonl") or b"").splitlines()]
    assert [r["status"] for r in rows] == ["ok"] * 5
