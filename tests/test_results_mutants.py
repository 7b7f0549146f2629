"""Result records, usage arithmetic and the output writer, field by field: the edges the mutation run
(issue 16) found unpinned. Unit level, like ``test_results_units.py``: real files under ``tmp_path``, Parquet
read back with pyarrow, ``os.fsync`` watched the way ``test_checkpoint_durability.py`` watches it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inferbatch import results
from inferbatch.errors import Fatal, Retryable
from inferbatch.results import COLUMNS, EVAL_COLUMNS, Evaluation, OutputWriter, Result, Status, Usage

COMPLETION = {
    "id": "chatcmpl-9",
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {
        "prompt_tokens": 4,
        "completion_tokens": 2,
        "total_tokens": 6,
        "prompt_tokens_details": {"cached_tokens": 1},
        "completion_tokens_details": {"reasoning_tokens": 3},
    },
}


def _ok(row_id: str = "r1", index: int = 0, **kwargs: Any) -> Result:
    return Result.answered(
        row_id, index, COMPLETION, status_code=200, attempts=1, latency_ms=5.0, request_id=None, **kwargs
    )


def _error(row_id: str = "r2", index: int = 1, **kwargs: Any) -> Result:
    exc = Fatal("bad_request: nope", status=400, code="bad_request", body={"error": {"message": "nope"}})
    return Result.failed(row_id, index, exc, attempts=1, **kwargs)


def _pair(result: Result, **line: Any) -> tuple[bytes, dict[str, Any]]:
    """What the output writer is given: the checkpoint's line and the record parsed back from it."""
    raw = result.line(**line)
    return raw, orjson.loads(raw)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# ---- Usage --------------------------------------------------------------------------------------------------


def test_no_usage_is_zero_tokens_and_false() -> None:
    assert Usage() == Usage(0, 0, 0, 0)
    assert Usage.of({"usage": None}) == Usage(0, 0, 0, 0)
    assert Usage.of({}) == Usage(0, 0, 0, 0)
    assert not Usage()


def test_usage_of_a_completion_reads_every_count() -> None:
    assert Usage.of(COMPLETION) == Usage(prompt=4, completion=2, cached=1, reasoning=3)


def test_a_count_that_is_not_a_non_negative_integer_is_zero() -> None:
    data = {
        "usage": {
            "prompt_tokens": -5,
            "completion_tokens": "7",
            "prompt_tokens_details": {"cached_tokens": 2.0},
            "completion_tokens_details": None,
        }
    }
    assert Usage.of(data) == Usage(0, 0, 0, 0)
    record = {"prompt_tokens": None, "completion_tokens": True, "cached_tokens": -1}
    assert results.row_usage(record) == Usage(0, 0, 0, 0)


def test_usages_add_field_by_field() -> None:
    assert Usage(1, 2, 3, 4) + Usage(10, 20, 30, 40) == Usage(11, 22, 33, 44)


@pytest.mark.parametrize("usage", [Usage(1, 0, 0, 0), Usage(0, 1, 0, 0), Usage(0, 0, 1, 0), Usage(0, 0, 0, 1)])
def test_any_one_count_makes_a_usage_true(usage: Usage) -> None:
    assert usage


# ---- Result: defaults and the factories ---------------------------------------------------------------------


def test_an_invalid_row_was_never_attempted_and_keeps_its_columns() -> None:
    record = Result.invalid("r", 4, "line 5: not JSON", kept={"topic": "geo"}).record()
    assert (record["status"], record["attempts"], record["topic"]) == ("invalid", 0, "geo")


def test_only_an_answer_from_the_cache_is_marked_cached() -> None:
    """``cached`` feeds the evaluation column and decides whether a fresh answer is stored in the cache."""
    assert _ok().cached is False
    assert _ok(cached=True).cached is True
    assert _error().cached is False
    assert Result.invalid("r", 0, "bad").cached is False


def test_an_answers_latency_is_rounded_to_the_microsecond() -> None:
    result = Result.answered("r", 0, COMPLETION, status_code=200, attempts=1, latency_ms=12.34567, request_id=None)
    assert result.latency_ms == 12.346


def test_a_failure_without_a_code_gets_one_from_its_status() -> None:
    assert Result.failed("r", 0, Retryable("upstream", status=503), attempts=2).error_code == "http_503"
    assert Result.failed("r", 0, Retryable("reset"), attempts=2).error_code == "connection_error"


# ---- Result.record ---------------------------------------------------------------------------------------------


def test_a_structured_rows_record_has_the_parsed_column() -> None:
    structured = dataclasses.replace(_ok(), structured=True, parsed='{"a":1}').record()
    assert tuple(structured) == COLUMNS + ("parsed",)
    assert structured["parsed"] == '{"a":1}'
    asked_by_the_run = _ok().record(parsed_column=True)
    assert tuple(asked_by_the_run) == COLUMNS + ("parsed",) and asked_by_the_run["parsed"] is None
    assert "parsed" not in _ok().record()


