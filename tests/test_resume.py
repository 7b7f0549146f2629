"""Crash safety with real processes and real signals: kill -9 and resume, SIGTERM drain, the run lock."""

from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import read_jsonl, run_process, wait_for_lines, wait_for_stats, write_jsonl


def prompt_rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(n)]


def read_stderr_until(proc: subprocess.Popen[str], text: str, timeout: float = 30) -> str:
    """Read the live process's stderr until ``text`` shows up; returns what was read (``communicate`` gets the rest)."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{text!r} never appeared on stderr: {seen.decode(errors='replace')}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"stderr closed before {text!r}: {seen.decode(errors='replace')}"
            seen += chunk
    return seen.decode()


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
    # Complete: only the completion record stays, so the same command again pays for nothing (§8.2).
    assert sorted(p.name for p in (tmp_path / "out.jsonl.checkpoint").iterdir()) == ["lock", "manifest.json"]


def test_sigterm_with_hanging_requests_waits_drain_timeout_then_exits_143_and_rerun_completes(
    tmp_path: Path, sim_process: Any
) -> None:
    """SPEC §4 SIGTERM: in-flight requests get `--drain-timeout` seconds (here 3, not the default 20), then the
    run checkpoints, writes the partial output and exits 143; the rows it cut off have no result (§8.3)."""
    rows = [{"id": f"r{i}", "prompt": f"q {i}" + (" [[sim:hangx1]]" if i % 10 == 3 else "")} for i in range(120)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    server = sim_process("--latency-ms", "20")
    proc = run_process([str(source), "-o", str(output), "-c", "4", "--drain-timeout", "3"], server.url)
    try:
        wait_for_stats(server, in_flight=4, hung=4)  # every slot now holds a request that never answers
        sent_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    took = time.monotonic() - sent_at
    assert proc.returncode == 143, stderr
    # The drain waited its 3 s for the hanging requests, and no more (a fixed 20 s would take 20). Room for CI.
    assert 2.8 <= took < 12, took
    assert "drain timeout: 4 request(s) cut off; a rerun sends them" in stderr
    assert "interrupted by SIGTERM; finished rows are checkpointed, rerun to continue" in stderr
    partial = read_jsonl(output)  # readable, atomically written
    assert partial and len(partial) < 120
    assert all(r["status"] == "ok" for r in partial)
    assert not [r["id"] for r in partial if int(r["id"][1:]) % 10 == 3]  # cut off: no result, not an error

    # Rows not tried yet still hang on their first attempt: a short timeout retries them.
    again = run_process([str(source), "-o", str(output), "-c", "4", "--timeout", "1"], server.url)
    _, stderr = again.communicate(timeout=60)
    assert again.returncode == 0, stderr
    final = read_jsonl(output)
    assert [r["id"] for r in final] == [f"r{i}" for i in range(120)]


def test_kill_9_with_requests_in_flight_reports_them_in_doubt_on_rerun(tmp_path: Path, sim_process: Any) -> None:
    """SPEC §4/§8.12: the in-doubt ledger (sent.log) is written before a row's first attempt, so after kill -9
    the rerun says how many rows were sent without a result ("possibly billed") and sends them again."""
    rows = [{"id": f"r{i}", "prompt": f"q {i}" + (" [[sim:hangx1]]" if i >= 20 else "")} for i in range(24)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    summary_path = tmp_path / "summary.json"
    server = sim_process()
    proc = run_process([str(source), "-o", str(output), "-c", "4", "-q"], server.url)
    try:
        wait_for_lines(tmp_path / "out.jsonl.checkpoint" / "results.jsonl", 20)
        wait_for_stats(server, in_flight=4, hung=4)  # rows r20-r23 were sent and will never answer
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    sent_before = server.stats()["requests"]
    assert sent_before == 24

    # The simulator hangs only on a row's first attempt: the rerun's attempts answer at once.
    again = run_process([str(source), "-o", str(output), "-c", "4", "--summary-json", str(summary_path)], server.url)
    _, stderr = again.communicate(timeout=60)
    assert again.returncode == 0, stderr
    warning = re.search(
        r"^resume: (\d+) row\(s\) were sent before the last run stopped but have no result "
        r"\(possibly billed\); they are sent again$",
        stderr,
        re.M,
    )
    assert warning is not None, stderr
    assert warning.group(1) == "4"
    assert json.loads(summary_path.read_text())["in_doubt_resumed"] == 4
    assert server.stats()["requests"] - sent_before == 4  # only the rows in doubt were sent again
    final = read_jsonl(output)
    assert [r["id"] for r in final] == [f"r{i}" for i in range(24)]
    assert {r["status"] for r in final} == {"ok"}


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
        assert f"another inferbatch run (pid {first.pid}) is writing" in stderr and "Traceback" not in stderr
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
    try:
        wait_for_lines(results_log, 20)
        wait_for_stats(server, in_flight=4, hung=4)  # the four slots hold hanging requests; the drain would wait 20 s
        proc.send_signal(signal.SIGINT)
        read_stderr_until(proc, "stopping: interrupted by SIGINT")  # the first Ctrl-C started the drain
        sent_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
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
