"""Turn an input ``Row`` into the request body to send, or an ``Invalid`` naming what is wrong.

Row shapes, detected per row (SPEC §2):

1. OpenAI Batch line ``{"custom_id", "method", "url", "body": {...}}``: body as is.
2. Chat row ``{"messages": [...], <body params>}``.
3. Prompt row ``{"prompt": "...", "system"?: "..."}``.
4. Any columns with ``--template``: the user message is the filled template.

Body precedence: row > ``--param`` > job ``[params]`` > defaults; ``stream`` is
always false. Pure: no I/O, so ``validate`` and ``run`` shape identically.

Row names (SPEC §8.4, §8.11, §8.30). An input *has ids* when it has an id
column (``--id-column``, ``custom_id`` or ``id`` in a CSV header or Parquet
schema) or, for JSONL, when a row carries such a key: the whole local file
decides (``sources.survey``); on stdin or S3 the first row that parses does.

- Input without ids: every row is named by its 0-based position, ``"3"``.
- Input with ids: a row is named by its id. A row that cannot use its own id
  is named ``"<index 3>"`` and is invalid: its id is missing or empty ("no
  id"), unreadable (a bad line), a duplicate of an earlier row's, or itself
  of that reserved form. Such names never enter the duplicate check, so a bad
  row never makes a good one a "duplicate", and output ids are unique.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from inferbatch.structured import (
    Expectation,
    SchemaProblem,
    expectation_for,
    response_format_for,
    schema_expectation,
    schema_instruction,
)

# Top-level chat-row keys that belong in the request body.
BODY_PARAMS = frozenset(
    {
        "model",
        "temperature",
        "max_tokens",
        "max_completion_tokens",
        "top_p",
        "top_k",
        "stop",
        "tools",
        "tool_choice",
        "response_format",
        "n",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "parallel_tool_calls",
        "extended_thinking",
        "reasoning_effort",
        "metadata",
        "service_tier",
        "modalities",
        "prediction",
        "audio",
        "store",
    }
)
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
ID_COLUMNS = ("custom_id", "id")
_POSITION_NAME = re.compile(r"<index \d+>")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


@dataclass(slots=True)
class Request:
    id: str
    index: int
    line: int
    body: dict[str, Any]
    keep: dict[str, Any]
    structure: Expectation | None = None  # what the answer must be (SPEC §8.42); None: free text
    run_format: bool = False  # its response_format is the run's own (--schema, --param, [params]), not the row's
    slot: int = -1  # where its result goes (see checkpoint.SlotLayout); the index in a plain run
    variant: str | None = None
    sample: int = 0
    expect: dict[str, Any] | None = None  # the row's values for assertion columns


@dataclass(slots=True)
class Invalid:
    id: str
    index: int
    line: int
    reason: str
    keep: dict[str, Any]
    no_model: bool = False  # invalid only because no model is configured: the run needs one (SPEC §8.7)
    slot: int = -1
    variant: str | None = None
    sample: int = 0
    expect: dict[str, Any] | None = None


class IdSet:
    """A compact set of 64-bit id hashes: 16 bytes a row instead of a Python string per row.

    Open addressing with linear probing in an ``array('Q')``; the chance of two
    different ids colliding is about n²/2⁶⁵ (3e-8 for a million rows).
    """

    def __init__(self) -> None:
        self._slots = array("Q", bytes(8 * 1024))
        self._used = 0

    def add(self, key: str) -> bool:
        """Add ``key``; False if it was already there."""
        digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") or 1
        if self._used * 2 >= len(self._slots):
            self._grow()
        return self._insert(digest)

    def _insert(self, digest: int) -> bool:
        slots = self._slots
        mask = len(slots) - 1
        pos = digest & mask
        while True:
            current = slots[pos]
            if current == 0:
                slots[pos] = digest
                self._used += 1
                return True
            if current == digest:
                return False
            pos = (pos + 1) & mask

    def _grow(self) -> None:
        old = self._slots
        self._slots = array("Q", bytes(16 * len(old)))
        self._used = 0
        for digest in old:
            if digest:
                self._insert(digest)


def shard_of(row_id: str, count: int) -> int:
    """Stable across runs, machines and Python versions (unlike ``hash()``)."""
    digest = hashlib.blake2b(row_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


class Shaper:
    """Shapes rows in input order; remembers ids to refuse duplicates."""

    def __init__(
        self,
        *,
        model: str | None,
        params: Mapping[str, Any],
        system: str | None = None,
        template: str | None = None,
        id_column: str | None = None,
        keep_columns: tuple[str, ...] = (),
        location: str = "line",
        has_ids: bool | None = None,
        schema: tuple[str, Mapping[str, Any]] | None = None,
        schema_mode: str = "api",
    ) -> None:
        """``schema``: ``--schema``'s (name, JSON Schema), sent as ``schema_mode`` says (SPEC §8.42)."""
        self.location = location  # "line" (JSONL, CSV) or "row" (Parquet), as an editor would say
        # True: rows are named by id; False: by position; None: the first row that parses decides.
        self.has_ids = has_ids
        self.model = model
        self.params = dict(params)
        self.system = system
        self.template = template
        self.template_fields = _template_fields(template) if template else ()
        self.id_column = id_column
        self.id_columns = (id_column,) if id_column else ID_COLUMNS
        self.keep_columns = keep_columns
        self._seen = IdSet()
        self._instruction: str | None = None
        if schema is not None:
            name, answer_schema = schema
            response_format = response_format_for(name, answer_schema, schema_mode)
            if response_format is not None:
                self.params["response_format"] = response_format
            else:
                self._instruction = schema_instruction(answer_schema)
        # The run's own answer format, compiled once; a row's own response_format is compiled (cached) per row.
        self._format = self.params.get("response_format")
        self._structure = expectation_for(self._format)
        if schema is not None and self._structure is None:
            self._structure = schema_expectation(schema[1])

    def row_id(self, data: dict[str, Any] | None, index: int, error: str | None = None) -> str:
        """The name ``--shard`` hashes: the row's own id (before the duplicate check, so every copy of an id
        lands in one shard and is found there), else its position name."""
        own, _ = self._identify(data, error)
        return own if own is not None else self._position_name(index)

    def shape(self, index: int, line: int, data: dict[str, Any] | None, error: str | None = None) -> Request | Invalid:
        own, problem = self._identify(data, error)
        if own is not None and not self._seen.add(own):
            problem = problem or f"duplicate id {_clip(own)!r}"
            own = None
        row_id = own if own is not None else self._position_name(index)
        if error is not None or data is None:  # whatever else `data` holds may be shifted: keep none of it
            return Invalid(
                row_id, index, line, error or f"{self.location} {line}: empty row", dict.fromkeys(self.keep_columns)
            )
        keep = {c: _keepable(data.get(c)) for c in self.keep_columns}
        if problem is not None:
            return Invalid(row_id, index, line, f"{self.location} {line}: {problem}", keep)
        try:
            body = self._body(data)
            structure = self._structure_of(body)
            run_format = body.get("response_format") is not None and body.get("response_format") is self._format
        except RowProblem as exc:
            return Invalid(
                row_id, index, line, f"{self.location} {line}: {exc}", keep, no_model=isinstance(exc, NoModel)
            )
        return Request(row_id, index, line, body, keep, structure=structure, run_format=run_format)

    def _structure_of(self, body: dict[str, Any]) -> Expectation | None:
        """What the answer must be: the run's format, or the row's own ``response_format``."""
        response_format = body.get("response_format")
        if response_format is self._format or (response_format is None and self._instruction is not None):
            return self._structure
        try:
            return expectation_for(response_format)
        except SchemaProblem as exc:
            raise RowProblem(f"`response_format`: {exc}") from None

    def _identify(self, data: dict[str, Any] | None, error: str | None) -> tuple[str | None, str | None]:
        """The row's own id (None: it is named by position) and the identity problem that makes it invalid."""
        readable = error is None and data is not None
        if self.has_ids is None and error is None and data is not None:
            self.has_ids = self.id_column is not None or any(c in data for c in self.id_columns)
        own = None
        if data is not None:
            for column in self.id_columns:
                value = data.get(column)
                if value is not None and value != "":
                    own = str(value)
                    break
        if not self.has_ids:
            if readable and own is not None:
                return None, "has an id, but the first row has none: give every row an id, or none"
            return None, None
        if own is None:
            if not readable:
                return None, None
            if self.id_column:
                return None, f"no id: no value in id column {self.id_column!r}"
            return None, "no id (this input names its rows by `custom_id` or `id`: give every row one)"
        if own.startswith("<index ") and _POSITION_NAME.fullmatch(own):
            return None, f"id {own!r} has the form used for rows without a usable id; rename it"
        return own, None

    def _position_name(self, index: int) -> str:
        return f"<index {index}>" if self.has_ids is not False else str(index)

    def _body(self, data: dict[str, Any]) -> dict[str, Any]:
        if "body" in data and ("custom_id" in data or "method" in data or "url" in data):
            body = data["body"]
            if not isinstance(body, dict):
                raise RowProblem("`body` must be a JSON object")
            body = {**self.params, **body}
            messages = body.get("messages")
        elif "messages" in data:
            body = {**self.params, **{k: v for k, v in data.items() if k in BODY_PARAMS}}
            messages = data["messages"]
            if isinstance(messages, str):
                messages = _messages_from_json_text(messages)
        elif self.template is not None:
            body = dict(self.params)
            messages = [{"role": "user", "content": self._fill(data)}]
            if isinstance(data.get("system"), str):
                messages.insert(0, {"role": "system", "content": data["system"]})
        elif "prompt" in data:
            prompt = data["prompt"]
            if not isinstance(prompt, str):
                raise RowProblem(f"`prompt` must be a string, got {_type(prompt)}")
            if not prompt.strip():
                raise RowProblem("`prompt` is empty")
            body = {**self.params, **{k: v for k, v in data.items() if k in BODY_PARAMS}}
            messages = [{"role": "user", "content": prompt}]
            system = data.get("system")
            if system is not None:
                if not isinstance(system, str):
                    raise RowProblem(f"`system` must be a string, got {_type(system)}")
                messages.insert(0, {"role": "system", "content": system})
        else:
            columns = ", ".join(list(data)[:8]) or "none"
            raise RowProblem(f"no `messages`, `prompt` or `body`, and no --template (columns: {_clip(columns)})")

        messages = _check_messages(messages)
        if self.system is not None and not any(m.get("role") in ("system", "developer") for m in messages):
            messages = [{"role": "system", "content": self.system}, *messages]
        if self._instruction is not None and "response_format" not in body:
            messages = with_instruction(messages, self._instruction)
        body["messages"] = messages
        if not body.get("model"):
            if not self.model:
                raise NoModel(
                    "no model: set --model, `model` in the job file or INFERENCE_MODEL_ID, or give the row a `model`"
                )
            body["model"] = self.model
        elif not isinstance(body["model"], str):
            raise RowProblem(f"`model` must be a string, got {_type(body['model'])}")
        for key in ("max_tokens", "max_completion_tokens"):
            if key in body and body[key] is not None and (type(body[key]) is not int or body[key] < 1):
                raise RowProblem(f"`{key}` must be a positive whole number, got {_clip(repr(body[key]))}")
        body["stream"] = False
        body.pop("stream_options", None)
        return body

    def _fill(self, data: dict[str, Any]) -> str:
        missing = [f for f in self.template_fields if f not in data]
        if missing:
            raise RowProblem(f"template needs column(s) {', '.join(missing)} which the row lacks")
        try:
            return self.template.format_map(TemplateValues(data))  # type: ignore[union-attr]
        except (KeyError, IndexError, AttributeError, TypeError, ValueError) as exc:
            raise RowProblem(f"template could not be filled ({exc})") from None


