"""Tests the mutation run asked for in recording.py and completion.py (benchmarks/mutation/README.md).

Each pins a behaviour a user sees: when --abort-after stops, the `parsed` column on every row of a run whose
rows (not the run) ask for a schema, where the `judge` column sits, and what a failure while writing the
output leaves behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from conftest import connection_env, invoke, read_jsonl, write_jsonl
from inferbatch import results
from inferbatch.checkpoint import Checkpoint
from inferbatch.config import RunConfig
from inferbatch.errors import TooManyFailures
from inferbatch.progress import Progress
from inferbatch.recording import Recorder
from inferbatch.results import Result, Status
from inferbatch.shaping import Invalid, Request

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
OWN_FORMAT = {"type": "json_schema", "json_schema": {"name": "row", "schema": SCHEMA}}


# ---- --abort-after counts consecutive error rows from zero ---------------------------------------------------


class Rows:
    """A recorder over a temporary checkpoint, fed results by status."""

    def __init__(self, abort_after: int) -> None:
        self.checkpoint = Checkpoint.temporary()
        self.progress = Progress(total=None, quiet=True)
        self.recorder = Recorder(RunConfig(input="in.jsonl", abort_after=abort_after), self.checkpoint, self.progress)
        self.index = 0

    def add(self, status: Status) -> TooManyFailures | None:
        index, self.index = self.index, self.index + 1
        request = Request(str(index), index, index + 1, {}, {}, slot=index)
        if status is Status.INVALID:
            result = Result.invalid(str(index), index, "bad row")
            stop = self.recorder.record(result, Invalid(str(index), index, index + 1, "bad row", {}, slot=index))
        else:
            result = Result(str(index), index, status, 200 if status is Status.OK else 500, error="boom")
            stop = self.recorder.record(result, request)
        assert stop is None or isinstance(stop, TooManyFailures)
        return stop

    def close(self) -> None:
        self.checkpoint.remove()


@pytest.fixture
def rows() -> Any:
    made: list[Rows] = []

    def make(abort_after: int) -> Rows:
        made.append(Rows(abort_after))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_abort_after_3_stops_on_the_third_error_in_a_row_and_not_before(rows: Any) -> None:
    run = rows(3)
    assert [run.add(Status.ERROR) is None for _ in range(2)] == [True, True]  # counted from 0, not 1
    stop = run.add(Status.ERROR)
    assert stop is not None and str(stop).startswith("3 rows in a row failed (last: boom)")


def test_an_ok_row_starts_the_count_again_from_zero(rows: Any) -> None:
    run = rows(3)
    outcomes = [run.add(s) for s in (Status.ERROR, Status.ERROR, Status.OK, Status.ERROR, Status.ERROR)]
    assert outcomes == [None] * 5  # two, reset, two: never three in a row
    assert run.add(Status.ERROR) is not None


def test_an_invalid_row_adds_no_tokens_to_the_progress_figures(rows: Any) -> None:
    run = rows(0)
    run.add(Status.INVALID)
    run.add(Status.INVALID)
    assert (run.progress.done, run.progress.tokens) == (2, 0)


# ---- `parsed` on every row when only some rows ask for a schema -----------------------------------------------


@pytest.mark.parametrize("judged", [False, True], ids=["plain", "judged"])
def test_rows_with_their_own_schema_give_every_row_the_parsed_column(sim, runner, tmp_path: Path, judged: bool) -> None:
    """SPEC §3: `parsed` is present on every row once the run has it, in JSONL as in Parquet; here only one row
    asks for a schema (its own response_format), so the run learns it from the recorded rows."""
    server = sim()
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "plain", "prompt": "hello"},
            {"id": "own", "messages": [{"role": "user", "content": "give json"}], "response_format": OWN_FORMAT},
        ],
    )
    args = [str(source), "-c", "1"]
    if judged:
        job = tmp_path / "job.toml"
        job.write_text('[[assert]]\ntype = "llm-rubric"\nrubric = "Judge {output}"\n', encoding="utf-8")
        args += ["--job", str(job)]
    for name in ("out.jsonl", "out.parquet"):
        result = invoke(runner, ["run", *args, "-o", str(tmp_path / name)], env=connection_env(server))
        assert result.exit_code == 0, result.stderr

    jsonl = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert "parsed" in jsonl["plain"] and jsonl["plain"]["parsed"] is None
    assert jsonl["own"]["parsed"] == '{"a":0}'
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("parsed").to_pylist() == [None, '{"a":0}']


def test_the_judge_column_comes_right_after_the_evaluation_columns_before_kept_ones(
    sim, runner, tmp_path: Path
) -> None:
    """SPEC §3: evaluation columns, then kept columns last; `judge` is an evaluation column."""
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "hello", "topic": "greeting"}])
    job = tmp_path / "job.toml"
    job.write_text('[[assert]]\ntype = "llm-rubric"\nrubric = "Judge {output}"\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"

    result = invoke(
        runner,
        ["run", str(source), "-o", str(out), "--job", str(job), "--keep-columns", "topic"],
        env=connection_env(server),
    )

    assert result.exit_code == 0, result.stderr
    columns = list(read_jsonl(out)[0])
    assert columns[-7:] == ["variant", "sample", "passed", "failures", "cached", "judge", "topic"]


# ---- a failure while writing the output's lines ----------------------------------------------------------------


def test_a_write_failing_mid_output_is_one_line_and_leaves_no_temp_file(
    sim, runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "prompt": f"p{i}"} for i in range(5)])
    out = tmp_path / "out.jsonl"
    real_write_line = results.OutputWriter.write_line
    written = 0

    def disk_fills_up(self: results.OutputWriter, line: bytes, record: dict[str, Any]) -> None:
        nonlocal written
        if written == 2:
            raise OSError(28, "No space left on device")
        written += 1
        real_write_line(self, line, record)

    monkeypatch.setattr(results.OutputWriter, "write_line", disk_fills_up)
    result = invoke(runner, ["run", str(source), "-o", str(out)], env=connection_env(server))

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("inferbatch:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"inferbatch: cannot write {out} ([Errno 28] No space left on device); ")
    assert "every finished row is kept in the checkpoint" in errors[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []  # the half file is gone
    monkeypatch.setattr(results.OutputWriter, "write_line", real_write_line)
    again = invoke(runner, ["run", str(source), "-o", str(out)], env=connection_env(server))
    assert again.exit_code == 0, again.stderr
    assert len(read_jsonl(out)) == 5
    assert server.stats.requests == 5  # the rerun wrote the output from the checkpoint, sending nothing
    assert os.path.exists(out)
    assert json.loads(out.read_text().splitlines()[0])["id"] == "0"
