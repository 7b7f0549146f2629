"""Read an input file as a stream of ``Row``s, one at a time, whatever its format.

JSONL (``.jsonl``, ``.ndjson``, ``.jsonl.gz``, ``-`` for stdin) is read line by
line so a bad line becomes a row carrying its parse error instead of ending
the run; Parquet is read in record batches; CSV record by record. Memory does
not grow with the number of rows. Only a file that cannot be read at all
raises ``InputError``; a bad row is a ``Row`` with ``error`` set. A UTF-8
byte-order mark at the start of any JSONL line (files joined with ``cat``) is
not content.

Line numbers are physical lines as an editor shows them, 1-based, blank lines
included; Parquet rows are numbered 1, 2, ... (SPEC §8.4).

**CSV is read strictly (RFC 4180, SPEC §8.29).** The first non-blank record is
the header; its names must be unique. A record is one line, or several when a
quoted field holds line breaks; ``\\r\\n``, ``\\n`` and a lone ``\\r`` all end a
line. Each record is decoded on its own, so a non-UTF-8 byte spoils only its
own row. A row with fewer or more fields than the header, or with text after a
closing quote, is an error row: never padded, never shifted. A quote inside an
unquoted field is kept as text (as Excel and Python's csv do). An
*unterminated quote* would swallow the rest of the file into one field, so a
quoted field that spans lines must close, and its record must parse cleanly,
within ``MAX_QUOTED_BYTES``; otherwise only the line it started on is an
error row and reading starts again on the next line, each line a row of its
own. An error row keeps the fields that are surely in their column and decode
(those before the problem; only the first field when the count is wrong) so it
can still be named by its id.

**Parquet values become JSON values** so templates, kept columns and both
output formats take every row:

- a decimal becomes its exact text (``Decimal("12.30")`` → ``"12.30"``);
- bytes become the text they encode in UTF-8, else their standard base64;
- timestamps, dates and times become ISO 8601 text (``isoformat()``), to the
  microsecond: nanoseconds are cut, as Python's datetime holds no finer;
- a duration becomes ISO 8601 seconds (``"PT1.5S"``, ``"-PT0.002S"``);
- an integer outside the signed 64-bit range becomes its decimal text;
- a map becomes an object (keys as text); a null column or struct field is
  absent (a null means "not set", so ``--param`` still applies);
- anything else becomes ``str(value)``.

A value Python cannot hold at all (a timestamp past year 9999) makes only its
row an error row.

**Local inputs are read whole before anything is sent** (SPEC §8.32) by
``survey``, which the progress total needs anyway: a damaged ``.gz`` or
Parquet file is ``InputError`` then, and the same read finds whether a JSONL
file's rows carry ids (SPEC §8.30). stdin and ``s3://`` are read once, so
damage found part-way in them ends the run, naming the line.
"""

from __future__ import annotations

import base64
import datetime
import functools
import gzip
import os
import re
import sys
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, Any

import orjson

from inferbatch.errors import InputError

FORMATS = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".parquet", ".csv")
PARQUET_BATCH_ROWS = 1024
READ_CHUNK = 1 << 16
MAX_QUOTED_BYTES = 16 << 20  # far beyond any model's context; an open quote past it is taken as unterminated
ID_COLUMNS = ("custom_id", "id")
_BOM = b"\xef\xbb\xbf"
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_JSON_TYPES = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean"}


@dataclass(slots=True)
class Row:
    """One input row: ``index`` is its 0-based position, ``line`` the 1-based line/row an editor shows.

    A row that could not be read has ``error``; its ``data`` is then None, or the columns that could be
    read for sure (a bad CSV record), so the row can still be named by its id.
    """

    index: int
    line: int
    data: dict[str, Any] | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Survey:
    """What one whole read of a local input found before anything is sent.

    ``ids``: the input names its rows (a JSONL row with a ``custom_id``/``id`` key, or such a CSV/Parquet column).
    """

    rows: int
    ids: bool


def input_format(uri: str) -> str:
    if uri == "-":
        return ".jsonl"
    lower = uri.lower()
    for ext in sorted(FORMATS, key=len, reverse=True):
        if lower.endswith(ext):
            return ext
    raise InputError(f"{uri}: unsupported input type (use one of {', '.join(FORMATS)}, or - for JSONL on stdin)")


