"""Offline evaluation: assertions on each answer, and pass rates per variant with Wilson intervals.

Assertion types (``[[assert]]`` in a job file; the expected value is ``value``
or the row's ``column``):

    equals          content == expected (surrounding whitespace ignored)
    contains        expected in content
    icontains       expected in content, ignoring case
    regex           re.search(expected, content)
    is-json         content parses as JSON
    json-path       the value at ``path`` ($.a.b[0]) in the JSON content == expected
    max-latency-ms  latency_ms <= expected
    max-tokens      completion_tokens <= expected
    llm-rubric      a judge model's verdict on the answer against ``rubric`` (SPEC §8.44; see ``judging``)

A row that did not end ``ok`` fails with the type ``status``. ``passed`` is true
when every assertion holds; ``failures`` lists the failed types. ``check`` judges the
deterministic assertions; an ``llm-rubric``'s verdict is asked for by the runner (``judging``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from inferbatch.errors import ConfigError
from inferbatch.results import Status

RUBRIC = "llm-rubric"
ASSERTION_TYPES = (
    "equals",
    "contains",
    "icontains",
    "regex",
    "is-json",
    "json-path",
    "max-latency-ms",
    "max-tokens",
    RUBRIC,
)
_RUBRIC_KEYS = {"type", "rubric", "name", "judge_model", "threshold"}
Z_95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Assertion:
    type: str
    value: Any = None
    column: str | None = None
    path: str | None = None
    # llm-rubric only: the rubric template, the verdict's name, the judge's model (None: the run's) and pass mark
    rubric: str | None = None
    name: str | None = None
    judge_model: str | None = None
    threshold: float = 0.5

    @classmethod
    def from_table(cls, table: Mapping[str, Any], number: int) -> Assertion:
        kind = table.get("type")
        if kind not in ASSERTION_TYPES:
            raise ConfigError(f"[[assert]] #{number}: type must be one of {', '.join(ASSERTION_TYPES)}, got {kind!r}")
        if kind == RUBRIC:
            return cls._rubric(table, number)
        unknown = set(table) - {"type", "value", "column", "path"}
        if unknown:
            raise ConfigError(f"[[assert]] #{number}: unknown key(s) {', '.join(sorted(unknown))}")
        if kind != "is-json" and "value" not in table and "column" not in table:
            raise ConfigError(f"[[assert]] #{number} ({kind}) needs `value = ...` or `column = ...`")
        if kind == "json-path" and not isinstance(table.get("path"), str):
            raise ConfigError(f'[[assert]] #{number} (json-path) needs `path = "$.field"`')
        if kind == "regex" and "value" in table:
            try:
                re.compile(str(table["value"]))
            except re.error as exc:
                raise ConfigError(f"[[assert]] #{number}: bad regex {table['value']!r}: {exc}") from None
        return cls(kind, table.get("value"), table.get("column"), table.get("path"))

    @classmethod
    def _rubric(cls, table: Mapping[str, Any], number: int) -> Assertion:
        where = f"[[assert]] #{number} (llm-rubric)"
        unknown = set(table) - _RUBRIC_KEYS
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))} (it takes {', '.join(sorted(_RUBRIC_KEYS))})"
            )
        rubric = table.get("rubric")
        if not isinstance(rubric, str) or not rubric.strip():
            raise ConfigError(f'{where} needs `rubric = "..."`: what a good answer is ({{output}} is the answer)')
        from inferbatch.judging import rubric_fields

        try:
            rubric_fields(rubric)
        except ValueError as exc:
            raise ConfigError(
                f"{where}: the rubric is not a valid template ({exc}); write {{{{ and }}}} for braces"
            ) from None
        name = table.get("name", f"rubric-{number}")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: `name` must be a non-empty string")
        judge_model = table.get("judge_model")
        if judge_model is not None and (not isinstance(judge_model, str) or not judge_model.strip()):
            raise ConfigError(f"{where}: `judge_model` must be a model name")
        threshold = table.get("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ConfigError(f"{where}: `threshold` is a number from 0 to 1, got {threshold!r}")
        return cls(RUBRIC, rubric=rubric, name=name, judge_model=judge_model, threshold=float(threshold))

    def as_dict(self) -> dict[str, Any]:
        if self.type == RUBRIC:
            return {
                "type": self.type,
                "rubric": self.rubric,
                "name": self.name,
                "judge_model": self.judge_model,
                "threshold": self.threshold,
            }
        return {"type": self.type, "value": self.value, "column": self.column, "path": self.path}

    def holds(self, record: Mapping[str, Any], row: Mapping[str, Any] | None) -> bool:
        expected = self.value
        if self.column is not None:
            expected = (row or {}).get(self.column)
            if expected is None and self.type != "is-json":
                return False  # the row has no expected value: the assertion cannot hold
        content = record.get("content")
        text = content if isinstance(content, str) else ""
        kind = self.type
        try:
            if kind == "equals":
                return text.strip() == str(expected).strip()
            if kind == "contains":
                return str(expected) in text
            if kind == "icontains":
                return str(expected).lower() in text.lower()
            if kind == "regex":
                return re.search(str(expected), text) is not None
            # A structured answer's `parsed` is the JSON itself (a fenced answer unwrapped; SPEC §8.42).
            parsed = record.get("parsed")
            json_text = parsed if isinstance(parsed, str) else text
            if kind == "is-json":
                json.loads(json_text)
                return True
            if kind == "json-path":
                found = _json_path(json.loads(json_text), self.path or "$")
                return bool(found == expected or found == _coerce_like(expected))
            if kind == "max-latency-ms":
                latency = record.get("latency_ms")
                return latency is not None and float(latency) <= float(expected)
            if kind == "max-tokens":
                tokens = record.get("completion_tokens")
                return tokens is not None and int(tokens) <= int(expected)
        except (ValueError, TypeError, KeyError, IndexError, re.error):
            return False
        return False


def _json_path(data: Any, path: str) -> Any:
    """A small JSONPath subset: ``$``, ``.name``, ``['name']`` and ``[0]``."""
    if not path.startswith("$"):
        raise ValueError(path)
    for name, quoted, number in re.findall(r"\.([A-Za-z_][\w-]*)|\['([^']*)'\]|\[(\d+)\]", path[1:]):
        data = data[int(number)] if number else data[name or quoted]
    return data


def _coerce_like(expected: Any) -> Any:
    """A column value "42" compares equal to a JSON 42: try JSON first, else keep the text."""
    if isinstance(expected, str):
        try:
            return json.loads(expected)
        except ValueError:
            return expected
    return expected


def check(assertions: tuple[Assertion, ...], record: Mapping[str, Any], row: Mapping[str, Any] | None) -> list[str]:
    """The failed assertion types for one result (``status`` when the row did not end ok)."""
    if record.get("status") != Status.OK:
        return ["status"]
    return [a.type for a in assertions if a.type != RUBRIC and not a.holds(record, row)]


def wilson(passed: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for ``passed`` out of ``total`` (95 % by default); ``(0.0, 1.0)`` with no rows.

    centre = (p + z²/2n) / (1 + z²/n); half-width = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n). With no rows
    nothing is known: the interval is all of [0, 1], not a pass rate of exactly 0.
    """
    if total <= 0:
        return (0.0, 1.0)
    p = passed / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    low = 0.0 if passed <= 0 else max(0.0, centre - half)  # exactly 0 and 1 at the ends, not 0.9999999999999999
    high = 1.0 if passed >= total else min(1.0, centre + half)
    return (low, high)


@dataclass(frozen=True, slots=True)
class Variant:
    """One way of asking: a name plus any of template, system, model and request parameters."""

    name: str
    template: str | None = None
    system: str | None = None
    model: str | None = None
    params: Mapping[str, Any] | None = None

    @classmethod
    def from_table(cls, table: Mapping[str, Any], number: int) -> Variant:
        name = table.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"[[variants]] #{number} needs a `name`")
        unknown = set(table) - {"name", "template", "system", "model", "params"}
        if unknown:
            raise ConfigError(f"[[variants]] {name}: unknown key(s) {', '.join(sorted(unknown))}")
        params = table.get("params")
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"[[variants]] {name}: params must be a table ([variants.params])")
        return cls(name, table.get("template"), table.get("system"), table.get("model"), params)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "template": self.template,
            "system": self.system,
            "model": self.model,
            "params": dict(sorted((self.params or {}).items())),
        }
