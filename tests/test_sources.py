"""Reading input files as streams of Rows (SPEC §2, §8.4): JSONL, gzip, Parquet, CSV, stdin, unreadable files."""

from __future__ import annotations

import gzip
import io
import json
import sys
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import chat_rows, write_jsonl
from inferbatch import sources
from inferbatch.errors import InputError
from inferbatch.sources import Row, Survey, count_rows, input_format, input_has_ids, read_rows, survey

# --- JSONL ---------------------------------------------------------------------------------------------------------


def test_jsonl_rows_in_order(tmp_path: Path) -> None:
    rows = chat_rows(3)
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    assert list(read_rows(str(path))) == [Row(i, i + 1, row, None) for i, row in enumerate(rows)]


def test_jsonl_blank_lines_are_skipped_but_counted_as_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a"}\n\n   \n{"id": "b"}\n\t\n{"id": "c"}\n', encoding="utf-8")
    got = list(read_rows(str(path)))
    assert [(r.index, r.line, r.data) for r in got] == [
        (0, 1, {"id": "a"}),
        (1, 4, {"id": "b"}),
        (2, 6, {"id": "c"}),
    ]
    assert all(r.error is None for r in got)


def test_jsonl_crlf_and_missing_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "a"}\r\n{"id": "b"}')
    assert [(r.line, r.data) for r in read_rows(str(path))] == [(1, {"id": "a"}), (2, {"id": "b"})]


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ('{"id": "x", "messages": [', "JSON"),
        ("not json at all", "JSON"),
        ("[1, 2]", "object"),
        ('"just a string"', "object"),
        ("42", "object"),
        ("null", "object"),
    ],
)
def test_jsonl_bad_line_becomes_an_error_row(tmp_path: Path, bad_line: str, problem: str) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": "a"}, "", bad_line, {"id": "c"}])
    got = list(read_rows(str(path)))
    assert len(got) == 3
    bad = got[1]
    assert (bad.index, bad.line, bad.data) == (1, 3, None)
    assert bad.error is not None
    assert "line 3" in bad.error
    assert problem in bad.error
    assert got[2] == Row(2, 4, {"id": "c"}, None)


def test_jsonl_non_utf8_line_becomes_an_error_row(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b", "prompt": "caf\xe9"}\n{"id": "c"}\n')
    got = list(read_rows(str(path)))
    assert got[0].data == {"id": "a"}
    assert got[1].data is None
    assert got[1].error is not None
    assert "line 2" in got[1].error and "UTF-8" in got[1].error
    assert got[2].data == {"id": "c"}


def test_jsonl_unicode_content_round_trips(tmp_path: Path) -> None:
    row = {"id": "é", "prompt": "日本語 ✓ 🚀"}
    path = write_jsonl(tmp_path / "in.jsonl", [row])
    assert [r.data for r in read_rows(str(path))] == [row]


def test_ndjson_extension(tmp_path: Path) -> None:
    rows = chat_rows(2)
    path = write_jsonl(tmp_path / "in.ndjson", rows)
    assert [r.data for r in read_rows(str(path))] == rows


def test_gzipped_jsonl(tmp_path: Path) -> None:
    rows = chat_rows(3)
    path = tmp_path / "in.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(rows[0]) + "\n\n")
        handle.write("{broken\n")
        for row in rows[1:]:
            handle.write(json.dumps(row) + "\n")
    got = list(read_rows(str(path)))
    assert [(r.index, r.line) for r in got] == [(0, 1), (1, 3), (2, 4), (3, 5)]
    assert [r.data for r in got] == [rows[0], None, rows[1], rows[2]]
    assert got[1].error is not None and "line 3" in got[1].error


def test_corrupt_gzip_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(b"this is not gzip data\n")
    with pytest.raises(InputError):
        list(read_rows(str(path)))


class _Stdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


def test_stdin_dash_reads_jsonl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", _Stdin(b'{"id": "a"}\n\n{"id": "b"}\n[3]\n'))
    got = list(read_rows("-"))
    assert [(r.index, r.line, r.data) for r in got] == [(0, 1, {"id": "a"}), (1, 3, {"id": "b"}), (2, 4, None)]
    assert got[2].error is not None and "line 4" in got[2].error


# --- Parquet -------------------------------------------------------------------------------------------------------


MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string()), ("name", pa.string())])


