"""Progress and summary: logfmt lines off a terminal, a bar on one, and figures that match the output."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from conftest import chat_rows, connection_env, invoke, read_jsonl, write_jsonl
from inferbatch.progress import Progress, Summary, logfmt


def test_progress_lines_appear_at_the_interval_off_a_terminal(sim, runner, tmp_path: Path) -> None:
    server = sim(latency_ms=40)
    rows = [{"id": f"r{i}", "prompt": f"SECRET-PROMPT-{i}"} for i in range(60)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    result = invoke(
        runner,
        ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "-c", "2", "--progress-interval", "0.3"],
        env=connection_env(server),
    )
    assert result.exit_code == 0
    progress = [line for line in result.stderr.splitlines() if line.startswith("progress ")]
    assert len(progress) >= 3  # ~1.2 s of work at one line every 0.3 s (checked once a second)
    first = dict(part.split("=", 1) for part in progress[0].split()[1:])
    assert {"done", "total", "ok", "error", "invalid", "rps", "eta_s"} <= set(first)
    assert first["total"] == "60"
    assert all(len(line) < 10_000 for line in result.stderr.splitlines())
    assert "SECRET-PROMPT" not in result.stderr  # no prompt or completion text in logs
    assert "sim reply" not in result.stderr


def test_quiet_silences_progress(sim, runner, tmp_path: Path) -> None:
    server = sim(latency_ms=20)
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(40))
    result = invoke(
        runner,
        ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "-c", "1", "-q", "--progress-interval", "0.1"],
        env=connection_env(server),
    )
    assert result.exit_code == 0
    assert not [line for line in result.stderr.splitlines() if line.startswith("progress ")]


def test_verbose_logs_one_line_per_retry(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x [[sim:503x2]]"}])
    result = invoke(runner, ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "-v"], env=connection_env(server))
    assert result.exit_code == 0
    retries = [line for line in result.stderr.splitlines() if line.startswith("retry ")]
    assert len(retries) == 2 and all("status=503" in line for line in retries)


def test_terminal_gets_a_bar_redrawn_in_place() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    progress = Progress(total=10, stream=stream)
    for _ in range(4):
        progress.row("ok", tokens=100)
    progress.row("error")
    progress.tick()
    progress.finish()
    text = stream.getvalue()
    assert text.startswith("\r") and "5/10" in text and "ok=4" in text and "error=1" in text
    assert "progress done=" not in text  # not the log format


def test_summary_json_counts_equal_the_output_file(sim, runner, tmp_path: Path) -> None:
    server = sim()
    rows = [*chat_rows(12), {"id": "bad", "prompt": "x [[sim:400]]"}, {"id": "cut", "prompt": "y [[sim:length]]"}]
    source = write_jsonl(tmp_path / "in.jsonl", [*rows, "{broken"])
    summary_path = tmp_path / "s.json"
    result = invoke(
        runner,
        ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--summary-json", str(summary_path)],
        env=connection_env(server),
    )
    assert result.exit_code == 1
    figures = json.loads(summary_path.read_text())
    output = read_jsonl(tmp_path / "out.jsonl")
    assert figures["rows"] == len(output) == 15
    assert figures["ok"] == sum(r["status"] == "ok" for r in output) == 13
    assert figures["error"] == 1 and figures["invalid"] == 1
    assert figures["status_codes"] == {"200": 13, "400": 1}
    assert figures["finish_reasons"]["length"] == 1
    assert figures["soft_failures"] == 1
    assert figures["prompt_tokens"] == sum(r["prompt_tokens"] or 0 for r in output)
    for key in ("attempts", "retries", "rate_limited", "latency_ms", "completion_tokens", "wall_s", "requests_per_s"):
        assert key in figures

    report = invoke(runner, ["report", str(tmp_path / "out.jsonl"), "--json"])
    again = json.loads(report.stdout)
    for key in (
        "rows",
        "ok",
        "error",
        "invalid",
        "status_codes",
        "attempts",
        "retries",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "soft_failures",
    ):
        assert again[key] == figures[key], key


def test_latency_percentiles_are_within_one_percent() -> None:
    summary = Summary()
    values = [float(v) for v in range(1, 1001)]
    for value in values:
        summary.add({"status": "ok", "status_code": 200, "latency_ms": value, "attempts": 1})
    figures = summary.as_dict()["latency_ms"]
    assert abs(figures["p50"] - 500) <= 5 and abs(figures["p90"] - 900) <= 9 and abs(figures["p99"] - 990) <= 10
    assert figures["max"] == 1000


def test_logfmt_quotes_and_bounds_lines() -> None:
    line = logfmt("event", text='a "quoted" value', empty="", number=1.5, big="x" * 20_000)
    assert line.startswith('event text="a \\"quoted\\" value" empty="" number=1.5')
    assert len(line) < 10_000


# --- Heroku log-based metrics: a `metrics` line after each progress line -------------------------------------------

LOGFMT_LINE = re.compile(r'(\w+)((?: [^\s="]+=(?:"(?:[^"\\]|\\.)*"|[^\s"]*))*)')
LOGFMT_PAIR = re.compile(r' ([^\s="]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)')


def parse_logfmt(line: str) -> tuple[str, dict[str, str]]:
    """``event key=value key="quoted value" ...``, strictly: anything else fails the test."""
    match = LOGFMT_LINE.fullmatch(line)
    assert match, f"not logfmt: {line!r}"
    pairs = LOGFMT_PAIR.findall(match[2])
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), line
    return match[1], {key: value.strip('"') for key, value in pairs}


def test_metrics_line_follows_progress_in_herokus_log_metrics_convention() -> None:
    """`sample#` gauges, `count#` rows finished since the previous line, `measure#` p90 latency with its unit:
    what log-drain metrics add-ons chart without code (issue 12, item 7)."""
    stream = io.StringIO()
    progress = Progress(total=10, interval=60, stream=stream)
    for latency in (100.0, 200.0, 300.0, 400.0, 1000.0):
        progress.row("ok", tokens=50, latency_ms=latency)
    progress.row("error", latency_ms=50.0)
    progress.row("invalid")
    progress.tick(force=True)
    progress.row("ok", tokens=10, latency_ms=20.0)
    progress.tick(force=True)

    lines = stream.getvalue().splitlines()
    assert [parse_logfmt(line)[0] for line in lines] == ["progress", "metrics", "progress", "metrics"]
    first, second = parse_logfmt(lines[1])[1], parse_logfmt(lines[3])[1]
    for figures in (first, second):
        assert {
            "sample#inferbatch.rps",
            "sample#inferbatch.rows_done",
            "count#inferbatch.rows_ok",
            "count#inferbatch.rows_error",
            "measure#inferbatch.latency_p90",
        } <= set(figures)
        assert float(figures["sample#inferbatch.rps"]) > 0
        assert re.fullmatch(r"\d+(\.\d+)?ms", figures["measure#inferbatch.latency_p90"])
    assert (first["count#inferbatch.rows_ok"], first["count#inferbatch.rows_error"]) == ("5", "1")
    assert first["count#inferbatch.rows_invalid"] == "1"
    assert 990 <= float(first["measure#inferbatch.latency_p90"][:-2]) <= 1000
    assert (first["sample#inferbatch.rows_done"], first["sample#inferbatch.rows_left"]) == ("7", "3")
    # counts are per line (the add-on sums them), gauges are the latest value
    assert (second["count#inferbatch.rows_ok"], second["count#inferbatch.rows_error"]) == ("1", "0")
    assert second["sample#inferbatch.rows_done"] == "8"
    assert 19.8 <= float(second["measure#inferbatch.latency_p90"][:-2]) <= 20.2


def test_a_run_logs_metrics_lines_whose_counts_add_up_to_the_rows(sim, runner, tmp_path: Path) -> None:
    server = sim(latency_ms=20)
    source = write_jsonl(tmp_path / "in.jsonl", [*chat_rows(30), "{broken"])
    result = invoke(
        runner,
        ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "-c", "2", "--progress-interval", "0.3"],
        env=connection_env(server),
    )
    assert result.exit_code == 1
    metrics = [parse_logfmt(line)[1] for line in result.stderr.splitlines() if line.startswith("metrics ")]
    assert len(metrics) >= 2
    assert sum(int(m["count#inferbatch.rows_ok"]) for m in metrics) == 30
    assert sum(int(m["count#inferbatch.rows_invalid"]) for m in metrics) == 1
    assert metrics[-1]["sample#inferbatch.rows_done"] == "31"


def test_the_last_progress_line_counts_every_row_by_status(sim, runner, tmp_path: Path) -> None:
    """The final progress line adds up what the run recorded: done, ok, error, invalid (found by the mutation
    run: a recorder that skipped the progress display left every test green)."""
    server = sim()
    rows = [*chat_rows(4), {"id": "bad", "messages": "not a list"}, {"id": "err", "prompt": "x [[sim:400]]"}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    result = invoke(runner, ["run", str(source), "-o", str(tmp_path / "out.jsonl")], env=connection_env(server))
    assert result.exit_code == 1
    last = [line for line in result.stderr.splitlines() if line.startswith("progress ")][-1]
    fields = dict(part.split("=", 1) for part in last.split()[1:])
    assert (fields["done"], fields["ok"], fields["error"], fields["invalid"]) == ("6", "4", "1", "1")
