"""--deadline: stop admitting in time, finish in-flight rows, exit 75; the next run continues."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import read_jsonl, write_jsonl


def test_deadline_exits_75_before_it_with_in_flight_rows_finished(sim_process: Any, tmp_path: Path) -> None:
    server = sim_process("--latency-ms", "400")
    rows = 200
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"q {i}"} for i in range(rows)])
    output = tmp_path / "out.jsonl"
    env = {"INFERENCE_URL": server.url, "INFERENCE_KEY": "k", "INFERENCE_MODEL_ID": "m", "PATH": "/usr/bin:/bin"}
    args = [sys.executable, "-m", "inferbatch", "run", str(source), "-o", str(output), "-c", "4", "-q"]
    started = time.monotonic()
    first = subprocess.run([*args, "--deadline", "6s"], env=env, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert first.returncode == 75, first.stderr
    assert took < 6.0  # the whole process, start-up included, ended before the deadline
    assert "--deadline" in first.stderr
    done = read_jsonl(output)
    assert 0 < len(done) < rows
    assert {r["status"] for r in done} == {"ok"}
    # Nothing was cut off mid-flight: every request the server answered has its row in the output.
    assert server.stats()["requests"] == len(done)

    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert [r["id"] for r in read_jsonl(output)] == [f"r{i}" for i in range(rows)]
    assert server.stats()["requests"] == rows
