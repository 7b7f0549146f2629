"""Hostile inputs through the real CLI (SPEC §2, §8.4, §8.29, §8.30, §8.32): every bad row is a clear
`invalid` row or the whole input is exit 2 before anything is sent; never a traceback, never a row sent
with empty or shifted values, never two output rows with one id.

Where sending matters the run goes to the `sim` fixture, whose stats say what the model received
(``prompts`` holds each last user message); elsewhere `--simulate` does.
"""

from __future__ import annotations

import base64
import errno
import gzip
import io
import json
from datetime import date, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from conftest import chat_rows, connection_env, invoke, read_jsonl, write_jsonl
from inferbatch.cli import cli
from inferbatch.sources import count_rows, read_rows


def run(runner: CliRunner, args: list[str], env: dict[str, str] | None = None, **kwargs: Any) -> Result:
    result = runner.invoke(cli, ["run", *args], env=env, catch_exceptions=False, **kwargs)
    assert "Traceback" not in result.output
    return result


def validate(runner: CliRunner, args: list[str]) -> Result:
    result = invoke(runner, ["validate", *args])
    assert "Traceback" not in result.output
    return result


def sent(server: Any) -> set[str]:
    """The last user message of every request the simulator received."""
    return set(server.stats.prompts)


def assert_unique_ids(rows: list[dict[str, Any]]) -> None:
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), ids


def assert_exit_2_nothing_sent(result: Result, server: Any, *names: str) -> None:
    assert result.exit_code == 2, result.output
    assert server.stats.requests == 0
    message = result.stderr.strip()
    assert message.startswith("inferbatch: "), message
    assert len(message.splitlines()) == 1, message
    for name in names:
        assert name in message, message


QUESTION = "Q: {question}"


# ---- CSV read strictly (§8.29) ------------------------------------------------------------------------------------


