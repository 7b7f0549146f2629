"""One output row per input row: the ``Result`` record, and how the output file is written.

A row's trip ends in a frozen ``Result``. It is serialised once, to one JSON
line (``Result.line``), when the row finishes; that line goes to the
checkpoint and is copied verbatim to a JSONL output. ``OutputWriter`` turns
the checkpoint's lines, in input order, into JSONL, Parquet (explicit Arrow
schema) or OpenAI Batch output lines, written to a temporary file and
renamed into place. Lines read back (checkpoint, ``report``, ``merge``) are
plain dicts with the same keys.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from inferbatch.errors import RequestFailed

COLUMNS = (
    "id",
    "index",
    "status",
    "status_code",
    "content",
    "finish_reason",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "attempts",
    "latency_ms",
    "error",
    "tool_calls",
    "request_id",
    "cached_tokens",
    "reasoning_tokens",
)
PARSED = "parsed"  # present when the run (or the row) asks for structured answers (SPEC §3, §8.42)
EVAL_COLUMNS = ("variant", "sample", "passed", "failures", "cached")
JUDGE = "judge"  # an evaluation run with an llm-rubric assertion: the judge's verdicts, JSON text (SPEC §8.44)
JUDGE_PENDING = "llm-rubric:pending"  # the failure of a row whose verdicts a stop left for the next run to ask
BODY_KEY = "_body"  # the raw response body, kept only for --output-format openai-batch
PARQUET_BATCH_ROWS = 4096


class Status(StrEnum):
    OK = "ok"
    ERROR = "error"
    INVALID = "invalid"


def arrow_schema(
    kept: Iterable[tuple[str, Any]] = (), *, evaluation: bool = False, parsed: bool = False, judge: bool = False
) -> Any:
    import pyarrow as pa

    eval_fields = (
        [
            pa.field("variant", pa.string()),
            pa.field("sample", pa.int64()),
            pa.field("passed", pa.bool_()),
            pa.field("failures", pa.string()),
            pa.field("cached", pa.bool_()),
            *([pa.field(JUDGE, pa.string())] if judge else []),
        ]
        if evaluation
        else []
    )
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
            pa.field("cached_tokens", pa.int64()),
            pa.field("reasoning_tokens", pa.int64()),
            *([pa.field(PARSED, pa.string())] if parsed else []),
            *eval_fields,
            *(pa.field(name, typ) for name, typ in kept),
        ]
    )


CODE_KEY = "_code"  # the failure's error code, kept in the checkpoint for openai-batch's error.code (SPEC §8.25)
# A row a stop cut off between re-asks: its paid answer is kept (its tokens count on resume and in the
# budget), and the next run sends it again, like a row that has no result (SPEC §8.3, §8.43).
RESEND_KEY = "_resend"
# A judged row whose answer is recorded but whose verdicts are not all in (SPEC §8.44): the votes so far are
# kept with it, and the next run asks the judge for the rest without sending the answer again.
JUDGE_PENDING_KEY = "_judge_pending"
VOTES_KEY = "_votes"
FROM_BATCH_KEY = "_from_batch"  # a record read back from an openai-batch output line (``from_openai_batch``)
INTERNAL_KEYS = (BODY_KEY, CODE_KEY, RESEND_KEY, JUDGE_PENDING_KEY, VOTES_KEY, FROM_BATCH_KEY)


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one or more attempts were billed for."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0
    reasoning: int = 0

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Usage:
        """The usage of a completion body (zeros where it says nothing)."""
        usage = data.get("usage")
        if not isinstance(usage, dict):
            return cls()
        return cls(
            whole_count(usage.get("prompt_tokens")),
            whole_count(usage.get("completion_tokens")),
            whole_count(_detail(usage, "prompt_tokens_details", "cached_tokens")),
            whole_count(_detail(usage, "completion_tokens_details", "reasoning_tokens")),
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt + other.prompt,
            self.completion + other.completion,
            self.cached + other.cached,
            self.reasoning + other.reasoning,
        )

    def __bool__(self) -> bool:
        return bool(self.prompt or self.completion or self.cached or self.reasoning)


def _detail(usage: Mapping[str, Any], group: str, key: str) -> Any:
    details = usage.get(group)
    return details.get(key) if isinstance(details, dict) else None


def whole_count(value: Any) -> int:
    """A token or request count as written in a row: a non-negative int, else 0."""
    return value if type(value) is int and value >= 0 else 0


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The evaluation columns of one result (SPEC §3): which variant and sample, and what its assertions said."""

    variant: str | None
    sample: int
    passed: bool
    failures: tuple[str, ...]
    cached: bool
    judged: bool = False  # the run has an llm-rubric assertion: the row has the ``judge`` column
    judge: str | None = None  # its verdicts as JSON text; None when no judge ran


