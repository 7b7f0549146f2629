"""The Heroku worker and shards: real processes against the simulator; merge of shard outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import chat_rows, invoke, read_jsonl, write_jsonl
from inferbatch.config import parse_shard
from inferbatch.errors import ConfigError


def worker_process(
    inbox: Path, outbox: Path, url: str, *extra: str, dyno: str | None = None, shards: str | None = None
) -> subprocess.Popen[str]:
    env = {**os.environ, "INFERENCE_URL": url, "INFERENCE_KEY": "k", "INFERENCE_MODEL_ID": "m"}
    if dyno:
        env["DYNO"] = dyno
    if shards:
        env["INFERBATCH_SHARDS"] = shards
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inferbatch",
            "worker",
            "--inbox",
            str(inbox),
            "--outbox",
            str(outbox),
            "--poll",
            "0.5",
            *extra,
        ],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_worker_processes_the_inbox_stays_up_and_never_reruns_finished_work(tmp_path: Path, sim_process: Any) -> None:
    server = sim_process("--latency-ms", "5")
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    write_jsonl(inbox / "first.jsonl", chat_rows(20, "a"))
    write_jsonl(inbox / "second.jsonl", chat_rows(30, "b"))
    proc = worker_process(inbox, outbox, server.url)
    try:
        wait_for(lambda: (outbox / "first.jsonl.done.json").exists() and (outbox / "second.jsonl.done.json").exists())
        assert len(read_jsonl(outbox / "first.jsonl.results.jsonl")) == 20
        assert len(read_jsonl(outbox / "second.jsonl.results.jsonl")) == 30
        done = json.loads((outbox / "second.jsonl.done.json").read_text())
        assert done["ok"] == 30 and done["rows"] == 30
        time.sleep(1.5)  # several polls
        assert proc.poll() is None  # idle, still running
        assert server.stats()["requests"] == 50  # finished inputs are not run again

        write_jsonl(inbox / "third.jsonl", chat_rows(5, "c"))  # new work is picked up on the next poll
        wait_for(lambda: (outbox / "third.jsonl.done.json").exists())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert server.stats()["requests"] == 55
    assert sorted(p.name for p in inbox.iterdir()) == ["first.jsonl", "second.jsonl", "third.jsonl"]  # read only

    # A restarted worker (Heroku restarts dynos daily) re-sends nothing.
    again = worker_process(inbox, outbox, server.url, "--once")
    again.communicate(timeout=60)
    assert again.returncode == 0
    assert server.stats()["requests"] == 55


def test_killed_worker_resumes_the_unfinished_input_without_resending_finished_rows(
    tmp_path: Path, sim_process: Any
) -> None:
    server = sim_process("--latency-ms", "20")
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    write_jsonl(inbox / "big.jsonl", chat_rows(1500))
    proc = worker_process(inbox, outbox, server.url, "-c", "16", "-q")
    results_log = outbox / "big.jsonl.results.jsonl.checkpoint" / "results.jsonl"
    wait_for(lambda: results_log.exists() and results_log.read_bytes().count(b"\n") >= 300)
    proc.kill()
    proc.communicate(timeout=10)
    finished_before = results_log.read_bytes().count(b"\n")

    restarted = worker_process(inbox, outbox, server.url, "-c", "16", "-q", "--once")
    _, stderr = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, stderr
    rows = read_jsonl(outbox / "big.jsonl.results.jsonl")
    assert [r["id"] for r in rows] == [f"row{i}" for i in range(1500)]
    assert (outbox / "big.jsonl.done.json").exists()
    # The restart sent only what had no result (plus at most the 16 that were in flight).
    assert server.stats()["requests"] <= 1500 + 16
    assert server.stats()["requests"] >= 1500
    assert finished_before >= 300


def test_two_workers_with_shard_auto_never_process_the_same_input(tmp_path: Path, sim_process: Any) -> None:
    server = sim_process()
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    names = [f"part{i:02d}" for i in range(12)]
    for name in names:
        write_jsonl(inbox / f"{name}.jsonl", chat_rows(3, name))
    one = worker_process(inbox, outbox, server.url, "--shard", "auto", "--once", dyno="worker.1", shards="2")
    two = worker_process(inbox, outbox, server.url, "--shard", "auto", "--once", dyno="worker.2", shards="2")
    out_one, err_one = one.communicate(timeout=60)
    out_two, err_two = two.communicate(timeout=60)
    assert one.returncode == 0 and two.returncode == 0, err_one + err_two
    started_one = {line for line in err_one.splitlines() if line.startswith("worker_start")}
    started_two = {line for line in err_two.splitlines() if line.startswith("worker_start")}
    inputs_one = {line.split("input=")[1].split()[0] for line in started_one}
    inputs_two = {line.split("input=")[1].split()[0] for line in started_two}
    assert inputs_one and inputs_two
    assert not inputs_one & inputs_two
    assert len(inputs_one | inputs_two) == 12
    assert all((outbox / f"{name}.jsonl.done.json").exists() for name in names)
    assert server.stats()["requests"] == 36


def test_shard_auto_reads_dyno_and_inferbatch_shards() -> None:
    assert str(parse_shard("auto", {"DYNO": "worker.3", "INFERBATCH_SHARDS": "4"})) == "2/4"
    assert str(parse_shard("auto", {"DYNO": "worker.1"})) == "0/1"
    with pytest.raises(ConfigError):
        parse_shard("auto", {"DYNO": "run.1234", "INFERBATCH_SHARDS": "4"})
    with pytest.raises(ConfigError):
        parse_shard("auto", {"INFERBATCH_SHARDS": "4"})


def test_merge_combines_shards_in_input_order_and_refuses_overlap(sim, runner, tmp_path: Path) -> None:
    from conftest import connection_env

    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(40))
    env = connection_env(server)
    outputs = []
    for index, ext in enumerate(["jsonl", "parquet", "jsonl"]):
        out = tmp_path / f"shard{index}.{ext}"
        result = invoke(runner, ["run", str(source), "-o", str(out), "--shard", f"{index}/3"], env=env)
        assert result.exit_code == 0
        outputs.append(str(out))
    merged = tmp_path / "merged.jsonl"
    result = invoke(runner, ["merge", *outputs, "-o", str(merged)])
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(merged)
    assert [r["index"] for r in rows] == list(range(40))
    assert [r["id"] for r in rows] == [f"row{i}" for i in range(40)]

    overlap = invoke(runner, ["merge", outputs[0], outputs[1], outputs[0], "-o", str(tmp_path / "bad.jsonl")])
    assert overlap.exit_code == 2
    assert "overlap" in overlap.stderr
    assert not (tmp_path / "bad.jsonl").exists()

    merged_parquet = tmp_path / "merged.parquet"
    assert invoke(runner, ["merge", *outputs, "-o", str(merged_parquet)]).exit_code == 0
    import pyarrow.parquet as pq

    assert pq.read_table(merged_parquet).column("index").to_pylist() == list(range(40))


async def test_a_worker_keeps_one_limiter_across_its_inputs(sim, tmp_path: Path) -> None:
    """SPEC §8.38: the server counts the add-on's requests, not our files: moving to the next inbox file
    must not start from fresh rate windows (each input used to get a new limiter)."""
    from inferbatch.config import resolve
    from inferbatch.worker import Worker

    server = sim()
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    write_jsonl(inbox / "a.jsonl", chat_rows(3, "a"))
    write_jsonl(inbox / "b.jsonl", chat_rows(4, "b"))
    env = {"INFERENCE_URL": server.url, "INFERENCE_KEY": "k", "INFERENCE_MODEL_ID": "sim-model"}
    cfg = resolve({"input": str(inbox), "rpm": 6000}, env)
    service = Worker(cfg, inbox=str(inbox), outbox=str(outbox), poll=1, output_ext="jsonl", once=True, quiet=True)
    assert await service.serve() is None  # not stopped by a signal
    assert server.stats.requests == 7
    assert service.limiter.admitted == 7  # both inputs went through the one limiter
    assert len(read_jsonl(outbox / "b.jsonl.results.jsonl")) == 4