def test_a_row_cut_off_between_re_asks_is_marked_to_be_sent_again() -> None:
    record = orjson.loads(dataclasses.replace(_ok(), resend=True).line())
    assert record[results.RESEND_KEY] is True
    assert results.RESEND_KEY not in _ok().record()


# ---- Result.plus: a row's columns count every answer it was billed for ----------------------------------------


def test_plus_adds_the_billed_usage_to_each_token_column() -> None:
    result = _ok().plus(Usage(prompt=10, completion=20, cached=3, reasoning=0))
    assert (
        result.prompt_tokens,
        result.completion_tokens,
        result.total_tokens,
        result.cached_tokens,
        result.reasoning_tokens,
    ) == (14, 22, 36, 4, 3)


def test_plus_fills_a_column_the_answer_left_empty_only_when_something_was_billed() -> None:
    bare = Result("r", 0, Status.OK, 200, attempts=1)  # an answer whose body said nothing of usage
    result = bare.plus(Usage(prompt=7, completion=0, cached=2, reasoning=0))
    assert (
        result.prompt_tokens,
        result.completion_tokens,
        result.total_tokens,
        result.cached_tokens,
        result.reasoning_tokens,
    ) == (7, None, 7, 2, None)


def test_plus_nothing_is_the_result_itself() -> None:
    result = _ok()
    assert result.plus(Usage()) is result


# ---- error_type, kept_column_types, judge entries -------------------------------------------------------------


def test_error_type_of_an_output_row_is_what_leads_its_error() -> None:
    assert results.error_type({"error": "timeout: no response within 30 s"}) == "timeout"
    assert results.error_type({"error": "http_400: bad: really"}) == "http_400"
    assert results.error_type({"error": "something odd"}) == "error"
    assert results.error_type({"error": None}) == "error"
    assert results.error_type({"error": "ignored: x", results.CODE_KEY: "schema_mismatch"}) == "schema_mismatch"


def test_kept_column_types_are_the_one_type_every_value_has() -> None:
    records = [
        {"n": 1, "x": 1, "b": True, "s": "a", "mixed": 1, "none": None},
        {"n": 2, "x": 2.5, "b": False, "s": "b", "mixed": "one", "none": None},
        {"n": None, "x": None, "b": None, "s": None, "mixed": None},
    ]
    types = results.kept_column_types(records, ("n", "x", "b", "s", "mixed", "none"))
    assert types == [
        ("n", pa.int64()),
        ("x", pa.float64()),
        ("b", pa.bool_()),
        ("s", pa.string()),
        ("mixed", pa.string()),
        ("none", pa.string()),
    ]


def test_judge_entries_and_their_bill() -> None:
    record = {"judge": '[{"model": "j1", "prompt_tokens": 30, "completion_tokens": 5}, 7, {"cached_tokens": 2}]'}
    assert results.judge_entries(record) == [
        {"model": "j1", "prompt_tokens": 30, "completion_tokens": 5},
        {"cached_tokens": 2},
    ]
    assert results.judge_usage(record) == [("j1", 30, 5, 0), ("", 0, 0, 2)]
    assert results.judge_entries({"judge": "[not json"}) == []
    assert results.judge_entries({"judge": None}) == []
    assert results.judge_usage({}) == []


# ---- OutputWriter: JSONL -------------------------------------------------------------------------------------


