"""Structured answers (SPEC §8.42): what an answer must be, and whether it is.

A request whose ``response_format`` is ``json_schema`` must answer JSON that matches the schema;
``json_object`` must answer JSON (matching its ``schema`` key, as llama.cpp takes it, if it has one).
``--schema FILE`` sets the same for every row, sent as ``--schema-mode`` says; ``prompt`` mode states
the schema in the system message instead, and the answer is held to it all the same.

    Expectation.check(content) ─▶ (parsed JSON text, None)     the answer is good
                               └▶ (None, "$.urgency: 'soon' is not one of ['low', 'high']")

Validators are compiled once per distinct schema (the schema's own ``$schema`` draft, else 2020-12)
and shared by every row that uses it. Models often wrap JSON in a Markdown fence: exactly one fenced
block (```json … ``` or ``` … ```) is accepted as the answer; two or more are not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from inferbatch.errors import ConfigError

SCHEMA_MODES = ("api", "json-object", "prompt")
MISMATCH = "schema_mismatch"
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```", re.DOTALL)
_PROBLEM_CHARS = 300


class SchemaProblem(ValueError):
    """A schema that is not valid JSON Schema (the message says where)."""


@dataclass(frozen=True, slots=True)
class Expectation:
    """What an answer must be: JSON (``validator`` None) or JSON matching one compiled schema.

    ``fast`` (``schema_fastpath``) answers "certainly valid" for common schemas in a few µs; anything it is
    not sure of goes to the jsonschema validator, whose verdict (and error message) is the one used."""

    validator: Any = None  # a jsonschema validator instance, shared by every row with the same schema
    fast: Callable[[Any], bool] | None = None

    def check(self, content: str | None) -> tuple[str | None, str | None]:
        """``(parsed, None)`` for a good answer (``parsed``: the value as compact JSON text), else
        ``(None, problem)`` naming the first failing path.

        Raises SchemaProblem when the schema itself cannot be applied (a ``$ref`` that leads nowhere): no answer
        can match it, so it is not the answer's fault."""
        if content is None:
            return None, "$: no content (expected JSON)"
        text = unfence(content)
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return None, f"$: not JSON ({_clip(str(exc))})"
        if self.validator is not None and not (self.fast is not None and self.fast(value)):
            error = _first_error(self.validator, value)
            if error is not None:
                return None, error
        return orjson.dumps(value).decode(), None


def unfence(content: str) -> str:
    """The answer inside exactly one Markdown code fence, else the answer as it is."""
    if "```" not in content:
        return content
    blocks = _FENCE.findall(content)
    return blocks[0] if len(blocks) == 1 else content


def _first_error(validator: Any, value: Any) -> str | None:
    """The first error the validator finds (it walks the schema in its own order: the same error every time)."""
    from referencing.exceptions import Unresolvable

    try:
        first = next(validator.iter_errors(value), None)
    except Unresolvable as exc:
        raise SchemaProblem(f"the schema cannot be applied: {_clip(str(exc))}") from None
    if first is None:
        return None
    return f"{first.json_path}: {_clip(first.message)}"


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _PROBLEM_CHARS else text[: _PROBLEM_CHARS - 1] + "…"


def expectation_for(response_format: Any) -> Expectation | None:
    """The expectation a request's ``response_format`` sets, or None (free text).

    Raises SchemaProblem for a schema that is not valid JSON Schema."""
    if not isinstance(response_format, Mapping):
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise SchemaProblem("response_format json_schema has no `json_schema.schema` object")
        return schema_expectation(schema)
    if kind == "json_object":
        schema = response_format.get("schema")
        if isinstance(schema, Mapping):
            return schema_expectation(schema)
        return Expectation()
    return None


def schema_expectation(schema: Mapping[str, Any]) -> Expectation:
    """Answers must match ``schema`` (compiled once per distinct schema; SchemaProblem if it is not valid)."""
    return Expectation(*_compile(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)))


@lru_cache(maxsize=256)
def _compile(schema_json: bytes) -> tuple[Any, Callable[[Any], bool] | None]:
    from jsonschema import Draft202012Validator, validators
    from jsonschema.exceptions import SchemaError

    schema = orjson.loads(schema_json)
    cls = validators.validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        where = exc.json_path if hasattr(exc, "json_path") else "$"
        raise SchemaProblem(f"not a valid JSON Schema: {where}: {_clip(exc.message)}") from None
    for ref in _local_refs(schema):
        if _pointer(schema, ref[1:]) is _NOWHERE:
            raise SchemaProblem(f"not a valid JSON Schema: $ref {ref!r} leads nowhere in the schema")
    from inferbatch.schema_fastpath import compile_fast

    return cls(schema), compile_fast(schema)


_NOWHERE = object()


def _local_refs(node: Any) -> list[str]:
    """Every ``$ref`` of the form ``#/...`` (a JSON pointer into the schema itself)."""
    found: list[str] = []
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            found.append(ref)
        for value in node.values():
            found.extend(_local_refs(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_local_refs(value))
    return found


def _pointer(root: Any, pointer: str) -> Any:
    """What a JSON pointer (``/$defs/x``) names in ``root``, or ``_NOWHERE``."""
    node = root
    for part in pointer.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _NOWHERE
    return node


def load_schema(path: str) -> tuple[str, dict[str, Any]]:
    """``--schema FILE``: its name (the file's stem, as OpenAI's ``json_schema.name`` allows it) and the schema.

    Raises ConfigError for a file that cannot be read, is not JSON, or is not valid JSON Schema."""
    import os

    try:
        with open(path, "rb") as handle:
            schema = orjson.loads(handle.read())
    except OSError as exc:
        raise ConfigError(f"--schema {path}: cannot read ({exc.strerror or exc})") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"--schema {path}: not JSON ({_clip(str(exc))})") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"--schema {path}: a JSON Schema is an object, got {type(schema).__name__}")
    try:
        schema_expectation(schema)
    except SchemaProblem as exc:
        raise ConfigError(f"--schema {path}: {exc}") from None
    stem = os.path.basename(path).split(".", 1)[0]
    name = re.sub(r"[^A-Za-z0-9_-]", "_", stem)[:64] or "answer"
    return name, schema


def response_format_for(name: str, schema: Mapping[str, Any], mode: str) -> dict[str, Any] | None:
    """How ``--schema`` is sent: ``api`` as json_schema, ``json-object`` with a ``schema`` key, ``prompt`` not at all."""
    if mode == "api":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": dict(schema)}}
    if mode == "json-object":
        return {"type": "json_object", "schema": dict(schema)}
    return None


# How ``prompt`` mode states the schema; the simulator finds the schema after it.
STATED_SCHEMA = "matches this JSON Schema:\n"


def schema_instruction(schema: Mapping[str, Any]) -> str:
    """``prompt`` mode's system message: the schema, stated."""
    return (
        f"Answer with one JSON value only, no prose, that {STATED_SCHEMA}"
        + orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    )