def test_parquet_messages_as_list_of_structs_drop_null_fields(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": ["a", "b"],
            "messages": pa.array(
                [
                    [{"role": "system", "content": "Be brief.", "name": None}, {"role": "user", "content": "hi"}],
                    [{"role": "user", "content": "yo", "name": "alice"}],
                ],
                type=pa.list_(MESSAGE),
            ),
            "temperature": pa.array([0.5, None], type=pa.float64()),
        }
    )
    path = tmp_path / "in.parquet"
    pq.write_table(table, path)
    got = list(read_rows(str(path)))
    assert [(r.index, r.line, r.error) for r in got] == [(0, 1, None), (1, 2, None)]
    assert got[0].data == {
        "id": "a",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "temperature": 0.5,
    }
    assert got[1].data == {"id": "b", "messages": [{"role": "user", "content": "yo", "name": "alice"}]}


def test_parquet_messages_as_json_string(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "hi"}]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a"], "messages": [json.dumps(messages)]}), path)
    (row,) = list(read_rows(str(path)))
    assert row.data == {"id": "a", "messages": json.dumps(messages)}


def test_parquet_row_numbers_are_one_based_across_batches(tmp_path: Path) -> None:
    n = 2500
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": [f"q{i}" for i in range(n)]}), path, row_group_size=700)
    got = list(read_rows(str(path)))
    assert len(got) == n
    assert all(r.index == i and r.line == i + 1 and r.data == {"prompt": f"q{i}"} for i, r in enumerate(got))


def test_not_a_parquet_file_is_an_input_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.parquet", chat_rows(2))
    with pytest.raises(InputError):
        list(read_rows(str(path)))


# --- CSV -----------------------------------------------------------------------------------------------------------


def test_csv_rows_with_header(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('id,question\nq1,What is 2+2?\nq2,"Say ""hi"", please"\n', encoding="utf-8")
    got = list(read_rows(str(path)))
    assert got == [
        Row(0, 2, {"id": "q1", "question": "What is 2+2?"}, None),
        Row(1, 3, {"id": "q2", "question": 'Say "hi", please'}, None),
    ]


def test_csv_row_with_too_many_fields_is_an_error_row(tmp_path: Path) -> None:
    """SPEC §8.29: never shifted values; only the first field (surely in its column) is kept, for the id."""
    path = tmp_path / "in.csv"
    path.write_text("id,question\nq1,fine\nq2,too,many\nq3,fine again\n", encoding="utf-8")
    got = list(read_rows(str(path)))
    assert [(r.index, r.line) for r in got] == [(0, 2), (1, 3), (2, 4)]
    assert got[1].data == {"id": "q2"}
    assert got[1].error is not None and "line 3" in got[1].error and "3 fields" in got[1].error
    assert got[2].data == {"id": "q3", "question": "fine again"}


def test_csv_multiline_field_keeps_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('id,question\nq1,"two\nlines"\nq2,one,extra\n', encoding="utf-8")
    got = list(read_rows(str(path)))
    assert got[0].data == {"id": "q1", "question": "two\nlines"}
    assert (got[0].line, got[1].line) == (2, 4)
    assert got[1].error is not None and "line 4" in got[1].error


def test_csv_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    """SPEC §8.4: errors name the line as an editor shows it, blank lines included."""
    path = tmp_path / "in.csv"
    path.write_text("id,question\n\nq1,fine\n\nq2,too,many\n", encoding="utf-8")
    got = list(read_rows(str(path)))
    assert [r.data for r in got] == [{"id": "q1", "question": "fine"}, {"id": "q2"}]
    assert [r.error is None for r in got] == [True, False]
    assert [r.line for r in got] == [3, 5]
    assert got[1].error is not None and "line 5" in got[1].error


def test_csv_with_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes("\ufeffid,question\nq1,hi\n".encode())
    assert [r.data for r in read_rows(str(path))] == [{"id": "q1", "question": "hi"}]


# --- Unreadable inputs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.jsonl", ".jsonl"),
        ("a.JSONL", ".jsonl"),
        ("a.ndjson", ".ndjson"),
        ("a.jsonl.gz", ".jsonl.gz"),
        ("a.parquet", ".parquet"),
        ("a.csv", ".csv"),
        ("-", ".jsonl"),
    ],
)
def test_input_format_by_extension(name: str, fmt: str) -> None:
    assert input_format(name) == fmt