def test_a_plain_jsonl_output_copies_the_line_and_strips_internal_keys(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    ok_line, ok_record = _pair(_ok())
    error_line, error_record = _pair(_error(), keep_body=True)
    writer = OutputWriter(str(out), "jsonl")
    writer.write_line(ok_line, ok_record)
    writer.write_line(error_line, error_record)
    writer.commit()
    lines = _lines(out)
    assert lines[0] == ok_line
    assert orjson.loads(lines[1]) == results.public(error_record)
    assert tuple(orjson.loads(lines[1])) == COLUMNS


def test_a_jsonl_output_with_the_parsed_column_has_it_on_every_row_in_its_place(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    evaluation = Evaluation("v", 0, True, (), False)
    plain = dataclasses.replace(_ok(kept={"topic": "geo"}), evaluation=evaluation)
    structured = dataclasses.replace(_ok("r3", 2, kept={"topic": "sea"}), structured=True, parsed='{"a":1}')
    writer = OutputWriter(str(out), "jsonl", parsed=True)
    for result in (plain, structured, _error()):
        writer.write_line(*_pair(result))
    writer.commit()
    first, second, third = (orjson.loads(line) for line in _lines(out))
    assert tuple(first) == COLUMNS + ("parsed",) + EVAL_COLUMNS + ("topic",)
    assert (first["parsed"], first["variant"], first["topic"]) == (None, "v", "geo")
    assert tuple(second) == COLUMNS + ("parsed", "topic")
    assert second["parsed"] == '{"a":1}'
    assert tuple(third) == COLUMNS + ("parsed",)


def test_an_openai_batch_output_has_one_batch_line_per_row(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    line, record = _pair(_ok(), keep_body=True)
    writer = OutputWriter(str(out), "openai-batch")
    writer.write_line(line, record)
    writer.commit()
    assert [orjson.loads(x) for x in _lines(out)] == [results.openai_batch_line(record)]


def test_the_output_folder_is_made_when_missing(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "out.jsonl"
    writer = OutputWriter(str(out), "jsonl")
    writer.write_line(*_pair(_ok()))
    writer.commit()
    assert _lines(out) == [_ok().line()]


# ---- OutputWriter: Parquet -----------------------------------------------------------------------------------


def test_the_parquet_schema_says_which_columns_are_never_null(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    writer = OutputWriter(str(out), "parquet")
    writer.write_line(*_pair(_ok()))
    writer.commit()
    schema = pq.read_schema(out)
    assert [name for name in schema.names if not schema.field(name).nullable] == ["id", "index", "status", "attempts"]
    assert schema.names == list(COLUMNS)


def test_a_parquet_string_kept_column_holds_json_text_for_values_that_are_not_text(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    rows = [{"a": 1}, "plain", None, [1, 2]]
    writer = OutputWriter(str(out), "parquet", [("meta", pa.string())])
    for i, meta in enumerate(rows):
        writer.write_line(*_pair(_ok(f"r{i}", i, kept={"meta": meta})))
    writer.commit()
    assert pq.read_table(out).column("meta").to_pylist() == ['{"a":1}', "plain", None, "[1,2]"]


def test_parquet_rows_are_written_in_groups_of_4096(tmp_path: Path) -> None:
    """The writer holds at most one batch of rows in memory: a group is written each 4,096 rows."""
    out = tmp_path / "out.parquet"
    writer = OutputWriter(str(out), "parquet")
    count = 2 * results.PARQUET_BATCH_ROWS + 1
    for i in range(count):
        writer.write_line(*_pair(_ok(f"r{i}", i)))
    writer.commit()
    metadata = pq.ParquetFile(out).metadata
    assert [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)] == [4096, 4096, 1]
    assert pq.read_table(out).column("index").to_pylist() == list(range(count))


# ---- OutputWriter: commit and abort --------------------------------------------------------------------------


@pytest.fixture
def umask_026() -> Iterator[int]:
    old = os.umask(0o026)
    yield 0o026
    os.umask(old)


def _open_under(folder: Path) -> list[str]:
    """The files under ``folder`` this process holds a descriptor on."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(folder)):
                held.append(target)
    return held


def test_commit_gives_the_output_ordinary_permissions_and_leaves_the_umask_alone(
    tmp_path: Path, umask_026: int
) -> None:
    out = tmp_path / "out.jsonl"
    writer = OutputWriter(str(out), "jsonl")
    writer.write_line(*_pair(_ok()))
    writer.commit()
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # 0o666 less the umask, not mkstemp's 0o600
    assert os.umask(umask_026) == umask_026  # still the process's umask after commit


def test_commit_fsyncs_the_whole_output_before_it_is_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.jsonl"
    synced: list[tuple[str, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append((os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), os.fstat(fd).st_size))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    line = _ok().line()
    writer = OutputWriter(str(out), "jsonl")
    writer.write_line(line, orjson.loads(line))
    writer.commit()
    assert len(synced) == 1
    name, size = synced[0]
    assert name.startswith(".out.jsonl.") and name.endswith(".tmp")
    assert size == len(line)  # flushed first: the bytes were in the file when it was synced


def test_commit_and_abort_leave_no_descriptor_open(tmp_path: Path) -> None:
    writer = OutputWriter(str(tmp_path / "out.jsonl"), "jsonl")
    writer.write_line(*_pair(_ok()))
    writer.commit()
    assert _open_under(tmp_path) == []
    aborted = OutputWriter(str(tmp_path / "other.jsonl"), "jsonl")
    aborted.write_line(*_pair(_ok()))
    assert len(_open_under(tmp_path)) == 1  # the temporary file, while it is written
    aborted.abort()
    assert _open_under(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # abort removed its temporary file


def test_a_commit_that_fails_leaves_no_temporary_file(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.mkdir()  # a folder where the output should go: the rename into place fails
    writer = OutputWriter(str(out), "jsonl")
    writer.write_line(*_pair(_ok()))
    with pytest.raises(IsADirectoryError):
        writer.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
    assert list(out.iterdir()) == []


def test_an_s3_output_is_uploaded_whole_and_its_local_copy_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    uploaded: list[tuple[str, str, bytes]] = []

    def upload_file(local_path: str, uri: str) -> None:
        uploaded.append((local_path, uri, Path(local_path).read_bytes()))

    monkeypatch.setattr("inferbatch.storage.upload_file", upload_file)
    line = _ok().line()
    writer = OutputWriter("s3://bucket/runs/out.jsonl", "jsonl")
    writer.write_line(line, orjson.loads(line))
    writer.commit()
    assert [(uri, data) for _, uri, data in uploaded] == [("s3://bucket/runs/out.jsonl", line)]
    assert not os.path.exists(uploaded[0][0])