def test_csv_short_row_is_invalid_not_sent_with_empty_values(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    """No row is sent with empty values: a CSV row with fewer fields than the header is invalid, named by its id."""
    server = sim()
    src = tmp_path / "in.csv"
    src.write_text("id,question,context\nq1,one,c1\nq2,two\nq3,three,c3\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out), "--template", "{question} / {context}"], connection_env(server))

    assert result.exit_code == 1, result.stderr
    rows = read_jsonl(out)
    assert [(r["id"], r["status"]) for r in rows] == [("q1", "ok"), ("q2", "invalid"), ("q3", "ok")]
    assert "line 3" in rows[1]["error"] and "2 field" in rows[1]["error"], rows[1]["error"]
    assert sent(server) == {"one / c1", "three / c3"}


def test_csv_long_row_with_id_first_keeps_its_id(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    """No row is sent with shifted values: a row with more fields than the header is invalid and keeps its id."""
    server = sim()
    src = tmp_path / "in.csv"
    src.write_text("id,question\nq1,first\nq2,second, with a comma\nq3,third\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out), "--template", QUESTION], connection_env(server))

    assert result.exit_code == 1, result.stderr
    rows = read_jsonl(out)
    assert [(r["id"], r["status"]) for r in rows] == [("q1", "ok"), ("q2", "invalid"), ("q3", "ok")]
    assert "line 3" in rows[1]["error"] and "3 fields" in rows[1]["error"], rows[1]["error"]
    assert sent(server) == {"Q: first", "Q: third"}


def test_csv_long_row_never_takes_a_shifted_id(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    """In a row with the wrong number of fields only the first field is surely in its column: an id column further
    right is not read (it would be a shifted value), so the row is named by its position."""
    server = sim()
    src = tmp_path / "in.csv"
    src.write_text("question,id\nfirst,q1\nsecond, with a comma,q2\nthird,q3\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out), "--template", QUESTION], connection_env(server))

    assert result.exit_code == 1, result.stderr
    rows = read_jsonl(out)
    assert [r["status"] for r in rows] == ["ok", "invalid", "ok"]
    assert rows[1]["id"] == "<index 1>"  # never " with a comma", and never "1", which a real row may hold
    assert "line 3" in rows[1]["error"], rows[1]["error"]
    assert sent(server) == {"Q: first", "Q: third"}


UNTERMINATED = 'id,question\nq1,first\nq2,"unterminated\nq3,third\nq4,fourth\n'


def test_csv_unterminated_quote_makes_only_its_row_invalid(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    """No row vanishes: an unterminated quote makes its own row invalid; the lines after it are rows of their own."""
    server = sim()
    src = tmp_path / "in.csv"
    src.write_text(UNTERMINATED, encoding="utf-8")
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out), "--template", QUESTION], connection_env(server))

    assert result.exit_code == 1, result.stderr
    rows = read_jsonl(out)
    assert [(r["id"], r["index"], r["status"]) for r in rows] == [
        ("q1", 0, "ok"),
        ("q2", 1, "invalid"),
        ("q3", 2, "ok"),
        ("q4", 3, "ok"),
    ]
    assert "line 3" in rows[1]["error"] and "quote" in rows[1]["error"], rows[1]["error"]
    assert sent(server) == {"Q: first", "Q: third", "Q: fourth"}


def test_csv_unterminated_quote_closed_by_a_later_quote_still_recovers(
    runner: CliRunner, sim: Any, tmp_path: Path
) -> None:
    """No row vanishes: a quote on a later line does not glue the lines between into one bogus field."""
    server = sim()
    src = tmp_path / "in.csv"
    src.write_text('id,question\nq1,"oops\nq2,plain\nq3,"quoted, fine"\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out), "--template", QUESTION], connection_env(server))

    assert result.exit_code == 1, result.stderr
    rows = read_jsonl(out)
    assert [(r["id"], r["status"]) for r in rows] == [("q1", "invalid"), ("q2", "ok"), ("q3", "ok")]
    assert sent(server) == {"Q: plain", "Q: quoted, fine"}


def test_csv_unterminated_quote_is_reported_by_validate(runner: CliRunner, tmp_path: Path) -> None:
    """`validate` reports what `run` would do: the unterminated quote is one invalid row, the rest are valid."""
    src = tmp_path / "in.csv"
    src.write_text(UNTERMINATED, encoding="utf-8")

    result = validate(runner, [str(src), "--template", QUESTION, "--model", "m"])

    assert result.exit_code == 1, result.output
    assert "rows=4 valid=3 invalid=1" in result.stdout
    assert "line 3" in result.stdout


def test_csv_non_utf8_byte_makes_only_its_row_invalid(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    """A non-UTF-8 byte makes only its own row invalid (naming its line and id); the run goes on (not exit 2)."""
    server = sim()
    src = tmp_path / "in.csv"
    src.write_bytes(b"id,question\nq1,first\nq2,caf\xe9\nq3,third\n")
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out), "--template", QUESTION], connection_env(server))

    assert result.exit_code == 1, result.stderr
    rows = read_jsonl(out)
    assert [(r["id"], r["status"]) for r in rows] == [("q1", "ok"), ("q2", "invalid"), ("q3", "ok")]
    assert "line 3" in rows[1]["error"] and "UTF-8" in rows[1]["error"], rows[1]["error"]
    assert sent(server) == {"Q: first", "Q: third"}


def test_csv_multiline_field_is_one_row_and_the_progress_total_agrees(
    runner: CliRunner, sim: Any, tmp_path: Path
) -> None:
    """The progress total and `unfinished` agree with the rows: a quoted multi-line field is one row."""
    server = sim()
    src = tmp_path / "in.csv"
    src.write_bytes(b'id,question\r\nq1,"two\r\nlines"\r\nq2,"three\nmore\nlines"\r\nq3,bad,extra\r\n')
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"

    assert count_rows(str(src)) == 3
    result = run(
        runner,
        [str(src), "-o", str(out), "--template", QUESTION, "--summary-json", str(summary)],
        connection_env(server),
    )

    assert result.exit_code == 1, result.stderr
    rows = read_jsonl(out)
    assert [r["status"] for r in rows] == ["ok", "ok", "invalid"]
    assert "line 7" in rows[2]["error"], rows[2]["error"]
    assert sent(server) == {"Q: two\r\nlines", "Q: three\nmore\nlines"}
    data = json.loads(summary.read_text())
    assert (data["rows"], data["unfinished"]) == (3, 0)


@pytest.mark.parametrize(
    ("content", "rows"),
    [
        (b"\xef\xbb\xbfid,question\r\nq1,one\r\nq2,two\r\n", [("q1", "one"), ("q2", "two")]),
        (b'"id","question"\rq1,one\rq2,"two\rlines"\r', [("q1", "one"), ("q2", "two\rlines")]),
        (b"id,question\n\nq1,one\n   \nq2,two", [("q1", "one"), ("q2", "two")]),
    ],
    ids=["bom-crlf", "cr-only", "blank-lines-no-final-newline"],
)
def test_csv_line_endings_and_bom_are_read_as_editors_show_them(
    runner: CliRunner, sim: Any, tmp_path: Path, content: bytes, rows: list[tuple[str, str]]
) -> None:
    """A BOM, CRLF or CR line endings and blank lines never change the rows an editor shows."""
    server = sim()
    src = tmp_path / "in.csv"
    src.write_bytes(content)
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out), "--template", QUESTION], connection_env(server))

    assert result.exit_code == 0, result.stderr
    assert [r["id"] for r in read_jsonl(out)] == [row_id for row_id, _ in rows]
    assert sent(server) == {f"Q: {text}" for _, text in rows}
    assert count_rows(str(src)) == len(rows)