@pytest.mark.parametrize("name", ["a.txt", "a.json", "a.gz", "a", "a.jsonl.bak", "data.xlsx"])
def test_unknown_extension_is_an_input_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text('{"id": 1}\n', encoding="utf-8")
    with pytest.raises(InputError):
        input_format(str(path))
    with pytest.raises(InputError):
        list(read_rows(str(path)))


@pytest.mark.parametrize(
    "name", ["missing.jsonl", "missing.ndjson", "missing.jsonl.gz", "missing.parquet", "missing.csv"]
)
def test_missing_file_is_an_input_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match="missing"):
        list(read_rows(str(tmp_path / name)))


def test_directory_is_an_input_error(tmp_path: Path) -> None:
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    with pytest.raises(InputError):
        list(read_rows(str(folder)))


def test_empty_csv_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(InputError):
        list(read_rows(str(path)))


def test_empty_jsonl_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    assert list(read_rows(str(path))) == []


# --- count_rows ----------------------------------------------------------------------------------------------------


def test_count_rows_jsonl_ignores_blank_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [*chat_rows(3), "", "not json", ""])
    assert count_rows(str(path)) == 4 == len(list(read_rows(str(path))))


def test_count_rows_csv_excludes_header(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,q\n1,a\n2,b\n3,c\n", encoding="utf-8")
    assert count_rows(str(path)) == 3


def test_count_rows_parquet(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": [f"q{i}" for i in range(37)]}), path)
    assert count_rows(str(path)) == 37


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.csv", "missing.parquet"])
def test_count_rows_of_missing_file_is_none(tmp_path: Path, name: str) -> None:
    assert count_rows(str(tmp_path / name)) is None


# --- CSV read strictly (SPEC §8.29) --------------------------------------------------------------------------------


def csv_rows(tmp_path: Path, content: bytes) -> list[Row]:
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    rows = list(read_rows(str(path)))
    assert count_rows(str(path)) == len(rows)  # the progress total agrees with the rows
    return rows


def test_csv_short_row_is_an_error_row_never_padded(tmp_path: Path) -> None:
    got = csv_rows(tmp_path, b"id,question,context\nq1,one,c\nq2,two\n")
    assert got[1].data == {"id": "q2"}
    assert got[1].error is not None and "line 3" in got[1].error and "2 fields, the header has 3" in got[1].error


def test_csv_unterminated_quote_at_end_of_file_reads_the_next_lines_again(tmp_path: Path) -> None:
    got = csv_rows(tmp_path, b'id,question\nq1,"never closed\nq2,two\nq3,three\n')
    assert [(r.line, r.data) for r in got] == [
        (2, {"id": "q1"}),
        (3, {"id": "q2", "question": "two"}),
        (4, {"id": "q3", "question": "three"}),
    ]
    assert got[0].error is not None and "unterminated quote in field 2" in got[0].error


def test_csv_quoted_field_longer_than_the_limit_counts_as_unterminated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "MAX_QUOTED_BYTES", 40)
    got = csv_rows(tmp_path, b'id,q\na,"' + b"x" * 30 + b"\n" + b"y" * 30 + b'"\nb,fine\n')
    assert [r.error is None for r in got] == [False, False, True]
    assert got[0].error is not None and "quote" in got[0].error
    assert got[2].data == {"id": "b", "q": "fine"}


def test_csv_multiline_record_with_wrong_field_count_is_one_error_row(tmp_path: Path) -> None:
    got = csv_rows(tmp_path, b'id,q\na,"two\nlines",extra\nb,fine\n')
    assert [(r.line, r.error is None) for r in got] == [(2, False), (4, True)]
    assert got[0].error is not None and "3 fields" in got[0].error


def test_csv_quoting_rules(tmp_path: Path) -> None:
    got = csv_rows(tmp_path, b'id,q\na,5" screen\nb,"say ""hi"""\nc,"closed"junk\nd,""\n')
    assert got[0].data == {"id": "a", "q": '5" screen'}  # a quote inside an unquoted field is text
    assert got[1].data == {"id": "b", "q": 'say "hi"'}
    assert got[2].data == {"id": "c"} and got[2].error is not None and "after the closing quote" in got[2].error
    assert got[3].data == {"id": "d", "q": ""}


def test_csv_non_utf8_row_keeps_only_its_readable_fields(tmp_path: Path) -> None:
    got = csv_rows(tmp_path, b"id,q\nq1,caf\xe9\n\xff,x\nq3,ok\n")
    assert got[0].data == {"id": "q1"} and got[0].error is not None and "not UTF-8 (byte 7)" in got[0].error
    assert got[1].data == {"q": "x"} and got[1].error is not None
    assert got[2].data == {"id": "q3", "q": "ok"} and got[2].error is None


def test_csv_cr_line_endings_and_leading_blank_lines(tmp_path: Path) -> None:
    got = csv_rows(tmp_path, b'\r\n\nid,q\ra,"x\ry"\rb,z')
    assert [(r.line, r.data) for r in got] == [(4, {"id": "a", "q": "x\ry"}), (6, {"id": "b", "q": "z"})]


def test_csv_lines_split_across_read_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "READ_CHUNK", 3)
    got = csv_rows(tmp_path, b'\xef\xbb\xbfid,q\r\na,"one\r\ntwo"\r\nb,' + b"w" * 20 + b"\r\n")
    assert [(r.line, r.data) for r in got] == [(2, {"id": "a", "q": "one\r\ntwo"}), (4, {"id": "b", "q": "w" * 20})]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"id,q,q\na,b,c\n", "twice"),
        (b"id,,\na,b,c\n", "unnamed column"),
        (b"id,caf\xe9\na,b\n", "UTF-8"),
        (b'id,"q\na,b\n', "quote"),
        (b"\n\n", "empty"),
    ],
)
def test_csv_bad_header_is_an_input_error(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=problem):
        list(read_rows(str(path)))
    with pytest.raises(InputError, match=problem):
        survey(str(path))


