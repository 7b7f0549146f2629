"""Crash safety with real processes and real signals: kill -9 and resume, SIGTERM drain, the run lock."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

from conftest import read_jsonl, run_process, wait_for_lines, write_jsonl


def prompt_rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(n)]


def test_kill_9_at_random_points_then_resume_loses_and_duplicates_nothing(tmp_path: Path, sim_process: Any) -> None:
    rows = 3000
    concurrency = 32
    source = write_jsonl(tmp_path / "in.jsonl", prompt_rows(rows))
    output = tmp_path / "out.jsonl"
    results_log = tmp_path / "out.jsonl.checkpoint" / "results.jsonl"
    server = sim_process("--latency-ms", "10", "--jitter-ms", "20")
    rng = random.Random(7)
    kills = 0
    for target in sorted(rng.sample(range(100, rows - 300), 4)):
        proc = run_process([str(source), "-o", str(output), "-c", str(concurrency), "-q"], server.url)
        try:
            wait_for_lines(results_log, target)
        finally:
            proc.kill()
            proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        kills += 1
    assert not output.exists()  # killed runs never reached the end

    final = run_process([str(source), "-o", str(output), "-c", str(concurrency), "-q"], server.url)
    _, stderr = final.communicate(timeout=120)
    assert final.returncode == 0, stderr

    result = read_jsonl(output)
    assert [r["index"] for r in result] == list(range(rows))
    assert [r["id"] for r in result] == [f"r{i}" for i in range(rows)]
    assert {r["status"] for r in result} == {"ok"}
    # Each killed run re-sends at most what it had in flight.
    assert server.stats()["requests"] <= rows + concurrency * kills
    assert not (tmp_path / "out.jsonl.checkpoint").exists()  # removed after a complete run


def test_sigterm_with_hanging_requests_exits_143_within_drain_and_rerun_completes(
    tmp_path: Path, sim_process: Any
) -> None:
    rows = [{"id": f"r{i}", "prompt": f"q {i}" + (" [[sim:hangx1]]" if i % 10 == 3 else "")} for i in range(120)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    server = sim_process("--latency-ms", "20")
    proc = run_process([str(source), "-o", str(output), "-c", "4", "--drain-timeout", "3"], server.url)
    wait_for_lines(tmp_path / "out.jsonl.checkpoint" / "results.jsonl", 3)
    time.sleep(0.5)  # by now every slot holds a hanging request
    sent_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=25)
    took = time.monotonic() - sent_at
    assert proc.returncode == 143, stderr
    assert took < 25
    partial = read_jsonl(output)  # readable, atomically written
    assert partial and len(partial) < 120
    assert all(r["status"] == "ok" for r in partial)
    assert "SIGTERM" in stderr

    # Rows not tried yet still hang on their first attempt: a short timeout retries them.
    again = run_process([str(source), "-o", str(output), "-c", "4", "--timeout", "1"], server.url)
    _, stderr = again.communicate(timeout=60)
    assert again.returncode == 0, stderr
    final = read_jsonl(output)
    assert [r["id"] for r in final] == [f"r{i}" for i in range(120)]


def test_second_run_on_same_output_is_refused_while_first_is_alive(tmp_path: Path, sim_process: Any) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", prompt_rows(400))
    output = tmp_path / "out.jsonl"
    server = sim_process("--latency-ms", "50")
    first = run_process([str(source), "-o", str(output), "-c", "2", "-q"], server.url)
    try:
        wait_for_lines(tmp_path / "out.jsonl.checkpoint" / "results.jsonl", 1)
        second = run_process([str(source), "-o", str(output), "-q"], server.url)
        _, stderr = second.communicate(timeout=30)
        assert second.returncode == 2
        assert "another inferbatch run" in stderr and "Traceback" not in stderr
        assert stderr.strip().count("\n") == 0  # one line
    finally:
        first.kill()
        first.communicate(timeout=10)
    # The killed run's lock is stale now: a new run takes it over and finishes.
    third = run_process([str(source), "-o", str(output), "-c", "32", "-q"], server.url)
    _, stderr = third.communicate(timeout=60)
    assert third.returncode == 0, stderr
    assert len(read_jsonl(output)) == 400


def test_sigint_exits_130_and_resumes(tmp_path: Path, sim_process: Any) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", prompt_rows(300))
    output = tmp_path / "out.jsonl"
    server = sim_process("--latency-ms", "30")
    proc = run_process([str(source), "-o", str(output), "-c", "4", "-q"], server.url)
    wait_for_lines(tmp_path / "out.jsonl.checkpoint" / "results.jsonl", 10)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    done_before = len(read_jsonl(output))
    assert 10 <= done_before < 300
    before = server.stats()["requests"]
    again = run_process([str(source), "-o", str(output), "-c", "16", "-q"], server.url)
    _, stderr = again.communicate(timeout=60)
    assert again.returncode == 0, stderr
    assert len(read_jsonl(output)) == 300
    # Only the rows without a result were sent again (plus at most the in-flight ones in doubt).
    assert server.stats()["requests"] - before <= 300 - done_before + 4


def test_second_sigint_exits_at_once_and_the_checkpoint_survives(tmp_path: Path, sim_process: Any) -> None:
    rows = [{"id": f"r{i}", "prompt": f"q {i}" + (" [[sim:hangx1]]" if i >= 20 else "")} for i in range(60)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    server = sim_process()
    proc = run_process([str(source), "-o", str(output), "-c", "4", "-q"], server.url)
    results_log = tmp_path / "out.jsonl.checkpoint" / "results.jsonl"
    wait_for_lines(results_log, 20)
    time.sleep(0.3)  # the four slots now hold hanging requests; the drain would wait 20 s
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    sent_at = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert time.monotonic() - sent_at < 5
    assert results_log.read_bytes().count(b"\n") == 20

    again = run_process([str(source), "-o", str(output), "-c", "8", "--timeout", "1"], server.url)
    _, stderr = again.communicate(timeout=60)
    assert again.returncode == 0, stderr
    assert [r["id"] for r in read_jsonl(output)] == [f"r{i}" for i in range(60)]


def test_sigterm_with_a_full_queue_exits_as_soon_as_in_flight_rows_finish(tmp_path: Path, sim_process: Any) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", prompt_rows(500))
    output = tmp_path / "out.jsonl"
    server = sim_process("--latency-ms", "100")
    proc = run_process([str(source), "-o", str(output), "-c", "4"], server.url)  # default --drain-timeout 20
    wait_for_lines(tmp_path / "out.jsonl.checkpoint" / "results.jsonl", 8)
    sent_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert time.monotonic() - sent_at < 5  # the 100 ms requests drain at once; nothing waits 20 s
    assert "drain timeout" not in stderr
    done = read_jsonl(output)
    assert server.stats()["requests"] == len(done)  # every request that was sent has its result