def test_csv_header_only_is_an_empty_run(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    """A CSV with a header and no rows runs nothing and says so with rows=0 (not an error, not a traceback)."""
    server = sim()
    src = tmp_path / "in.csv"
    src.write_text("id,prompt\r\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out)], connection_env(server))

    assert result.exit_code == 0, result.stderr
    assert read_jsonl(out) == []
    assert server.stats.requests == 0


@pytest.mark.parametrize("command", ["run", "validate"])
def test_csv_duplicate_header_names_are_exit_2(runner: CliRunner, sim: Any, tmp_path: Path, command: str) -> None:
    """A header naming one column twice would silently drop a column: exit 2, nothing sent."""
    server = sim()
    src = tmp_path / "in.csv"
    src.write_text("id,prompt,prompt\nq1,a,b\n", encoding="utf-8")

    if command == "run":
        result = run(runner, [str(src), "-o", str(tmp_path / "out.jsonl")], connection_env(server))
    else:
        result = validate(runner, [str(src)])

    assert_exit_2_nothing_sent(result, server, "prompt", "twice")


def test_id_column_missing_from_the_header_is_exit_2(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    """An --id-column the CSV does not have would make every row invalid: exit 2 before anything is sent."""
    server = sim()
    src = tmp_path / "in.csv"
    src.write_text("id,prompt\nq1,hello\n", encoding="utf-8")

    result = run(runner, [str(src), "-o", str(tmp_path / "out.jsonl"), "--id-column", "key"], connection_env(server))

    assert_exit_2_nothing_sent(result, server, "key")


# ---- ids never collide (§8.30) ------------------------------------------------------------------------------------


def test_empty_id_is_invalid_and_never_collides_with_a_real_id(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    """Fallback ids never collide: an empty id in input with ids is invalid ("no id"), not position "3"."""
    server = sim()
    rows: list[Any] = [*chat_rows(3, prefix="")]  # ids "0", "1", "2"
    rows.append({"id": "", "messages": [{"role": "user", "content": "no id"}]})  # index 3
    rows.append({"id": "3", "messages": [{"role": "user", "content": "real three"}]})  # index 4
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out)], connection_env(server))

    assert result.exit_code == 1, result.stderr
    got = read_jsonl(out)
    assert [r["status"] for r in got] == ["ok", "ok", "ok", "invalid", "ok"]
    assert got[4]["id"] == "3"
    assert got[3]["id"] != "3" and "no id" in got[3]["error"] and "line 4" in got[3]["error"]
    assert "no id" not in sent(server)
    assert_unique_ids(got)


def test_missing_id_in_a_jsonl_with_ids_is_invalid_even_on_the_first_row(
    runner: CliRunner, sim: Any, tmp_path: Path
) -> None:
    """The position fallback applies only to input with no ids at all: the whole local file decides."""
    server = sim()
    rows: list[Any] = [{"messages": [{"role": "user", "content": "anonymous"}]}, *chat_rows(2, prefix="")]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out)], connection_env(server))

    assert result.exit_code == 1, result.stderr
    got = read_jsonl(out)
    assert [r["status"] for r in got] == ["invalid", "ok", "ok"]
    assert "no id" in got[0]["error"]
    assert "anonymous" not in sent(server)
    assert_unique_ids(got)