# --- Whole-file survey (SPEC §8.30, §8.32) ------------------------------------------------------------------------


def test_survey_finds_a_cut_short_gzip_and_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.gz"
    data = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in chat_rows(2000)))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"in\.jsonl\.gz: compressed data damaged or cut short after line \d+"):
        survey(str(path))
    assert count_rows(str(path)) is None


def test_survey_counts_gzip_rows(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"prompt": "a"}\n\n{"prompt": "b"}\n'))
    assert survey(str(path)) == Survey(rows=2, ids=False)
    assert count_rows(str(path)) == 2


@pytest.mark.parametrize(
    ("rows", "ids"),
    [
        ([{"prompt": "a"}, {"prompt": "b", "messages_id": "x"}], False),
        ([{"prompt": "a"}, "{broken", {"prompt": "b", "custom_id": None}], True),
        ([{"prompt": "a", "meta": {"id": 1}}, {"id": "z", "prompt": "b"}], True),
    ],
)
def test_survey_finds_whether_any_jsonl_row_has_an_id(tmp_path: Path, rows: list[Any], ids: bool) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    assert survey(str(path)) == Survey(rows=len(rows), ids=ids)


def test_survey_sees_a_changed_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    assert survey(str(path)) == Survey(1, False)
    write_jsonl(path, [{"id": "x", "prompt": "a"}, {"id": "y", "prompt": "b"}])
    assert survey(str(path)) == Survey(2, True)