@dataclass(frozen=True, slots=True)
class Result:
    """One output row: what a row's trip returns, and the only thing that is serialised.

    ``error_code`` is carried from the failure (``RequestFailed.code``), never parsed back out of ``error``.
    ``body`` is the raw response body: kept for openai-batch output and the response cache, not a column.
    """

    id: str
    index: int
    status: Status
    status_code: int | None = None
    content: str | None = None
    finish_reason: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    attempts: int = 0
    latency_ms: float | None = None
    error: str | None = None
    tool_calls: str | None = None
    request_id: str | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    parsed: str | None = None  # the validated structured answer, as JSON text
    structured: bool = False  # the request asked for a structured answer: the row has the ``parsed`` column
    resend: bool = False  # cut off by a stop between re-asks: kept, and sent again by the next run
    error_code: str | None = None
    cached: bool = False
    evaluation: Evaluation | None = None
    kept: Mapping[str, Any] = field(default_factory=dict)
    body: Any = None

    @classmethod
    def answered(
        cls,
        row_id: str,
        index: int,
        data: dict[str, Any],
        *,
        status_code: int,
        attempts: int,
        latency_ms: float,
        request_id: str | None,
        cached: bool = False,
        kept: Mapping[str, Any] | None = None,
    ) -> Result:
        """A completion. ``request_id``: ``Response.request_id`` (x-request-id, else the body's id; redacted).

        Raises KeyError/IndexError/TypeError for a body that is not a completion (the client never passes one;
        a cache entry from another version may)."""
        choice = data["choices"][0]
        message = choice.get("message") or {}
        usage: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
        tool_calls = message.get("tool_calls")
        content = message.get("content")
        return cls(
            row_id,
            index,
            Status.OK,
            status_code,
            content=content if isinstance(content, str) or content is None else orjson.dumps(content).decode(),
            finish_reason=choice.get("finish_reason"),
            model=data.get("model"),
            prompt_tokens=_int(usage.get("prompt_tokens")),
            completion_tokens=_int(usage.get("completion_tokens")),
            total_tokens=_int(usage.get("total_tokens")),
            cached_tokens=_int(_detail(usage, "prompt_tokens_details", "cached_tokens")),
            reasoning_tokens=_int(_detail(usage, "completion_tokens_details", "reasoning_tokens")),
            attempts=attempts,
            latency_ms=round(latency_ms, 3),
            tool_calls=orjson.dumps(tool_calls).decode() if tool_calls else None,
            request_id=request_id or (data.get("id") if isinstance(data.get("id"), str) else None),
            cached=cached,
            kept=kept or {},
            body=data,
        )

    @classmethod
    def failed(
        cls, row_id: str, index: int, exc: RequestFailed, *, attempts: int, kept: Mapping[str, Any] | None = None
    ) -> Result:
        """A request that failed for good; ``exc`` is its last attempt's failure."""
        status = exc.status
        return cls(
            row_id,
            index,
            Status.ERROR,
            status,
            attempts=attempts,
            latency_ms=round(exc.latency_ms, 3) if exc.latency_ms is not None else None,
            error=exc.message,
            request_id=exc.request_id,  # set (redacted) by the client; never raw headers here (SPEC §8.33)
            error_code=exc.code or (f"http_{status}" if status is not None else "connection_error"),
            kept=kept or {},
            body=exc.body if isinstance(exc.body, dict) and status is not None else None,
        )

    @classmethod
    def invalid(cls, row_id: str, index: int, reason: str, kept: Mapping[str, Any] | None = None) -> Result:
        return cls(
            row_id, index, Status.INVALID, error=f"invalid_row: {reason}", error_code="invalid_row", kept=kept or {}
        )

    def record(self, *, keep_body: bool = False, parsed_column: bool = False) -> dict[str, Any]:
        """The output columns in SPEC §3 order (evaluation, then kept columns last), plus internal keys:
        the error code, and the body when ``keep_body`` (openai-batch output)."""
        record: dict[str, Any] = {
            "id": self.id,
            "index": self.index,
            "status": self.status.value,
            "status_code": self.status_code,
            "content": self.content,
            "finish_reason": self.finish_reason,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "attempts": self.attempts,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "tool_calls": self.tool_calls,
            "request_id": self.request_id,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }
        if self.structured or parsed_column:
            record[PARSED] = self.parsed
        evaluation = self.evaluation
        if evaluation is not None:
            record["variant"] = evaluation.variant
            record["sample"] = evaluation.sample
            record["passed"] = evaluation.passed
            record["failures"] = orjson.dumps(evaluation.failures).decode()
            record["cached"] = evaluation.cached
            if evaluation.judged:
                record[JUDGE] = evaluation.judge
        if self.kept:
            record.update(self.kept)
        if self.error_code is not None and self.status is not Status.OK:
            record[CODE_KEY] = self.error_code
        if keep_body and (self.status is Status.OK or self.status_code is not None):
            record[BODY_KEY] = self.body
        if self.resend:
            record[RESEND_KEY] = True
        return record

    def plus(self, usage: Usage) -> Result:
        """The result with ``usage`` added to its token columns: a row's columns count every answer it was
        billed for, re-asked ones included (SPEC §8.43), so the output adds up to the bill."""
        if not usage:
            return self

        def add(own: int | None, more: int) -> int | None:
            return (own or 0) + more if own is not None or more else own

        return replace(
            self,
            prompt_tokens=add(self.prompt_tokens, usage.prompt),
            completion_tokens=add(self.completion_tokens, usage.completion),
            total_tokens=add(self.total_tokens, usage.prompt + usage.completion),
            cached_tokens=add(self.cached_tokens, usage.cached),
            reasoning_tokens=add(self.reasoning_tokens, usage.reasoning),
        )

    def line(self, *, keep_body: bool = False, parsed_column: bool = False) -> bytes:
        """The checkpoint's line for this result (a JSONL output copies it, less internal keys)."""
        return dumps_line(self.record(keep_body=keep_body, parsed_column=parsed_column))


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def dumps_line(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The record without internal keys."""
    if _has_internal(record):
        record = {k: v for k, v in record.items() if k not in INTERNAL_KEYS}
    return record


def openai_batch_line(record: dict[str, Any]) -> dict[str, Any]:
    """SPEC §8.15: ``response`` whenever a response arrived, ``error`` for rows with no usable response."""
    status_code = record.get("status_code")
    response = None
    if status_code is not None:
        response = {"status_code": status_code, "request_id": record.get("request_id"), "body": record.get(BODY_KEY)}
    error = None
    if record["status"] != Status.OK:
        error = {"code": error_code(record), "message": record.get("error") or ""}
    return {"id": f"batch_req_{record['id']}", "custom_id": record["id"], "response": response, "error": error}


def from_openai_batch(line: dict[str, Any], position: int) -> dict[str, Any]:
    """An openai-batch output line (``openai_batch_line``) read back as a result record, for the summary of such
    an output (``report``, an already complete job): what the line keeps; latency and attempts it does not."""
    response = _object(line.get("response"))
    body = _object(response.get("body"))
    error = line.get("error") if isinstance(line.get("error"), dict) else None
    choices = body.get("choices")
    choice = _object(choices[0]) if isinstance(choices, list) and choices else {}
    message = _object(choice.get("message"))
    usage = _object(body.get("usage"))
    code = error.get("code") if error is not None else None
    record: dict[str, Any] = {
        "id": line.get("custom_id"),
        "index": position,
        "status": Status.OK.value
        if error is None
        else (Status.INVALID if code == "invalid_row" else Status.ERROR).value,
        "status_code": response.get("status_code"),
        "content": message.get("content") if isinstance(message.get("content"), str) else None,
        "finish_reason": choice.get("finish_reason"),
        "model": body.get("model"),
        "prompt_tokens": _int(usage.get("prompt_tokens")),
        "completion_tokens": _int(usage.get("completion_tokens")),
        "total_tokens": _int(usage.get("total_tokens")),
        "attempts": None,
        "latency_ms": None,
        "error": error.get("message") if error is not None else None,
        "tool_calls": orjson.dumps(message["tool_calls"]).decode() if message.get("tool_calls") else None,
        "request_id": response.get("request_id"),
        "cached_tokens": _int(_detail(usage, "prompt_tokens_details", "cached_tokens")),
        "reasoning_tokens": _int(_detail(usage, "completion_tokens_details", "reasoning_tokens")),
    }
    if isinstance(code, str):
        record[CODE_KEY] = code
    record[FROM_BATCH_KEY] = True  # its index is its place in the file, not a row position `merge` can use
    return record


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_openai_batch(record: Any) -> bool:
    return isinstance(record, dict) and "custom_id" in record and "response" in record and "status" not in record


def error_code(record: Mapping[str, Any]) -> str | None:
    """SPEC §8.25, from the code the failure carried; a line written before codes were kept gets
    ``invalid_row``, ``http_<status>`` or ``connection_error``."""
    if record["status"] == Status.OK:
        return None
    code = record.get(CODE_KEY)
    if isinstance(code, str):
        return code
    if record["status"] == Status.INVALID:
        return "invalid_row"
    status = record.get("status_code")
    return f"http_{status}" if status is not None else "connection_error"


def error_type(record: Mapping[str, Any]) -> str:
    """The kind of a failed row, for the summary's ``error_types``: its carried code in the checkpoint; in an
    output file (which has no internal keys), the short type that leads the ``error`` column (SPEC §3)."""
    code = record.get(CODE_KEY)
    if isinstance(code, str):
        return code
    error = record.get("error") or ""
    return error.split(":", 1)[0] if ":" in error else "error"


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


def _with_parsed(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with a null ``parsed`` in its SPEC §3 place: after the result columns, before the rest."""
    out = {key: record[key] for key in COLUMNS if key in record}
    out[PARSED] = None
    out.update((key, value) for key, value in record.items() if key not in out)
    return out


def _has_internal(record: dict[str, Any]) -> bool:
    return BODY_KEY in record or CODE_KEY in record or RESEND_KEY in record or JUDGE_PENDING_KEY in record


def row_usage(record: Mapping[str, Any]) -> Usage:
    """What a result row was billed for, from its token columns (every attempt of it: ``Result.plus``)."""
    return Usage(
        whole_count(record.get("prompt_tokens")),
        whole_count(record.get("completion_tokens")),
        whole_count(record.get("cached_tokens")),
        whole_count(record.get("reasoning_tokens")),
    )


def judge_entries(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A row's judge verdicts (SPEC §8.44): the ``judge`` column's JSON text parsed; [] without any (or damaged)."""
    value = record.get(JUDGE)
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return []
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


def judge_usage(record: Mapping[str, Any]) -> list[tuple[str, int, int, int]]:
    """What a row's judge calls were billed for: (model, prompt, completion, cached tokens) per verdict."""
    return [
        (
            str(e.get("model") or ""),
            whole_count(e.get("prompt_tokens")),
            whole_count(e.get("completion_tokens")),
            whole_count(e.get("cached_tokens")),
        )
        for e in judge_entries(record)
    ]


def _as_text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


class OutputWriter:
    """Writes records in order to a temporary file next to ``path``; ``commit()`` renames it into place."""

    def __init__(
        self,
        path: str,
        fmt: str,
        kept_types: list[tuple[str, Any]] | None = None,
        *,
        evaluation: bool = False,
        parsed: bool = False,
        judge: bool = False,
    ) -> None:
        """``parsed``: the output has the ``parsed`` column on every row (null where a row asked for no schema);
        ``judge``: the ``judge`` column (an evaluation run with an llm-rubric assertion)."""
        self._parsed = parsed
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

            self._schema = arrow_schema(self._kept_types, evaluation=evaluation, parsed=parsed, judge=judge)
            self._parquet = pq.ParquetWriter(self._file, self._schema, compression="zstd")

    def write_line(self, line: bytes, record: dict[str, Any]) -> None:
        """``line`` is the checkpoint's serialised ``record``; a plain JSONL output reuses it as is."""
        if self.fmt == "jsonl":
            if self._parsed and PARSED not in record:  # the column on every row, as in Parquet
                self._file.write(dumps_line(_with_parsed(public(record))))
            else:
                self._file.write(line if not _has_internal(record) else dumps_line(public(record)))
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
        with contextlib.suppress(Exception):  # already failing; the temp file is what matters
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_output(path: str) -> Iterator[dict[str, Any]]:
    """Rows of a result file (JSONL or Parquet, local or s3://), for ``report`` and ``merge``; the lines of an
    openai-batch output come back as result records (``from_openai_batch``)."""
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
        handle = open(path, "rb")  # noqa: SIM115 - the `with` below closes either handle
    with handle:
        position = 0
        for line in handle:
            if line.strip():
                record = orjson.loads(line)
                # An --output-format openai-batch output, read back as result records in file order.
                yield from_openai_batch(record, position) if _is_openai_batch(record) else record
                position += 1