def test_unreadable_lines_are_named_by_position_and_never_duplicates(
    runner: CliRunner, sim: Any, tmp_path: Path
) -> None:
    """An invalid row whose id cannot be read is named by its position and takes no part in the duplicate check."""
    server = sim()
    lines: list[Any] = [
        {"id": "a", "messages": [{"role": "user", "content": "a"}]},
        '{"id": "1", "messages": [',  # index 1: bad JSON
        "[1, 2]",  # index 2: not an object
        {"id": "1", "messages": [{"role": "user", "content": "one"}]},
        {"id": "2", "messages": [{"role": "user", "content": "two"}]},
        {"id": "a", "messages": [{"role": "user", "content": "again"}]},  # duplicate of index 0
    ]
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out)], connection_env(server))

    assert result.exit_code == 1, result.stderr
    got = read_jsonl(out)
    assert [r["status"] for r in got] == ["ok", "invalid", "invalid", "ok", "ok", "invalid"]
    assert (got[3]["id"], got[4]["id"]) == ("1", "2")
    assert "duplicate" in got[5]["error"] and "'a'" in got[5]["error"]
    assert sent(server) == {"a", "one", "two"}
    assert_unique_ids(got)


def test_csv_empty_id_field_is_invalid(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    """A CSV with an id column: a row with an empty id is invalid ("no id") and collides with no real id."""
    server = sim()
    src = tmp_path / "in.csv"
    src.write_text("id,question\n0,zero\n,nobody\n1,one\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out), "--template", QUESTION], connection_env(server))

    assert result.exit_code == 1, result.stderr
    got = read_jsonl(out)
    assert [(r["status"]) for r in got] == ["ok", "invalid", "ok"]
    assert (got[0]["id"], got[2]["id"]) == ("0", "1")
    assert "no id" in got[1]["error"] and "line 3" in got[1]["error"]
    assert sent(server) == {"Q: zero", "Q: one"}
    assert_unique_ids(got)


def test_input_without_ids_keeps_position_ids(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    """Rule 4 stands for input with no ids at all: rows are named "0", "1", ... and bad lines too."""
    server = sim()
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}, "{bad", {"prompt": "c"}])
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out)], connection_env(server))

    assert result.exit_code == 1, result.stderr
    assert [(r["id"], r["status"]) for r in read_jsonl(out)] == [("0", "ok"), ("1", "invalid"), ("2", "ok")]


