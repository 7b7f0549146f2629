"""The Procfile's commands run as Heroku would run them (honcho, a Procfile runner) against the simulator."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import chat_rows, read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def honcho_env(**extra: str) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), **extra}


def test_procfile_worker_processes_the_inbox_and_stops_on_sigterm(tmp_path: Path, sim_process: Any) -> None:
    server = sim_process()
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    write_jsonl(inbox / "prompts.jsonl", chat_rows(25))
    env = honcho_env(
        INFERBATCH_INBOX=str(inbox),
        INFERBATCH_OUTBOX=str(outbox),
        INFERENCE_URL=server.url,
        INFERENCE_KEY="k",
        INFERENCE_MODEL_ID="m",
        DYNO="worker.1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), "start", "worker"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (outbox / "prompts.jsonl.done.json").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the worker did not finish the inbox"
            time.sleep(0.1)
        time.sleep(1)
        assert proc.poll() is None  # a worker stays up when idle
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert len(read_jsonl(outbox / "prompts.jsonl.results.jsonl")) == 25
    assert "worker_done" in output
    assert server.stats()["requests"] == 25


def test_procfile_batch_runs_a_job_file(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "jobs", tmp_path / "jobs")
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    env = honcho_env(INFERBATCH_JOB="jobs/demo.toml")
    done = subprocess.run(
        [sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), "start", "batch"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "summary rows=50 ok=50" in done.stdout, done.stdout + done.stderr
    assert len(read_jsonl(tmp_path / "out" / "demo.jsonl")) == 50


def test_procfile_worker_on_the_standard_plan_sends_the_apps_model(tmp_path: Path, sim_process: Any) -> None:
    """The standard plan sets no INFERENCE_MODEL_ID: the Procfile's worker sends INFERBATCH_MODEL (app.json sets it)."""
    server = sim_process()
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    write_jsonl(inbox / "prompts.jsonl", chat_rows(5))
    env = honcho_env(
        INFERBATCH_INBOX=str(inbox),
        INFERBATCH_OUTBOX=str(outbox),
        INFERENCE_URL=server.url,
        INFERENCE_KEY="standard-plan-test-key",
        INFERBATCH_MODEL="claude-4-5-haiku",
        DYNO="worker.1",
        INFERBATCH_SHARDS="1",
    )
    env.pop("INFERENCE_MODEL_ID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), "start", "worker"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (outbox / "prompts.jsonl.done.json").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the worker did not finish the inbox"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
    rows = read_jsonl(outbox / "prompts.jsonl.results.jsonl")
    assert [r["status"] for r in rows] == ["ok"] * 5
    assert {r["model"] for r in rows} == {"claude-4-5-haiku"}
