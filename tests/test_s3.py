"""S3 input, output and checkpoint against a real S3-compatible server (moto_server) on loopback."""

from __future__ import annotations

import json
import os
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


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh bucket; AWS_* variables point the code under test at moto."""
    from pyarrow import fs as pafs

    for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": moto_endpoint}.items():
        monkeypatch.setenv(name, value)
    name = "bkt-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                      endpoint_override=moto_endpoint.split("://")[1], scheme="http",
                      allow_bucket_creation=True).create_dir(name)  # fmt: skip
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
    result = invoke(runner, ["run", f"s3://{bucket}/in/prompts.jsonl", "-o", f"s3://{bucket}/out/results.jsonl",
                             "--summary-json", f"s3://{bucket}/out/summary.json"], env=connection_env(server))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in (get(f"s3://{bucket}/out/results.jsonl") or b"").splitlines()]
    assert [r["id"] for r in rows] == [f"row{i}" for i in range(30)]
    assert json.loads(get(f"s3://{bucket}/out/summary.json") or b"{}")["ok"] == 30
    # Complete (SPEC §8.2): one object, the completion record, stays; no `folder/` marker keys anywhere.
    keys = all_keys(bucket)
    assert not [k for k in keys if k.endswith("/")], keys
    assert [k for k in keys if ".checkpoint" in k] == ["out/results.jsonl.checkpoint/manifest.json"]
    assert json.loads(get(f"s3://{bucket}/out/results.jsonl.checkpoint/manifest.json") or b"{}")["complete"]["rows"] == 30

    # The same command again: nothing sent, the output untouched, exit 0.
    before = get(f"s3://{bucket}/out/results.jsonl")
    sent = server.stats.requests
    again = invoke(runner, ["run", f"s3://{bucket}/in/prompts.jsonl", "-o", f"s3://{bucket}/out/results.jsonl"],
                   env=connection_env(server))  # fmt: skip
    assert again.exit_code == 0, again.stderr
    assert "already complete" in again.stderr
    assert server.stats.requests == sent
    assert get(f"s3://{bucket}/out/results.jsonl") == before


def all_keys(bucket: str) -> list[str]:
    """Every key in the bucket as S3 lists it, directory markers included (pyarrow's listing hides them)."""
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_parquet_input_from_s3_and_parquet_output(sim, runner, bucket: str, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from inferbatch import storage

    server = sim()
    local = Path(__file__).resolve().parent.parent / "sample_data" / "prompts.parquet"
    storage.upload_file(str(local), f"s3://{bucket}/prompts.parquet")
    result = invoke(runner, ["run", f"s3://{bucket}/prompts.parquet", "-o", f"s3://{bucket}/results.parquet"],
                    env=connection_env(server))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    (tmp_path / "r.parquet").write_bytes(get(f"s3://{bucket}/results.parquet") or b"")
    table = pq.read_table(tmp_path / "r.parquet")
    assert table.num_rows == 50 and set(table.column("status").to_pylist()) == {"ok"}
    report = invoke(runner, ["report", f"s3://{bucket}/results.parquet"])
    assert report.exit_code == 0 and "ok=50" in report.stdout


def test_missing_s3_input_is_exit_2_with_one_line(sim, runner, bucket: str) -> None:
    server = sim()
    result = invoke(runner, ["run", f"s3://{bucket}/nope.jsonl", "-o", f"s3://{bucket}/out.jsonl"],
                    env=connection_env(server))  # fmt: skip
    assert result.exit_code == 2
    assert "no such S3 object" in result.stderr and "Traceback" not in result.stderr
    assert server.stats.requests == 0


def test_kill_9_with_the_checkpoint_on_s3_then_resume(sim_process: Any, bucket: str, tmp_path: Path) -> None:
    server = sim_process("--latency-ms", "50")
    rows = 1500
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"q {i}"} for i in range(rows)])
    output = f"s3://{bucket}/results.jsonl"
    env = {**os.environ, "INFERENCE_URL": server.url, "INFERENCE_KEY": "k", "INFERENCE_MODEL_ID": "m"}
    args = [sys.executable, "-m", "inferbatch", "run", str(source), "-o", output, "-c", "16", "-q",
            "--checkpoint-interval", "0.5"]  # fmt: skip
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
        kills += 1
        time.sleep(3.5)  # the killed run's lease (3 intervals, at least 3 s) runs out
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
    result = invoke(runner, ["run", f"s3://{bucket}/in.jsonl", "-o", f"s3://{bucket}/out.jsonl"],
                    env=connection_env(server))  # fmt: skip
    assert result.exit_code == 2
    assert "another inferbatch run" in result.stderr
    assert server.stats.requests == 0
    expired = {**lease, "expires_at": time.time() - 1}
    put(f"s3://{bucket}/out.jsonl.checkpoint/lease.json", orjson.dumps(expired))
    again = invoke(runner, ["run", f"s3://{bucket}/in.jsonl", "-o", f"s3://{bucket}/out.jsonl"],
                   env=connection_env(server))  # fmt: skip
    assert again.exit_code == 0, again.stderr
