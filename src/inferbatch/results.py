"""One output row per input row: how it is built, and how the output file is written.

A result is a plain dict whose keys are the output columns in SPEC §3 order
(kept columns last). It is serialised once, to one JSON line, when the row
finishes; that line goes to the checkpoint and is copied verbatim to a JSONL
output. ``write_output`` turns the checkpoint's lines, in input order, into
JSONL, Parquet (explicit Arrow schema) or OpenAI Batch output lines, written
to a temporary file and renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from inferbatch.errors import RequestFailed

COLUMNS = (
    "id", "index", "status", "status_code", "content", "finish_reason", "model", "prompt_tokens",
    "completion_tokens", "total_tokens", "attempts", "latency_ms", "error", "tool_calls", "request_id",
)  # fmt: skip
EVAL_COLUMNS = ("variant", "sample", "passed", "failures", "cached")
BODY_KEY = "_body"  # the raw response body, kept only for --output-format openai-batch
PARQUET_BATCH_ROWS = 4096


class Status(StrEnum):
    OK = "ok"
    ERROR = "error"
    INVALID = "invalid"


def arrow_schema(kept: Iterable[tuple[str, Any]] = (), *, evaluation: bool = False) -> Any:
    import pyarrow as pa

    eval_fields = [
        pa.field("variant", pa.string()),
        pa.field("sample", pa.int64()),
        pa.field("passed", pa.bool_()),
        pa.field("failures", pa.string()),
        pa.field("cached", pa.bool_()),
    ] if evaluation else []  # fmt: skip
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("index", pa.int64(), nullable=False),
            pa.field("status", pa.string(), nullable=False),
            pa.field("status_code", pa.int64()),
            pa.field("content", pa.string()),
            pa.field("finish_reason", pa.string()),
            pa.field("model", pa.string()),
            pa.field("prompt_tokens", pa.int64()),
            pa.field("completion_tokens", pa.int64()),
            pa.field("total_tokens", pa.int64()),
            pa.field("attempts", pa.int64(), nullable=False),
            pa.field("latency_ms", pa.float64()),
            pa.field("error", pa.string()),
            pa.field("tool_calls", pa.string()),
            pa.field("request_id", pa.string()),
            *eval_fields,
            *(pa.field(name, typ) for name, typ in kept),
        ]
    )


def ok_record(row_id: str, index: int, data: dict[str, Any], *, status_code: int, attempts: int, latency_ms: float,
              request_id: str | None, keep: dict[str, Any], keep_body: bool = False) -> dict[str, Any]:  # fmt: skip
    """``request_id``: pass ``Response.request_id`` (x-request-id, else the body's id; redacted by the client)."""
    choice = data["choices"][0]
    message = choice.get("message") or {}
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    tool_calls = message.get("tool_calls")
    content = message.get("content")
    record = {
        "id": row_id,
        "index": index,
        "status": Status.OK.value,
        "status_code": status_code,
        "content": content if isinstance(content, str) or content is None else orjson.dumps(content).decode(),
        "finish_reason": choice.get("finish_reason"),
        "model": data.get("model"),
        "prompt_tokens": _int(usage.get("prompt_tokens")),
        "completion_tokens": _int(usage.get("completion_tokens")),
        "total_tokens": _int(usage.get("total_tokens")),
        "attempts": attempts,
        "latency_ms": round(latency_ms, 3),
        "error": None,
        "tool_calls": orjson.dumps(tool_calls).decode() if tool_calls else None,
        "request_id": request_id or (data.get("id") if isinstance(data.get("id"), str) else None),
        **keep,
    }
    if keep_body:
        record[BODY_KEY] = data
    return record


def error_record(row_id: str, index: int, exc: RequestFailed, *, attempts: int, keep: dict[str, Any],
                 keep_body: bool = False) -> dict[str, Any]:  # fmt: skip
    body = exc.body if isinstance(exc.body, dict) else None
    request_id = exc.request_id  # set (redacted) by the client; never read from raw headers here (SPEC §8.33)
    record = {
        "id": row_id,
        "index": index,
        "status": Status.ERROR.value,
        "status_code": exc.status,
        "content": None,
        "finish_reason": None,
        "model": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "total_tokens": None,
        "attempts": attempts,
        "latency_ms": round(exc.latency_ms, 3) if exc.latency_ms is not None else None,
        "error": exc.message,
        "tool_calls": None,
        "request_id": request_id,
        **keep,
    }
    if keep_body and exc.status is not None:
        record[BODY_KEY] = body
    return record


def invalid_record(row_id: str, index: int, reason: str, keep: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row_id,
        "index": index,
        "status": Status.INVALID.value,
        "status_code": None,
        "content": None,
        "finish_reason": None,
        "model": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "total_tokens": None,
        "attempts": 0,
        "latency_ms": None,
        "error": f"invalid_row: {reason}",
        "tool_calls": None,
        "request_id": None,
        **keep,
    }


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def dumps_line(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The record without internal keys."""
    if BODY_KEY in record:
        record = {k: v for k, v in record.items() if k != BODY_KEY}
    return record


def openai_batch_line(record: dict[str, Any]) -> dict[str, Any]:
    """SPEC §8.15: ``response`` whenever a response arrived, ``error`` for rows with no usable response."""
    status_code = record.get("status_code")
    response = None
    if status_code is not None:
        response = {"status_code": status_code, "request_id": record.get("request_id"), "body": record.get(BODY_KEY)}
    error = None
    if record["status"] != Status.OK.value:
        message = record.get("error") or ""
        error = {"code": error_code(record), "message": message}
    return {"id": f"batch_req_{record['id']}", "custom_id": record["id"], "response": response, "error": error}


def error_code(record: dict[str, Any]) -> str | None:
    """SPEC §8.25: invalid_row, timeout, connection_error, the server's code, else http_<status>."""
    if record["status"] == Status.OK.value:
        return None
    if record["status"] == Status.INVALID.value:
        return "invalid_row"
    message = record.get("error") or ""
    code = message.split(":", 1)[0].strip() if ":" in message else ""
    if code and " " not in code:
        return code
    status = record.get("status_code")
    return f"http_{status}" if status is not None else "connection_error"


def kept_column_types(records: Iterable[dict[str, Any]], kept: tuple[str, ...]) -> list[tuple[str, Any]]:
    """Arrow types for kept columns: the one type every value has, else JSON text."""
    import pyarrow as pa

    seen: dict[str, set[type]] = {name: set() for name in kept}
    for record in records:
        for name in kept:
            value = record.get(name)
            if value is not None:
                seen[name].add(type(value))
    types = []
    for name in kept:
        kinds = seen[name]
        if kinds <= {int}:
            typ = pa.int64() if kinds else pa.string()
        elif kinds <= {int, float}:
            typ = pa.float64()
        elif kinds == {bool}:
            typ = pa.bool_()
        else:
            typ = pa.string()
        types.append((name, typ))
    return types


def _as_text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


class OutputWriter:
    """Writes records in order to a temporary file next to ``path``; ``commit()`` renames it into place."""

    def __init__(self, path: str, fmt: str, kept_types: list[tuple[str, Any]] | None = None, *,
                 evaluation: bool = False) -> None:  # fmt: skip
        self.path = path
        self.fmt = fmt
        self._remote = path.startswith("s3://")
        if self._remote:  # written locally, then uploaded as one object
            fd, self._tmp = tempfile.mkstemp(prefix="inferbatch-output-", suffix=".tmp")
        else:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, self._tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        self._file = os.fdopen(fd, "wb", buffering=1 << 20)
        self._batch: list[dict[str, Any]] = []
        self._parquet: Any = None
        self._kept_types = kept_types or []
        self._string_kept = [n for n, t in self._kept_types if str(t) == "string"]
        if fmt == "parquet":
            import pyarrow.parquet as pq

            self._schema = arrow_schema(self._kept_types, evaluation=evaluation)
            self._parquet = pq.ParquetWriter(self._file, self._schema, compression="zstd")

    def write_line(self, line: bytes, record: dict[str, Any]) -> None:
        """``line`` is the checkpoint's serialised ``record``; a plain JSONL output reuses it as is."""
        if self.fmt == "jsonl":
            self._file.write(line if BODY_KEY not in record else dumps_line(public(record)))
        elif self.fmt == "openai-batch":
            self._file.write(dumps_line(openai_batch_line(record)))
        else:
            self._batch.append(record)
            if len(self._batch) >= PARQUET_BATCH_ROWS:
                self._flush_parquet()

    def _flush_parquet(self) -> None:
        import pyarrow as pa

        if not self._batch:
            return
        for record in self._batch:
            for name in self._string_kept:
                record[name] = _as_text(record.get(name))
        table = pa.Table.from_pylist(self._batch, schema=self._schema)
        self._parquet.write_table(table)
        self._batch.clear()

    def commit(self) -> None:
        try:
            if self._parquet is not None:
                self._flush_parquet()
                self._parquet.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.chmod(self._tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
            if self._remote:
                from inferbatch.storage import upload_file

                upload_file(self._tmp, self.path)
                os.unlink(self._tmp)
            else:
                os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        try:
            self._file.close()
        except Exception:  # noqa: BLE001 - already failing; the temp file is what matters
            pass
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_output(path: str) -> Iterator[dict[str, Any]]:
    """Rows of a result file (JSONL or Parquet, local or s3://), for ``report`` and ``merge``."""
    remote = path.startswith("s3://")
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        if remote:
            from inferbatch.storage import open_input_file

            parquet = pq.ParquetFile(open_input_file(path))
        else:
            parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            yield from batch.to_pylist()
        return
    if remote:
        from inferbatch.storage import open_input_stream

        handle: Any = open_input_stream(path)
    else:
        handle = open(path, "rb")
    with handle:
        for line in handle:
            if line.strip():
                yield orjson.loads(line)
