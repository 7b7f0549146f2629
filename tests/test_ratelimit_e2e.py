"""Rate limits end to end: the runner against a simulator that enforces and announces limits."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import chat_rows, connection_env, invoke, read_jsonl, write_jsonl


def gaps(arrivals: list[float]) -> list[float]:
    return [b - a for a, b in zip(arrivals, arrivals[1:])]


def test_rpm_flag_paces_requests_instead_of_bursting(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(8))
    result = invoke(
        runner,
        ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "-c", "8", "--rpm", "240"],
        env=connection_env(server),
    )
    assert result.exit_code == 0
    arrivals = list(server.stats.arrivals)
    assert len(arrivals) == 8
    # 240 per minute is one every 0.25 s: never two at once although 8 slots are free. Arrival times carry
    # the sender's scheduling jitter, so the bounds leave room for a busy CI runner (issue 16): a burst
    # would arrive within a few milliseconds of each other.
    assert min(gaps(arrivals)) >= 0.1
    assert arrivals[-1] - arrivals[0] >= 7 * 0.25 - 0.25


def test_limits_announced_in_headers_pace_the_run_without_flags(sim, runner, tmp_path: Path) -> None:
    server = sim(rpm=240)  # sends x-ratelimit-limit-requests: 240
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(10))
    result = invoke(
        runner, ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "-c", "1"], env=connection_env(server)
    )
    assert result.exit_code == 0
    arrivals = list(server.stats.arrivals)
    # The first response teaches the limit; from then on requests are 0.25 s apart (room for jitter: issue 16).
    assert min(gaps(arrivals)[1:]) >= 0.1
    assert server.stats.by_status.get(429, 0) == 0


def test_exhausted_server_window_pauses_everyone_and_nothing_is_lost(sim, runner, tmp_path: Path) -> None:
    # The server allows 5 requests per 2 s window and announces nothing but Retry-After on its 429s:
    # the client must pause instead of storming, and every row still ends ok.
    server = sim(rpm=5, window_s=2.0, retry_after=1.0, ratelimit_headers=False)
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(12))
    summary = tmp_path / "summary.json"
    result = invoke(
        runner,
        ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "-c", "8", "--summary-json", str(summary)],
        env=connection_env(server),
    )
    assert result.exit_code == 0, result.stderr
    output = read_jsonl(tmp_path / "out.jsonl")
    assert [r["status"] for r in output] == ["ok"] * 12
    figures = json.loads(summary.read_text())
    rejected = server.stats.by_status.get(429, 0)
    assert figures["rate_limited"] == rejected
    # No storm: far fewer 429s than a client retrying each row on its own would collect.
    assert rejected <= 12


def test_429_halves_concurrency_and_the_summary_says_so(sim, runner, tmp_path: Path) -> None:
    server = sim(latency_ms=30)
    rows = chat_rows(40)
    rows[0] = {"id": "limited", "prompt": "x [[sim:429x1]]"}
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    summary = tmp_path / "summary.json"
    result = invoke(
        runner,
        ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "-c", "8", "--summary-json", str(summary)],
        env=connection_env(server),
    )
    assert result.exit_code == 0
    figures = json.loads(summary.read_text())
    assert figures["rate_limited"] == 1
    assert figures["paused_s"] > 0
    assert 1 <= figures["effective_concurrency"] <= 8
    assert "achieved_rpm" in figures and figures["achieved_rpm"] > 0


def test_max_in_flight_follows_concurrency_under_latency(sim, runner, tmp_path: Path) -> None:
    server = sim(latency_ms=25)
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(120))
    result = invoke(
        runner, ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "-c", "5"], env=connection_env(server)
    )
    assert result.exit_code == 0
    assert server.stats.max_in_flight == 5


def test_summary_reports_achieved_tokens_per_minute_without_a_tpm_limit(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(20))
    summary = tmp_path / "summary.json"
    result = invoke(
        runner,
        ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--summary-json", str(summary)],
        env=connection_env(server),
    )
    assert result.exit_code == 0
    figures = json.loads(summary.read_text())
    assert figures["achieved_tpm"] > 0
    tokens = sum(r["total_tokens"] for r in read_jsonl(tmp_path / "out.jsonl"))
    # wall_s is rounded in the JSON, so compare within 1 %
    assert abs(figures["achieved_tpm"] - tokens / figures["wall_s"] * 60) <= 0.01 * figures["achieved_tpm"]