class RowProblem(ValueError):
    pass


class NoModel(RowProblem):
    """The row names no model and none is configured."""


class TemplateValues(dict):  # type: ignore[type-arg]
    """Row values for str.format_map: None shows as an empty string, not 'None'; objects and lists as JSON."""

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        if value is None:
            return ""
        return _AsJson(value) if isinstance(value, (dict, list)) else value


class _AsJson:
    """A nested value that a template shows as JSON text (not Python's repr), while ``{col[key]}`` still works."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return json.dumps(self.value, ensure_ascii=False, default=str)

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __getitem__(self, key: Any) -> Any:
        item = self.value[key]
        return _AsJson(item) if isinstance(item, (dict, list)) else item


def _keepable(value: Any) -> Any:
    """A kept value every output can hold: an integer past 64 bits (JSON allows it, Parquet does not) as text."""
    if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
        return str(value)
    return value


def _template_fields(template: str) -> tuple[str, ...]:
    names = []
    try:
        for _, name, _, _ in string.Formatter().parse(template):
            if name:
                base = name.split(".")[0].split("[")[0]
                if base and base not in names:
                    names.append(base)
    except ValueError as exc:
        from inferbatch.errors import ConfigError

        raise ConfigError(
            f"--template is not a valid template: {exc} (write literal braces as {{{{ and }}}})"
        ) from None
    return tuple(names)


def _messages_from_json_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise RowProblem("`messages` is a string but not JSON") from None


def with_instruction(messages: list[dict[str, Any]], instruction: str) -> list[dict[str, Any]]:
    """``--schema-mode prompt``: the schema stated at the end of the first system message (one system
    message: some servers take no second one), or in a new one."""
    first = messages[0]
    if first.get("role") in ("system", "developer") and isinstance(first.get("content"), str):
        return [{**first, "content": f"{first['content']}\n\n{instruction}"}, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise RowProblem(f"`messages` must be a list, got {_type(messages)}")
    if not messages:
        raise RowProblem("`messages` is empty")
    for number, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise RowProblem(f"message {number} must be an object, got {_type(message)}")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise RowProblem(f"message {number} has no valid `role` (got {_clip(repr(role))})")
        content = message.get("content")
        if content is None:
            if role != "assistant" or not message.get("tool_calls"):
                raise RowProblem(f"message {number} ({role}) has no `content`")
        elif not isinstance(content, (str, list)):
            raise RowProblem(f"message {number} `content` must be a string or a list of parts, got {_type(content)}")
    return messages


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """About four characters a token, over every message's text (and tool definitions)."""
    chars = 0
    for message in body.get("messages") or ():
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
        chars += 16  # role and framing
    if body.get("tools"):
        chars += len(str(body["tools"]))
    return max(1, chars // 4)


def _type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