def open_binary(uri: str) -> IO[bytes]:
    """Open a local path or an ``s3://`` URI for reading bytes."""
    if uri.startswith("s3://"):
        from inferbatch.storage import open_input_stream

        return open_input_stream(uri)
    try:
        return open(uri, "rb")
    except FileNotFoundError:
        raise InputError(f"{uri}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{uri}: is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"{uri}: cannot open ({exc.strerror})") from None


def read_rows(uri: str) -> Iterator[Row]:
    """Yield every row of ``uri``; the format follows the extension."""
    fmt = input_format(uri)
    if fmt == ".parquet":
        return _parquet_rows(uri)
    if fmt == ".csv":
        return _csv_rows(uri)
    return _jsonl_rows(uri, gz=fmt.endswith(".gz"))


def column_names(uri: str) -> list[str] | None:
    """The columns every row has, for formats that declare them (Parquet schema, CSV header); checked unique."""
    fmt = input_format(uri)
    if fmt == ".parquet":
        names = list(_parquet_file(uri).schema_arrow.names)
        _check_unique(uri, names, "the Parquet schema")
        return names
    if fmt == ".csv":
        with open_binary(uri) as binary:
            return _csv_header(uri, _csv_records(binary))
    return None


def survey(uri: str) -> Survey | None:
    """Read a local input whole, as ``read_rows`` will, without parsing its rows; None for stdin and ``s3://``.

    Raises ``InputError`` for damage a whole read finds (a cut-short or corrupt ``.gz``, a Parquet page that
    does not decode, a read error, a bad CSV header). One read serves the progress total, the check and the
    id decision: the answer is kept for as long as the file's size and modification time stay the same.
    """
    if uri == "-" or uri.startswith("s3://"):
        return None
    fmt = input_format(uri)
    try:
        stat = os.stat(uri)
    except FileNotFoundError:
        raise InputError(f"{uri}: no such file") from None
    except OSError as exc:
        raise InputError(f"{uri}: cannot open ({exc.strerror})") from None
    return _survey(uri, fmt, (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns))


def input_has_ids(uri: str, id_column: str | None) -> bool | None:
    """Whether rows are named by id (SPEC §8.30); None when only the rows can tell (JSONL on stdin or S3)."""
    if id_column:
        return True
    columns = column_names(uri)
    if columns is not None:
        return any(c in columns for c in ID_COLUMNS)
    found = survey(uri)
    return found.ids if found is not None else None


def count_rows(uri: str) -> int | None:
    """The number of rows when it is cheap to know (Parquet metadata, a local file's survey)."""
    try:
        if uri.startswith("s3://"):
            return _parquet_file(uri).metadata.num_rows if input_format(uri) == ".parquet" else None
        found = survey(uri)
        return found.rows if found is not None else None
    except (OSError, InputError):
        return None


@functools.lru_cache(maxsize=4)
def _survey(uri: str, fmt: str, identity: tuple[int, ...]) -> Survey:
    """``identity`` (device, inode, size, modification time) only keys the cache: a changed file is read again."""
    if fmt == ".parquet":
        return _survey_parquet(uri)
    with open_binary(uri) as binary:
        if fmt == ".csv":
            records = _csv_records(binary)
            header = _csv_header(uri, records)
            try:
                rows = sum(1 for _, raw, _ in records if not raw.isspace())
            except OSError as exc:
                raise InputError(f"{uri}: read failed ({_short(str(exc))})") from None
            return Survey(rows, any(c in header for c in ID_COLUMNS))
        handle: IO[bytes] = gzip.GzipFile(fileobj=binary) if fmt.endswith(".gz") else binary  # type: ignore[assignment]
        return _survey_jsonl(uri, handle)


def _survey_jsonl(uri: str, handle: IO[bytes]) -> Survey:
    rows = line_no = 0
    ids = False
    try:
        for raw in handle:
            line_no += 1
            if raw.isspace():
                continue
            rows += 1
            if not ids and b'id"' in raw:  # a cheap filter: only such lines can have a custom_id/id key
                ids = _has_id_key(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise _read_failed(uri, line_no, exc) from None
    return Survey(rows, ids)


def _has_id_key(raw: bytes) -> bool:
    try:
        data = orjson.loads(raw[3:] if raw.startswith(_BOM) else raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and any(c in data for c in ID_COLUMNS)


def _read_failed(uri: str, line_no: int, exc: BaseException) -> InputError:
    name = "stdin" if uri == "-" else uri
    what = "compressed data damaged or cut short" if uri.lower().endswith(".gz") else "read failed"
    return InputError(f"{name}: {what} after line {line_no} ({_short(str(exc)) or type(exc).__name__})")


# ---- JSONL --------------------------------------------------------------------------------------------------------


def _jsonl_rows(uri: str, *, gz: bool) -> Iterator[Row]:
    handle: IO[bytes] = sys.stdin.buffer if uri == "-" else open_binary(uri)
    if gz:
        handle = gzip.GzipFile(fileobj=handle)  # type: ignore[assignment]
    index = 0
    try:
        line_no = 0
        while True:
            try:
                raw = handle.readline()
            except (OSError, EOFError, zlib.error) as exc:
                raise _read_failed(uri, line_no, exc) from None
            if not raw:
                break
            line_no += 1
            if raw.isspace():
                continue
            yield _parse_json_line(raw, index, line_no)
            index += 1
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()


def _parse_json_line(raw: bytes, index: int, line_no: int) -> Row:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if raw.startswith(_BOM):  # a byte-order mark starts the line: files joined with `cat`, or line 1
            return _parse_json_line(raw[3:], index, line_no)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return Row(index, line_no, None, f"line {line_no}: not UTF-8 (byte {uexc.start + 1})")
        reason = re.sub(r":? ?line \d+ column (\d+) \(char \d+\)", r" at column \1", str(exc))
        return Row(index, line_no, None, f"line {line_no}: invalid JSON ({_short(reason)})")
    if not isinstance(data, dict):
        kind = "null" if data is None else _JSON_TYPES.get(type(data), type(data).__name__)
        return Row(index, line_no, None, f"line {line_no}: expected a JSON object, got {kind}")
    return Row(index, line_no, data)


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- Parquet ------------------------------------------------------------------------------------------------------


def _parquet_file(uri: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if uri.startswith("s3://"):
        from inferbatch.storage import open_input_file

        source: Any = open_input_file(uri)
    else:
        source = uri
    try:
        return pq.ParquetFile(source)
    except FileNotFoundError:
        raise InputError(f"{uri}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{uri}: is a directory, not a file") from None
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise InputError(f"{uri}: not a readable Parquet file ({_short(str(exc))})") from None


def _survey_parquet(uri: str) -> Survey:
    """Decode every page (in C++, no Python values) so a damaged file stops the run before it starts."""
    import pyarrow as pa

    parquet = _parquet_file(uri)
    names = list(parquet.schema_arrow.names)
    _check_unique(uri, names, "the Parquet schema")
    done = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            done += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{uri}: Parquet data damaged after row {done} ({_short(str(exc))})") from None
    return Survey(parquet.metadata.num_rows, any(c in names for c in ID_COLUMNS))


def _parquet_rows(uri: str) -> Iterator[Row]:
    import pyarrow as pa

    parquet = _parquet_file(uri)
    schema = parquet.schema_arrow
    _check_unique(uri, list(schema.names), "the Parquet schema")
    readable = _microsecond_schema(schema)
    index = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            if readable is not None:
                batch = pa.RecordBatch.from_arrays(
                    [
                        column.cast(field.type, safe=False)
                        for column, field in zip(batch.columns, readable, strict=True)
                    ],
                    schema=readable,
                )
            try:
                records = batch.to_pylist()
            except (ValueError, OverflowError, TypeError, pa.ArrowException):
                records = None
            for offset in range(batch.num_rows):
                if records is None:
                    yield _parquet_row_alone(batch, offset, index)
                else:
                    yield Row(index, index + 1, {k: _plain(v) for k, v in records[offset].items() if v is not None})
                index += 1
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{uri}: Parquet read failed at row {index + 1} ({_short(str(exc))})") from None


def _parquet_row_alone(batch: Any, offset: int, index: int) -> Row:
    """A row of a batch that Python could not take whole: value by value, so only a bad value's row is invalid."""
    import pyarrow as pa

    data: dict[str, Any] = {}
    problem = None
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        try:
            value = column[offset].as_py()
        except (ValueError, OverflowError, TypeError, pa.ArrowException) as exc:
            problem = (
                problem or f"row {index + 1}: column {name!r} holds a value that cannot be read ({_short(str(exc))})"
            )
            continue
        if value is not None:
            data[name] = _plain(value)
    return Row(index, index + 1, data, problem)


def _microsecond_schema(schema: Any) -> Any:
    """``schema`` with nanosecond timestamps, times and durations in microseconds (Python's finest), or None."""
    import pyarrow as pa

    fields = [field.with_type(_microseconds(field.type)) for field in schema]
    target = pa.schema(fields, metadata=schema.metadata)
    return None if target.equals(schema) else target


def _microseconds(typ: Any) -> Any:
    import pyarrow as pa

    kinds = pa.types
    if getattr(typ, "unit", None) == "ns":
        if kinds.is_timestamp(typ):
            return pa.timestamp("us", typ.tz)
        if kinds.is_time64(typ):
            return pa.time64("us")
        if kinds.is_duration(typ):
            return pa.duration("us")
    if kinds.is_struct(typ):
        return pa.struct([typ.field(i).with_type(_microseconds(typ.field(i).type)) for i in range(typ.num_fields)])
    if kinds.is_map(typ):
        return pa.map_(
            typ.key_field.with_type(_microseconds(typ.key_type)), typ.item_field.with_type(_microseconds(typ.item_type))
        )
    if kinds.is_list(typ) or kinds.is_large_list(typ) or kinds.is_fixed_size_list(typ):
        item = typ.value_field.with_type(_microseconds(typ.value_type))
        if kinds.is_large_list(typ):
            return pa.large_list(item)
        return pa.list_(item, typ.list_size) if kinds.is_fixed_size_list(typ) else pa.list_(item)
    if kinds.is_dictionary(typ):
        inner = _microseconds(typ.value_type)
        return typ if inner.equals(typ.value_type) else inner
    return typ


def _plain(value: Any) -> Any:
    """A JSON value for a Parquet value, by the rules in the module docstring."""
    kind = type(value)
    if kind is str or kind is float or kind is bool or value is None:
        return value
    if kind is int:
        return value if _INT64_MIN <= value <= _INT64_MAX else str(value)
    if kind is dict:
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if kind is list:
        if value and type(value[0]) is tuple:  # an Arrow map: [(key, value), ...]
            return {(k if type(k) is str else str(_plain(k))): _plain(v) for k, v in value}
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        micro = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
        seconds = Decimal(abs(micro)).scaleb(-6).normalize()
        return f"{'-' if micro < 0 else ''}PT{seconds:f}S"
    return str(value)


def _check_unique(uri: str, names: list[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            shown = repr(name) if name else "an unnamed column"
            raise InputError(f"{uri}: column {shown} appears twice in {where}; rename one")
        seen.add(name)


# ---- CSV ----------------------------------------------------------------------------------------------------------


def _csv_rows(uri: str) -> Iterator[Row]:
    binary = open_binary(uri)
    line = 0
    try:
        records = _csv_records(binary)
        header = _csv_header(uri, records)
        index = 0
        for line, raw, problem in records:
            if raw.isspace():
                continue  # a blank line is not a row
            yield _csv_row(header, index, line, raw, problem)
            index += 1
    except OSError as exc:
        raise InputError(f"{uri}: read failed after line {line} ({_short(str(exc))})") from None
    finally:
        binary.close()


def _csv_header(uri: str, records: Iterator[tuple[int, bytes, str | None]]) -> list[str]:
    """Take the header from ``records`` (the first non-blank one); InputError if it is not a clean, unique one."""
    try:
        for line, raw, problem in records:
            if raw.isspace():
                continue
            try:
                text = raw.rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{uri}: the header (line {line}) is not UTF-8 text (byte {exc.start + 1})") from None
            names, quoting = _split_fields(text)
            if problem or quoting:
                raise InputError(f"{uri}: the header (line {line}) is not readable CSV ({quoting or problem})")
            _check_unique(uri, names, f"the header (line {line})")
            return names
    except OSError as exc:
        raise InputError(f"{uri}: read failed ({_short(str(exc))})") from None
    raise InputError(f"{uri}: empty CSV file, no header row")


def _csv_row(header: list[str], index: int, line: int, raw: bytes, problem: str | None) -> Row:
    body = raw.rstrip(b"\r\n")
    bad_byte = None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        text, bad_byte = body.decode("utf-8", "surrogateescape"), exc.start + 1
    fields, quoting = _split_fields(text)
    where = f"line {line}"
    if problem is not None:
        reason = f"{where}: {quoting or problem}; the lines after it are read as rows of their own"
        return Row(index, line, _sure_fields(header, fields), reason)
    if quoting is not None:
        return Row(index, line, _sure_fields(header, fields), f"{where}: bad CSV quoting ({quoting})")
    if len(fields) != len(header):
        reason = f"{where}: {len(fields)} field{'s' if len(fields) != 1 else ''}, the header has {len(header)}"
        return Row(index, line, _sure_fields(header, fields[:1]), reason)
    if bad_byte is not None:
        return Row(index, line, _sure_fields(header, fields), f"{where}: not UTF-8 (byte {bad_byte})")
    return Row(index, line, dict(zip(header, fields, strict=False)))


def _sure_fields(header: list[str], fields: list[str]) -> dict[str, str]:
    """Of a bad record's fields, given only those surely in their column, the ones that are text (UTF-8)."""
    return {name: value for name, value in zip(header, fields, strict=False) if not _UNDECODED.search(value)}


_UNDECODED = re.compile("[\udc80-\udcff]")


def _split_fields(text: str) -> tuple[list[str], str | None]:
    """The RFC 4180 fields of one record, and the quoting problem that stopped it (fields before it kept)."""
    if '"' not in text:
        return text.split(","), None
    fields: list[str] = []
    pos, end = 0, len(text)
    while True:
        if not text.startswith('"', pos):
            comma = text.find(",", pos)
            if comma < 0:
                fields.append(text[pos:])
                return fields, None
            fields.append(text[pos:comma])
            pos = comma + 1
            continue
        parts = []
        start = pos + 1
        while True:
            close = text.find('"', start)
            if close < 0:
                return fields, f"unterminated quote in field {len(fields) + 1}"
            parts.append(text[start:close])
            if not text.startswith('"', close + 1):
                break
            parts.append('"')
            start = close + 2
        pos = close + 1
        if pos < end and text[pos] != ",":
            return fields, f"text after the closing quote of field {len(fields) + 1}"
        fields.append("".join(parts))
        if pos == end:
            return fields, None
        pos += 1


def _csv_records(binary: IO[bytes]) -> Iterator[tuple[int, bytes, str | None]]:
    """``(first line, bytes, problem)`` for every record, blank ones included, header first.

    A record whose quoted field stays open past its line takes the next lines until the quote closes. If it
    never closes, runs past ``MAX_QUOTED_BYTES``, or the joined record does not parse, the record is only its
    first line, with the problem "unterminated quote", and the lines it took are read again.
    """
    lines = _Lines(binary)
    while (item := lines.next()) is not None:
        start, first = item
        if not _quote_open_at_end(first, False):
            yield start, first, None
            continue
        taken = [item]
        size = len(first)
        closed = False
        while (item := lines.next()) is not None:
            taken.append(item)
            size += len(item[1])
            if size > MAX_QUOTED_BYTES:
                break
            if not _quote_open_at_end(item[1], True):
                closed = True
                break
        if closed:
            record = b"".join(part for _, part in taken)
            if _split_fields(record.rstrip(b"\r\n").decode("utf-8", "surrogateescape"))[1] is None:
                yield start, record, None
                continue
        yield start, first, "unterminated quote"
        lines.push_back(taken[1:])


def _quote_open_at_end(line: bytes, quoted: bool) -> bool:
    """Whether a quoted field is still open at the end of ``line``; ``quoted``: the line starts inside one.

    RFC 4180: a quote opens a field only as its first character, ``""`` inside is a quote, and a quote
    closes it; what follows a closing quote up to the next comma is not scanned for quotes.
    """
    if not quoted and b'"' not in line:
        return False
    pos = 0
    while True:
        if quoted:
            close = line.find(b'"', pos)
            if close < 0:
                return True
            if line.startswith(b'"', close + 1):
                pos = close + 2
                continue
            quoted = False
            comma = line.find(b",", close + 1)
            if comma < 0:
                return False
            pos = comma + 1
        elif line.startswith(b'"', pos):
            quoted = True
            pos += 1
        else:
            comma = line.find(b",", pos)
            if comma < 0:
                return False
            pos = comma + 1


class _Lines:
    """Physical lines numbered from 1, with push-back: the lines an unterminated quote took are read again."""

    def __init__(self, binary: IO[bytes]) -> None:
        self._source = _physical_lines(binary)
        self._back: deque[tuple[int, bytes]] = deque()
        self._number = 0

    def next(self) -> tuple[int, bytes] | None:
        if self._back:
            return self._back.popleft()
        line = next(self._source, None)
        if line is None:
            return None
        self._number += 1
        return self._number, line

    def push_back(self, items: Iterable[tuple[int, bytes]]) -> None:
        self._back.extendleft(reversed(list(items)))


def _physical_lines(binary: IO[bytes]) -> Iterator[bytes]:
    """Lines with their endings (``\\r\\n``, ``\\n`` or a lone ``\\r``), a leading byte-order mark dropped."""
    parts: list[bytes] = []
    first = True
    while chunk := binary.read(READ_CHUNK):
        if first:
            first = False
            if chunk.startswith(_BOM):
                chunk = chunk[3:]
        if b"\n" not in chunk and b"\r" not in chunk:
            parts.append(chunk)  # a long line: joined once it ends, not copied chunk by chunk
            continue
        if parts:
            parts.append(chunk)
            chunk = b"".join(parts)
            parts = []
        lines = chunk.splitlines(keepends=True)
        if not lines[-1].endswith(b"\n"):
            parts.append(lines.pop())  # unfinished, or a \r whose \n may open the next chunk
        yield from lines
    if parts:
        yield from b"".join(parts).splitlines(keepends=True)
