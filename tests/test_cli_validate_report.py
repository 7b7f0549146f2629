"""`inferbatch validate`, `inferbatch report`, `--version` and `--help` (SPEC §1, §5, §8.6, §8.26)."""

from __future__ import annotations

import json
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from conftest import chat_rows, connection_env, invoke, read_jsonl, write_jsonl

ESTIMATE = re.compile(r"^estimate rows=(\d+) prompt_tokens=(\d+)\b")


def validate(runner: CliRunner, args: list[str], env: dict[str, str] | None = None) -> Result:
    result = invoke(runner, ["validate", *args], env=env)
    assert "Traceback" not in result.output
    return result


def field(text: str, name: str) -> int:
    """The value of ``name=N`` in the first line of ``text`` that has it."""
    match = re.search(rf"(?<![\w_]){name}=(\d+)", text)
    assert match, f"no {name}= in {text!r}"
    return int(match[1])


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def mixed_input(path: Path) -> Path:
    rows: list[Any] = [
        *chat_rows(2),
        '{"id": "broken", "messages": [',  # line 3
        {"id": "empty", "messages": []},  # line 4
        {"id": "fine", "prompt": "hello"},
    ]
    return write_jsonl(path, rows)


# ---- validate -------------------------------------------------------------------------------------


def test_validate_all_valid_needs_no_url_or_key(runner: CliRunner, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(3))

    result = validate(runner, [str(src)])

    assert result.exit_code == 0, result.output
    assert field(result.stdout, "rows") == 3
    assert field(result.stdout, "invalid") == 0
    assert ESTIMATE.match(last_line(result.stdout)), result.stdout


def test_validate_some_invalid_prints_counts_and_problems(runner: CliRunner, tmp_path: Path) -> None:
    src = mixed_input(tmp_path / "in.jsonl")

    result = validate(runner, [str(src), "--model", "m"])

    assert result.exit_code == 1, result.output
    assert field(result.stdout, "rows") == 5
    assert field(result.stdout, "invalid") == 2
    assert re.search(r"\bline 3\b", result.stdout)
    assert re.search(r"\bline 4\b", result.stdout)
    assert ESTIMATE.match(last_line(result.stdout)), result.stdout


def test_validate_prints_only_the_first_problems(runner: CliRunner, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"x{i}", "messages": []} for i in range(60)])

    result = validate(runner, [str(src)])

    assert result.exit_code == 1, result.output
    assert field(result.stdout, "invalid") == 60
    assert re.search(r"\bline 1\b", result.stdout)
    assert not re.search(r"\bline 60\b", result.stdout)
    assert len(result.stdout.splitlines()) < 60


def test_validate_sends_nothing(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(5))

    result = validate(runner, [str(src)], env=connection_env(server))

    assert result.exit_code == 0, result.output
    assert server.stats.requests == 0
    assert field(result.stdout, "rows") == 5


def test_validate_estimate_line(runner: CliRunner, tmp_path: Path) -> None:
    src = mixed_input(tmp_path / "in.jsonl")

    result = validate(runner, [str(src), "--model", "m", "--param", "max_tokens=10"])

    assert result.exit_code == 1, result.output
    line = last_line(result.stdout)
    match = ESTIMATE.match(line)
    assert match, result.stdout
    assert int(match[1]) == 3  # the rows that would be sent
    assert int(match[2]) > 0
    assert field(line, "max_completion_tokens") == 30


@pytest.mark.parametrize("kind", ["unknown-extension", "missing-file", "not-parquet"])
def test_validate_unreadable_input_exits_2(runner: CliRunner, tmp_path: Path, kind: str) -> None:
    if kind == "unknown-extension":
        src = write_jsonl(tmp_path / "in.txt", chat_rows(2))
    elif kind == "missing-file":
        src = tmp_path / "nope.jsonl"
    else:
        src = tmp_path / "in.parquet"
        src.write_text("this is not parquet\n", encoding="utf-8")

    result = validate(runner, [str(src)])

    assert result.exit_code == 2, result.output
    assert src.name in result.stderr
    assert "Traceback" not in result.stderr


# ---- report ---------------------------------------------------------------------------------------

COUNT_KEYS = (
    "rows",
    "ok",
    "error",
    "invalid",
    "status_codes",
    "attempts",
    "retries",
    "prompt_tokens",
    "completion_tokens",
)


def summary_counts(text: str) -> dict[str, int]:
    """rows/ok/error/invalid from the summary line of a run's stderr or of `report`'s stdout."""
    line = next(line for line in text.splitlines() if re.search(r"\brows=\d", line) and re.search(r"\bok=\d", line))
    return {name: field(line, name) for name in ("rows", "ok", "error", "invalid")}


def summary_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("summary")]