def test_stdin_with_ids_decides_from_the_first_row(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    """stdin cannot be read twice: its first row that parses decides that rows carry ids; later ones without are invalid."""
    server = sim()
    rows = ["{broken", {"id": "5", "prompt": "five"}, {"prompt": "anonymous"}, {"id": "1", "prompt": "one"}]
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    out = tmp_path / "out.jsonl"

    result = run(runner, ["-", "-o", str(out)], connection_env(server), input=text)

    assert result.exit_code == 1, result.stderr
    got = read_jsonl(out)
    assert [r["status"] for r in got] == ["invalid", "ok", "invalid", "ok"]
    assert (got[1]["id"], got[3]["id"]) == ("5", "1")
    assert "no id" in got[2]["error"]
    assert sent(server) == {"five", "one"}
    assert_unique_ids(got)


# ---- whole local inputs are checked before anything is sent (§8.32) ----------------------------------------------


def gz_rows(n: int) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as handle:
        for row in chat_rows(n):
            handle.write(json.dumps(row).encode() + b"\n")
    return buffer.getvalue()


def damaged(data: bytes, how: str) -> bytes:
    middle = len(data) // 2
    if how == "truncated":
        return data[:middle]
    return data[:middle] + bytes(b ^ 0x5A for b in data[middle : middle + 64]) + data[middle + 64 :]


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
@pytest.mark.parametrize("command", ["run", "validate"])
def test_damaged_gzip_is_exit_2_with_nothing_sent(
    runner: CliRunner, sim: Any, tmp_path: Path, how: str, command: str
) -> None:
    """A damaged compressed file is exit 2 with nothing sent: the whole file is read before the first request."""
    server = sim()
    src = tmp_path / "in.jsonl.gz"
    src.write_bytes(damaged(gz_rows(3000), how))
    out = tmp_path / "out.jsonl"

    if command == "run":
        result = run(runner, [str(src), "-o", str(out)], connection_env(server))
    else:
        result = validate(runner, [str(src)])

    assert_exit_2_nothing_sent(result, server, "in.jsonl.gz")
    assert "line" in result.stderr
    assert not out.exists()


def test_worker_skips_a_damaged_gzip_without_sending_it(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    """The worker reads through the same sources: a damaged input is logged and sends nothing; the others run."""
    server = sim()
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    (inbox / "bad.jsonl.gz").write_bytes(damaged(gz_rows(3000), "truncated"))
    write_jsonl(inbox / "good.jsonl", chat_rows(4, prefix="g"))

    result = invoke(
        runner, ["worker", "--inbox", str(inbox), "--outbox", str(outbox), "--once"], env=connection_env(server)
    )

    assert "Traceback" not in result.output
    assert [p.name for p in outbox.glob("*.done.json")] == [p.name for p in outbox.glob("good*.done.json")] != []
    assert server.stats.requests == 4
    assert "bad.jsonl.gz" in result.stderr


def test_worker_runs_hostile_csv_and_parquet_like_run(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    """The worker reads through the same sources: bad CSV rows are invalid rows, hostile Parquet values run."""
    server = sim()
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    (inbox / "a.csv").write_bytes(b'id,prompt\r\nq1,one\r\nq2,"open\r\nq3,caf\xe9\r\nq4,four,extra\r\nq5,five\r\n')
    pq.write_table(
        hostile_table().rename_columns(["id", "prompt", *hostile_table().column_names[2:]]), inbox / "b.parquet"
    )

    result = invoke(
        runner,
        ["worker", "--inbox", str(inbox), "--outbox", str(outbox), "--once", "--keep-columns", "prompt"],
        env=connection_env(server),
    )

    assert "Traceback" not in result.output
    [csv_out] = outbox.glob("a*.results.jsonl")
    [parquet_out] = outbox.glob("b*.results.jsonl")
    assert [(r["id"], r["status"]) for r in read_jsonl(csv_out)] == [
        ("q1", "ok"),
        ("q2", "invalid"),
        ("q3", "invalid"),
        ("q4", "invalid"),
        ("q5", "ok"),
    ]
    assert [r["status"] for r in read_jsonl(parquet_out)] == ["ok", "ok"]
    assert sent(server) == {"one", "five", "first", "second"}


class _BreaksAfter(io.RawIOBase):
    """A pipe that delivers ``data`` and then fails with EIO, as a dropped stdin would."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._pos >= len(self._data):
            raise OSError(errno.EIO, "Input/output error")
        n = min(len(buffer), len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def test_stdin_read_error_part_way_is_exit_2_naming_the_line(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    """Damage found part-way in a stream that cannot be read twice stops with exit 2, names the line and writes
    the rows done so far (none of them from beyond the damage)."""
    server = sim()
    rows = chat_rows(600)
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    out = tmp_path / "out.jsonl"

    result = run(runner, ["-", "-o", str(out)], connection_env(server), input=io.BufferedReader(_BreaksAfter(data)))

    assert result.exit_code == 2, result.output
    assert "line 600" in result.stderr, result.stderr
    got = read_jsonl(out)
    # Every row read before the damage is sent and written, those of the last batch read included:
    # a rerun hits the same damage at the same place, so a row left behind here would never be sent.
    assert [r["id"] for r in got] == [r["id"] for r in rows]
    assert {r["status"] for r in got} == {"ok"}


# ---- Parquet with hostile column types ---------------------------------------------------------------------------


def hostile_table() -> pa.Table:
    struct = pa.struct([("name", pa.string()), ("score", pa.float64()), ("note", pa.string())])
    return pa.table(
        {
            "id": ["a", "b"],
            "question": ["first", "second"],
            "price": pa.array([Decimal("12.300"), Decimal("-0.001")], pa.decimal128(10, 3)),
            "huge": pa.array([Decimal("1" * 40), None], pa.decimal256(45, 0)),
            "blob": pa.array([b"caf\xc3\xa9", b"\xff\xfe\x00"], pa.binary()),
            "when": pa.array([1_700_000_000_123_456_789, 0], pa.timestamp("ns", tz="UTC")),
            "gone": pa.array([None, 0], pa.timestamp("ns")),
            "day": pa.array([date(2024, 2, 29), date(1970, 1, 1)], pa.date32()),
            "at": pa.array([time(12, 30), time(0, 0, 0, 5)], pa.time64("us")),
            "span": pa.array([1500, -2], pa.duration("ms")),
            "big": pa.array([2**64 - 1, 7], pa.uint64()),
            "meta": pa.array([{"name": "x", "score": 0.5, "note": None}, {}], struct),
            "tags": pa.array([[("k", 1)], []], pa.map_(pa.string(), pa.int64())),
            "amounts": pa.array([[Decimal("1.50")], None], pa.list_(pa.decimal128(5, 2))),
        }
    )


B64 = base64.b64encode(b"\xff\xfe\x00").decode()
KEPT = "price,huge,blob,when,gone,day,at,span,big,meta,tags,amounts"


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_parquet_hostile_columns_run_with_keep_columns(runner: CliRunner, sim: Any, tmp_path: Path, ext: str) -> None:
    """Decimals, bytes, dates, times, durations, nested nulls, maps and 64-bit unsigned ints never crash a run:
    they fill templates and kept columns as JSON-friendly values (documented in sources.py).

    (A null in a template column is the template's "missing column", as before: Parquet nulls mean absent.)"""
    server = sim()
    src = tmp_path / "in.parquet"
    pq.write_table(hostile_table(), src)
    out = tmp_path / f"out.{ext}"
    template = "{question} {price} {blob} {when} {day} {at} {span} {big} {meta}"

    result = run(
        runner, [str(src), "-o", str(out), "--template", template, "--keep-columns", KEPT], connection_env(server)
    )

    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out) if ext == "jsonl" else pq.read_table(out).to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok"]
    first, second = rows
    if ext == "parquet":  # kept columns of mixed or nested values are JSON text in Parquet output
        for row in rows:
            for name in ("meta", "tags", "amounts"):
                row[name] = json.loads(row[name]) if row[name] is not None else None
    assert first["price"] == "12.300" and second["price"] == "-0.001"
    assert first["huge"] == "1" * 40 and second["huge"] is None
    assert first["blob"] == "café" and second["blob"] == B64
    assert first["when"] == "2023-11-14T22:13:20.123456+00:00" and second["when"] == "1970-01-01T00:00:00+00:00"
    assert first["gone"] is None and second["gone"] == "1970-01-01T00:00:00"
    assert (first["day"], first["at"], first["span"]) == ("2024-02-29", "12:30:00", "PT1.5S")
    assert (second["at"], second["span"]) == ("00:00:00.000005", "-PT0.002S")
    assert str(first["big"]) == str(2**64 - 1)
    assert first["meta"] == {"name": "x", "score": 0.5} and second["meta"] == {}
    assert first["tags"] == {"k": 1}
    assert first["amounts"] == ["1.50"] and second["amounts"] is None
    assert sent(server) == {
        "first 12.300 café 2023-11-14T22:13:20.123456+00:00 2024-02-29 12:30:00 PT1.5S 18446744073709551615 "
        '{"name": "x", "score": 0.5}',
        f"second -0.001 {B64} 1970-01-01T00:00:00+00:00 1970-01-01 00:00:00.000005 -PT0.002S 7 {{}}",
    }


def test_parquet_hostile_columns_with_simulate_to_both_outputs(runner: CliRunner, tmp_path: Path) -> None:
    """--simulate end to end, JSONL and Parquet outputs: hostile kept columns are written, never a traceback."""
    src = tmp_path / "in.parquet"
    pq.write_table(hostile_table(), src)
    for ext in ("jsonl", "parquet"):
        out = tmp_path / f"out.{ext}"
        result = run(
            runner, [str(src), "-o", str(out), "--simulate", "--template", "{question} {meta}", "--keep-columns", KEPT]
        )
        assert result.exit_code == 0, result.stderr
        assert out.exists()


def test_parquet_value_that_cannot_be_read_makes_only_its_row_invalid(
    runner: CliRunner, sim: Any, tmp_path: Path
) -> None:
    """A Parquet value Python cannot hold (a timestamp past year 9999) makes only its row invalid, naming row and column."""
    server = sim()
    src = tmp_path / "in.parquet"
    table = pa.table(
        {
            "id": ["a", "b", "c"],
            "prompt": ["one", "two", "three"],
            "when": pa.array([0, 10**15, 0], pa.timestamp("ms")),
        }
    )
    pq.write_table(table, src)
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out), "--keep-columns", "when"], connection_env(server))

    assert result.exit_code == 1, result.stderr
    got = read_jsonl(out)
    assert [(r["id"], r["status"]) for r in got] == [("a", "ok"), ("b", "invalid"), ("c", "ok")]
    assert "row 2" in got[1]["error"] and "when" in got[1]["error"], got[1]["error"]
    assert got[0]["when"] == "1970-01-01T00:00:00"
    assert sent(server) == {"one", "three"}


