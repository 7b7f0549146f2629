"""Read an input file as a stream of ``Row``s, one at a time, whatever its format.

JSONL (``.jsonl``, ``.ndjson``, ``.jsonl.gz``, ``-`` for stdin) is read line by
line so a bad line becomes a row carrying its parse error instead of ending
the run; Parquet is read in record batches; CSV through the csv module.
Memory does not grow with the number of rows. Only a file that cannot be
read at all raises ``InputError``.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

from inferbatch.errors import InputError

FORMATS = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".parquet", ".csv")
PARQUET_BATCH_ROWS = 1024


@dataclass(slots=True)
class Row:
    """One input row: ``index`` is its 0-based position, ``line`` the 1-based line/row an editor shows."""

    index: int
    line: int
    data: dict[str, Any] | None
    error: str | None = None


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
    """The columns every row has, for formats that declare them (Parquet schema, CSV header)."""
    fmt = input_format(uri)
    if fmt == ".parquet":
        return list(_parquet_file(uri).schema_arrow.names)
    if fmt == ".csv":
        with open_binary(uri) as binary:
            text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
            try:
                return next(csv.reader(text), None)
            except (UnicodeDecodeError, csv.Error) as exc:
                raise InputError(f"{uri}: not readable as CSV ({exc})") from None
    return None


def count_rows(uri: str) -> int | None:
    """The number of rows when it is cheap to know (Parquet metadata, a local JSONL/CSV line count)."""
    try:
        fmt = input_format(uri)
        if uri == "-" or uri.startswith("s3://") or fmt.endswith(".gz"):
            if fmt == ".parquet" and uri.startswith("s3://"):
                return _parquet_file(uri).metadata.num_rows
            return None
        if fmt == ".parquet":
            return _parquet_file(uri).metadata.num_rows
        count = 0
        with open(uri, "rb") as handle:
            for line in handle:
                if line.strip():
                    count += 1
        return count - 1 if fmt == ".csv" and count else count
    except (OSError, InputError):
        return None


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
            except (OSError, EOFError) as exc:
                raise InputError(f"{uri}: read failed after line {line_no} ({exc})") from None
            if not raw:
                break
            line_no += 1
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark, as some editors write
            if not raw.strip():
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
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return Row(index, line_no, None, f"line {line_no}: not UTF-8 (byte {uexc.start + 1})")
        reason = re.sub(r":? ?line \d+ column (\d+) \(char \d+\)", r" at column \1", str(exc))
        return Row(index, line_no, None, f"line {line_no}: invalid JSON ({_short(reason)})")
    if not isinstance(data, dict):
        return Row(index, line_no, None, f"line {line_no}: expected a JSON object, got {type(data).__name__}")
    return Row(index, line_no, data)


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise InputError(f"{uri}: not a readable Parquet file ({_short(str(exc))})") from None


def _parquet_rows(uri: str) -> Iterator[Row]:
    import pyarrow as pa

    parquet = _parquet_file(uri)
    index = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for record in batch.to_pylist():
                yield Row(index, index + 1, _drop_nulls(record))
                index += 1
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{uri}: Parquet read failed at row {index + 1} ({_short(str(exc))})") from None


def _drop_nulls(value: Any) -> Any:
    """Parquet gives every struct field to every row; a null there means 'absent', not JSON null."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _csv_rows(uri: str) -> Iterator[Row]:
    binary = open_binary(uri)
    text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
    try:
        reader = csv.reader(text)
        try:
            header = next(reader, None)
        except UnicodeDecodeError:
            raise InputError(f"{uri}: not UTF-8 text") from None
        except csv.Error as exc:
            raise InputError(f"{uri}: not readable as CSV ({exc})") from None
        if not header:
            raise InputError(f"{uri}: empty CSV file, no header row")
        index = 0
        while True:
            line_no = reader.line_num + 1  # where the next record starts (records may span lines)
            try:
                fields = next(reader)
            except StopIteration:
                break
            except UnicodeDecodeError:
                raise InputError(f"{uri}: not UTF-8 text near line {line_no}") from None
            except csv.Error as exc:
                yield Row(index, line_no, None, f"line {line_no}: bad CSV ({exc})")
                index += 1
                continue
            if not fields:
                continue  # a blank line is not a row
            if len(fields) > len(header):
                yield Row(index, line_no, None, f"line {line_no}: {len(fields)} fields, the header has {len(header)}")
            else:
                yield Row(index, line_no, dict(itertools.zip_longest(header, fields)))
            index += 1
    finally:
        text.close()
