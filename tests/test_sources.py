"""Reading input files as streams of Rows (SPEC §2, §8.4): JSONL, gzip, Parquet, CSV, stdin, unreadable files."""

from __future__ import annotations

import gzip
import io
import json
import sys
from pathlib import Path
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import chat_rows, write_jsonl

from inferbatch.errors import InputError
from inferbatch.sources import Row, count_rows, input_format, read_rows

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
    path = tmp_path / "in.csv"
    path.write_text("id,question\nq1,fine\nq2,too,many\nq3,fine again\n", encoding="utf-8")
    got = list(read_rows(str(path)))
    assert [(r.index, r.line) for r in got] == [(0, 2), (1, 3), (2, 4)]
    assert got[1].data is None
    assert got[1].error is not None and "line 3" in got[1].error
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
    assert [r.data for r in got] == [{"id": "q1", "question": "fine"}, None]
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