@pytest.mark.parametrize("command", ["run", "validate"])
def test_parquet_duplicate_column_names_are_exit_2(runner: CliRunner, sim: Any, tmp_path: Path, command: str) -> None:
    """A Parquet file with two columns of one name would lose one silently: exit 2, nothing sent."""
    server = sim()
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["prompt", "prompt"]), src)

    if command == "run":
        result = run(runner, [str(src), "-o", str(tmp_path / "out.jsonl")], connection_env(server))
    else:
        result = validate(runner, [str(src)])

    assert_exit_2_nothing_sent(result, server, "prompt", "twice")


def test_parquet_null_id_is_invalid(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    """A Parquet id column with a null is input with ids: that row is invalid ("no id"), never position "1"."""
    server = sim()
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["0", None, "1"], "prompt": ["zero", "nobody", "one"]}), src)
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out)], connection_env(server))

    assert result.exit_code == 1, result.stderr
    got = read_jsonl(out)
    assert [(r["status"]) for r in got] == ["ok", "invalid", "ok"]
    assert (got[0]["id"], got[2]["id"]) == ("0", "1")
    assert "no id" in got[1]["error"] and "row 2" in got[1]["error"]
    assert_unique_ids(got)


# ---- JSONL siblings -------------------------------------------------------------------------------------------------


