"""structured.py unit by unit: what an answer must be, and how a schema file is named (SPEC §8.42)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferbatch.errors import ConfigError
from inferbatch.structured import Expectation, expectation_for, load_schema, unfence

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def test_no_content_is_no_json() -> None:
    """An answer with only tool calls has no content: it cannot be the JSON asked for."""
    assert Expectation().check(None) == (None, "$: no content (expected JSON)")


def test_a_long_problem_is_clipped_to_one_short_line() -> None:
    expectation = expectation_for({"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA}})
    assert expectation is not None
    parsed, problem = expectation.check(json.dumps({"n": "x" * 1000}))
    assert parsed is None and problem is not None
    assert problem.startswith("$.n: ") and len(problem) == len("$.n: ") + 300 and problem.endswith("…")
    short = expectation.check(json.dumps({"n": "x" * 200}))[1]
    assert short is not None and "…" not in short  # exactly what jsonschema said, under the limit


def test_exactly_one_fence_is_unwrapped() -> None:
    assert unfence('```json\n{"n": 1}\n```') == '{"n": 1}'
    assert unfence('say:\n```\n{"n": 1}\n```\nok') == '{"n": 1}'
    two = '```json\n{"n": 1}\n```\n```json\n{"n": 2}\n```'
    assert unfence(two) == two


@pytest.mark.parametrize(
    ("file_name", "name"),
    [
        ("ticket.schema.json", "ticket"),
        ("my ticket.v2.json", "my_ticket"),
        (".json", "answer"),
        ("x" * 80 + ".json", "x" * 64),
    ],
)
def test_the_schema_is_named_after_the_files_stem(tmp_path: Path, file_name: str, name: str) -> None:
    """OpenAI's json_schema.name takes [A-Za-z0-9_-], at most 64 characters."""
    path = tmp_path / file_name
    path.write_text(json.dumps(SCHEMA), encoding="utf-8")
    assert load_schema(str(path)) == (name, SCHEMA)


@pytest.mark.parametrize(
    ("text", "says"),
    [("[1, 2]", "a JSON Schema is an object, got list"), ("{", "not JSON"), ('{"type": 5}', "not a valid JSON Schema")],
)
def test_a_bad_schema_file_is_one_readable_line(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=says):
        load_schema(str(path))


def test_a_ref_that_leads_nowhere_is_refused_with_the_schema() -> None:
    from inferbatch.structured import SchemaProblem

    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    with pytest.raises(SchemaProblem, match="leads nowhere"):
        expectation_for({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})


def test_a_ref_that_cannot_be_fetched_is_the_schemas_fault_not_the_answers() -> None:
    """A remote $ref passes the schema check but cannot be applied: a clear problem, never a traceback."""
    from inferbatch.structured import SchemaProblem

    schema = {"type": "object", "properties": {"a": {"$ref": "https://schemas.invalid/a.json"}}}
    expectation = expectation_for({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert expectation is not None
    with pytest.raises(SchemaProblem, match="cannot be applied"):
        expectation.check('{"a": 1}')
