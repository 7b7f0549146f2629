"""An openai-batch output read back (SPEC §8.15): the summary of an already complete job, `report`, and `merge`.

Such an output holds OpenAI Batch lines, not result records; reading it back must count what it holds (a job
found complete said `ok=0 invalid=50` before), and `merge` must refuse it rather than merge by file position.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from conftest import connection_env, invoke, write_jsonl
from inferbatch.results import from_openai_batch, read_output

ROWS = [
    {"custom_id": "a", "prompt": "first"},
    {"custom_id": "b", "prompt": "[[sim:500]] always fails"},
    {"custom_id": "c", "messages": []},  # invalid: never sent
    {"custom_id": "d", "prompt": "fourth"},
]


def summary_line(output: str) -> dict[str, str]:
    line = next(x for x in output.splitlines() if x.startswith("summary "))
    return dict(part.split("=", 1) for part in line.split()[1:])


def test_a_complete_openai_batch_job_and_its_report_count_what_the_output_holds(
    sim, runner: CliRunner, tmp_path: Path
) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", [r for r in ROWS if r["custom_id"] != "b"])
    out = tmp_path / "out.jsonl"
    args = ["run", str(source), "-o", str(out), "--output-format", "openai-batch"]
    env = connection_env(server)

    first = invoke(runner, args, env=env)
    second = invoke(runner, args, env=env)
    report = invoke(runner, ["report", str(out), "--json"])

    assert first.exit_code == 1, first.stderr  # one invalid row
    assert second.exit_code == 1, second.stderr
    counts = {k: summary_line(first.stderr)[k] for k in ("rows", "ok", "error", "invalid")}
    assert counts == {"rows": "3", "ok": "2", "error": "0", "invalid": "1"}
    assert "already complete" not in second.stderr  # a job with an invalid row is not complete (SPEC §8.2)
    figures = json.loads(report.stdout)
    assert report.exit_code == 0, report.stderr
    assert (figures["rows"], figures["ok"], figures["error"], figures["invalid"]) == (3, 2, 0, 1)
    assert figures["prompt_tokens"] > 0 and figures["completion_tokens"] > 0
    assert figures["status_codes"] == {"200": 2}


def test_an_already_complete_openai_batch_job_reports_its_rows_ok(sim, runner: CliRunner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", [ROWS[0], ROWS[3]])
    out = tmp_path / "out.jsonl"
    args = ["run", str(source), "-o", str(out), "--output-format", "openai-batch"]

    first = invoke(runner, args, env=connection_env(server))
    again = invoke(runner, args, env=connection_env(server))

    assert first.exit_code == 0 and again.exit_code == 0, again.stderr
    assert "is already complete" in again.stderr
    counts = {k: summary_line(again.stderr)[k] for k in ("rows", "ok", "error", "invalid")}
    assert counts == {"rows": "2", "ok": "2", "error": "0", "invalid": "0"}  # was ok=0 invalid=2
    assert server.stats.requests == 2


def test_error_and_invalid_lines_come_back_with_their_status_and_code(sim, runner: CliRunner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"

    result = invoke(
        runner,
        ["run", str(source), "-o", str(out), "--output-format", "openai-batch", "--max-attempts", "1"],
        env=connection_env(server),
    )

    assert result.exit_code == 1, result.stderr
    records = list(read_output(str(out)))
    assert [(r["id"], r["index"], r["status"]) for r in records] == [
        ("a", 0, "ok"),
        ("b", 1, "error"),
        ("c", 2, "invalid"),
        ("d", 3, "ok"),
    ]
    assert records[1]["status_code"] == 500 and records[1]["_code"] == "internal_server_error"
    assert records[2]["status_code"] is None and records[2]["_code"] == "invalid_row"
    assert records[0]["content"].startswith("sim reply to: first")


def test_merge_refuses_an_openai_batch_output(sim, runner: CliRunner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", [ROWS[0]])
    out = tmp_path / "out.jsonl"
    invoke(runner, ["run", str(source), "-o", str(out), "--output-format", "openai-batch"], env=connection_env(server))

    merged = invoke(runner, ["merge", str(out), "-o", str(tmp_path / "merged.jsonl")])

    assert merged.exit_code == 2
    assert "an openai-batch output has no row positions to merge by" in merged.stderr
    assert not (tmp_path / "merged.jsonl").exists()


def test_a_line_without_a_body_or_usage_reads_as_nulls() -> None:
    record = from_openai_batch({"custom_id": "x", "response": None, "error": {"code": "timeout", "message": "t"}}, 7)
    assert (record["id"], record["index"], record["status"], record["error"]) == ("x", 7, "error", "t")
    assert record["prompt_tokens"] is None and record["content"] is None and record["status_code"] is None