def test_jsonl_odd_lines_are_invalid_rows_and_a_bom_on_a_later_line_is_ignored(
    runner: CliRunner, sim: Any, tmp_path: Path
) -> None:
    """A line that is `null`, a huge number or infinite is an invalid row naming its line; a byte-order mark at
    the start of a later line (files joined with cat) is not content, and its row runs."""
    server = sim()
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        b'{"id": "a", "prompt": "first"}\n'
        b"null\n"
        b"123456789012345678901234567890\n"
        b"1e400\n"
        b'\xef\xbb\xbf{"id": "b", "prompt": "after a bom"}\n'
        b'{"id": "c", "prompt": "big", "n": 18446744073709551615}\n'
    )
    out = tmp_path / "out.parquet"

    result = run(runner, [str(src), "-o", str(out), "--keep-columns", "n"], connection_env(server))

    assert result.exit_code == 1, result.stderr
    got = pq.read_table(out).to_pylist()
    assert [r["status"] for r in got] == ["ok", "invalid", "invalid", "invalid", "ok", "ok"]
    for row, line in zip(got[1:4], (2, 3, 4), strict=True):
        assert f"line {line}" in row["error"], row["error"]
    assert "got null" in got[1]["error"]
    assert str(got[5]["n"]) == "18446744073709551615"
    assert sent(server) == {"first", "after a bom", "big"}
    assert_unique_ids(got)


def test_read_rows_and_count_rows_agree_on_hostile_csv(tmp_path: Path) -> None:
    """The progress total is the number of rows `run` reads, whatever the CSV holds."""
    src = tmp_path / "in.csv"
    src.write_bytes(b'id,question\r\nq1,"multi\r\nline"\r\n\r\nq2,"oops\r\nq3,caf\xe9\r\nq4,a,b\r\nq5\r\nq6,"x""y"\r\n')
    rows = list(read_rows(str(src)))
    assert count_rows(str(src)) == len(rows) == 6
    assert [r.line for r in rows] == [2, 5, 6, 7, 8, 9]
    assert [r.error is None for r in rows] == [True, False, False, False, False, True]
    assert rows[5].data == {"id": "q6", "question": 'x"y'}