def test_survey_is_none_for_streams() -> None:
    assert survey("-") is None
    assert survey("s3://bucket/in.jsonl") is None


def test_input_has_ids(tmp_path: Path) -> None:
    csv_path = tmp_path / "in.csv"
    csv_path.write_text("custom_id,prompt\n", encoding="utf-8")
    parquet_path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["a"]}), parquet_path)
    jsonl_path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    assert input_has_ids(str(csv_path), None) is True
    assert input_has_ids(str(parquet_path), None) is False
    assert input_has_ids(str(jsonl_path), None) is False
    assert input_has_ids(str(jsonl_path), "key") is True
    assert input_has_ids("-", None) is None


# --- JSONL oddities ------------------------------------------------------------------------------------------------


def test_jsonl_bom_on_a_later_line_is_not_content(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a"}\n\xef\xbb\xbf{"id": "b"}\n')
    assert [r.data for r in read_rows(str(path))] == [{"id": "a"}, {"id": "b"}]


def test_jsonl_null_line_names_json_types(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", ["null", "true", "1.5"])
    assert [r.error.split(", got ")[1] for r in read_rows(str(path)) if r.error] == ["null", "boolean", "number"]


# --- Parquet values become JSON values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        (Decimal("12.30"), "12.30"),
        (Decimal("1E+3"), "1000"),
        (b"caf\xc3\xa9", "café"),
        (b"\xff\x00", "/wA="),
        (datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC), "2024-01-02T03:04:05.000006+00:00"),
        (date(2024, 1, 2), "2024-01-02"),
        (dtime(3, 4), "03:04:00"),
        (timedelta(minutes=1), "PT60S"),
        (timedelta(microseconds=-1), "-PT0.000001S"),
        (2**63, str(2**63)),
        (-(2**63), -(2**63)),
        ({"a": None, "b": [Decimal("1.0"), None]}, {"b": ["1.0", None]}),
        ([(1, "x"), ("k", b"v")], {"1": "x", "k": "v"}),
        (pa.MonthDayNano([1, 2, 3]), "MonthDayNano(months=1, days=2, nanoseconds=3)"),
    ],
)
def test_plain_values(value: Any, plain: Any) -> None:
    assert sources._plain(value) == plain


def test_parquet_nanoseconds_anywhere_are_read_to_the_microsecond(tmp_path: Path) -> None:
    ns = pa.timestamp("ns")
    table = pa.table(
        {
            "prompt": ["a"],
            "at": pa.array([1_500], ns),
            "nested": pa.array([{"t": 2_500, "d": 1}], pa.struct([("t", ns), ("d", pa.duration("ns"))])),
            "many": pa.array([[3_500]], pa.list_(ns)),
            "coded": pa.array([4_500], ns).dictionary_encode(),
            "clock": pa.array([5_500], pa.time64("ns")),
        }
    )
    path = tmp_path / "in.parquet"
    pq.write_table(table, path)
    (row,) = list(read_rows(str(path)))
    assert row.error is None
    assert row.data == {
        "prompt": "a",
        "at": "1970-01-01T00:00:00.000001",
        "nested": {"t": "1970-01-01T00:00:00.000002", "d": "PT0S"},
        "many": ["1970-01-01T00:00:00.000003"],
        "coded": "1970-01-01T00:00:00.000004",
        "clock": "00:00:00.000005",
    }


def test_parquet_unreadable_value_makes_only_its_row_an_error(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "when": pa.array([0, 10**15], pa.timestamp("ms"))}), path)
    got = list(read_rows(str(path)))
    assert got[0] == Row(0, 1, {"id": "a", "when": "1970-01-01T00:00:00"}, None)
    assert got[1].data == {"id": "b"}
    assert got[1].error is not None and got[1].error.startswith("row 2: column 'when'")


def test_parquet_duplicate_column_names_are_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["prompt", "prompt"]), path)
    with pytest.raises(InputError, match="twice"):
        list(read_rows(str(path)))
    with pytest.raises(InputError, match="twice"):
        survey(str(path))