@pytest.fixture
def finished_run(runner: CliRunner, sim: Any, tmp_path: Path) -> Any:
    """A real run to JSONL and to Parquet over the same mixed input, with its --summary-json."""
    rows: list[Any] = [
        *chat_rows(3),
        {"id": "retried", "messages": [{"role": "user", "content": "[[sim:500x1]]"}]},
        {"id": "bad", "messages": [{"role": "user", "content": "[[sim:400]]"}]},
        {"id": "empty", "messages": []},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    runs = {}
    for ext in ("jsonl", "parquet"):
        server = sim()  # a fresh server each time: a [[sim:500x1]] script counts attempts per server
        out, summary = tmp_path / f"out.{ext}", tmp_path / f"summary-{ext}.json"
        result = invoke(
            runner, ["run", str(src), "-o", str(out), "--summary-json", str(summary)], env=connection_env(server)
        )
        assert result.exit_code == 1, result.output
        runs[ext] = (out, json.loads(summary.read_text(encoding="utf-8")), result)
    return runs


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_report_json_matches_the_run_summary(runner: CliRunner, finished_run: Any, ext: str) -> None:
    out, run_summary, _ = finished_run[ext]

    result = invoke(runner, ["report", str(out), "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {k: report[k] for k in COUNT_KEYS} == {k: run_summary[k] for k in COUNT_KEYS}
    assert (report["rows"], report["ok"], report["error"], report["invalid"]) == (6, 4, 1, 1)


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_report_text_matches_the_run_summary(runner: CliRunner, finished_run: Any, ext: str) -> None:
    out, _, run_result = finished_run[ext]

    result = invoke(runner, ["report", str(out)])

    assert result.exit_code == 0, result.output
    assert summary_counts(result.stdout) == summary_counts(run_result.stderr)
    assert summary_counts(result.stdout) == {"rows": 6, "ok": 4, "error": 1, "invalid": 1}
    # SPEC §5: the summary has attempts, retries and tokens, and `report` "prints the same from a result file".
    printed, ran = "\n".join(summary_lines(result.stdout)), "\n".join(summary_lines(run_result.stderr))
    for name in ("attempts", "retries", "prompt", "completion"):
        assert field(printed, name) == field(ran, name), name


def test_report_jsonl_and_parquet_agree(runner: CliRunner, finished_run: Any) -> None:
    reports = [
        json.loads(invoke(runner, ["report", str(finished_run[ext][0]), "--json"]).stdout)
        for ext in ("jsonl", "parquet")
    ]
    assert {k: reports[0][k] for k in COUNT_KEYS} == {k: reports[1][k] for k in COUNT_KEYS}
    assert len(read_jsonl(finished_run["jsonl"][0])) == reports[0]["rows"]


@pytest.mark.parametrize("kind", ["garbage-jsonl", "garbage-parquet", "missing", "input-not-result"])
def test_report_unreadable_file_exits_2(runner: CliRunner, tmp_path: Path, kind: str) -> None:
    if kind == "input-not-result":  # JSON lines, but an input file: no result columns at all
        path = write_jsonl(tmp_path / "prompts.jsonl", chat_rows(3))
    elif kind == "garbage-jsonl":
        path = tmp_path / "out.jsonl"
        path.write_text("this is not a result file\n", encoding="utf-8")
    elif kind == "garbage-parquet":
        path = tmp_path / "out.parquet"
        path.write_text("this is not parquet either\n", encoding="utf-8")
    else:
        path = tmp_path / "missing.jsonl"

    result = invoke(runner, ["report", str(path)])

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert path.name in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink"])
def test_report_html_may_not_be_the_result_file(
    runner: CliRunner, finished_run: Any, tmp_path: Path, spelling: str
) -> None:
    """SPEC §8.28: `report --html F` may not be the result file it reads, however spelled: exit 2 in one line,
    the results untouched (it used to overwrite them with the HTML page)."""
    out = finished_run["jsonl"][0]
    target = {"same": str(out), "dot": str(tmp_path / "." / out.name)}.get(spelling)
    if spelling == "symlink":
        (tmp_path / "page.html").symlink_to(out)
        target = str(tmp_path / "page.html")
    before = out.read_bytes()

    result = invoke(runner, ["report", str(out), "--html", str(target)])

    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "is the result file" in result.stderr
    assert out.read_bytes() == before


def test_report_html_in_a_folder_that_cannot_exist_is_refused_first(
    runner: CliRunner, finished_run: Any, tmp_path: Path
) -> None:
    """SPEC §8.28: the --html folder is checked writable before the result file is read: one line, exit 2,
    nothing on stdout."""
    out = finished_run["jsonl"][0]

    result = invoke(runner, ["report", str(out), "--html", str(out / "report.html")])

    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1 and "not a folder" in result.stderr


def test_report_html_creates_missing_folders(runner: CliRunner, finished_run: Any, tmp_path: Path) -> None:
    """Decision on SPEC §8.28: like -o, a missing folder of --html is created."""
    page = tmp_path / "reports" / "today" / "run.html"

    result = invoke(runner, ["report", str(finished_run["jsonl"][0]), "--html", str(page)])

    assert result.exit_code == 0, result.output
    assert page.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")


@pytest.mark.parametrize("column", ["status", "parsed", "judge", "variant"])
def test_validate_refuses_keep_columns_naming_an_output_column(runner: CliRunner, tmp_path: Path, column: str) -> None:
    """SPEC §8.27 and §8.6: validate holds --keep-columns to the run's rule: exit 2 in one line naming it."""
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(2))

    result = validate(runner, [str(src), "--keep-columns", column])

    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and f"--keep-columns {column}:" in result.stderr


# ---- --version and --help -------------------------------------------------------------------------


def test_version(runner: CliRunner) -> None:
    result = invoke(runner, ["--version"])

    assert result.exit_code == 0
    assert version("inferbatch") in result.stdout


@pytest.mark.parametrize(
    "command",
    [[], ["run"], ["validate"], ["report"], ["simulate"]],
    ids=["inferbatch", "run", "validate", "report", "simulate"],
)
def test_help(runner: CliRunner, command: list[str]) -> None:
    result = invoke(runner, [*command, "--help"])

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage:")
    assert len(result.stdout.splitlines()) > 3
    if not command:
        for name in ("run", "validate", "report", "simulate"):
            assert re.search(rf"^\s+{name}\b", result.stdout, re.MULTILINE), name
