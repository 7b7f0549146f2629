"""schema_fastpath: the conservative pre-check of answers against simple schemas.

The contract under test: ``compile_fast`` gives None for a schema outside the subset, and otherwise
``accepts(v)`` is True only for values jsonschema finds valid (differential, on random values and on
mutations of valid ones), while it does accept the plain valid values it exists for.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import enum
import json
import random
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator, Draft202012Validator, validators

from inferbatch.schema_fastpath import compile_fast

TICKET: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent.parent / "sample_data" / "ticket.schema.json").read_text()
)
VALID_TICKET: dict[str, Any] = {
    "category": "billing",
    "urgency": "high",
    "summary": "Charged twice for March",
    "product": "Pro plan",
    "needs_human": True,
    "sentiment": -1,
}

# ---------------------------------------------------------------------------------------------------------
# Schemas outside the subset
# ---------------------------------------------------------------------------------------------------------

UNSUPPORTED_KEYWORDS: dict[str, Any] = {
    "$ref": "#/$defs/x",
    "$defs": {"x": {"type": "string"}},
    "definitions": {"x": {"type": "string"}},
    "anyOf": [{"type": "string"}],
    "oneOf": [{"type": "string"}],
    "allOf": [{"type": "string"}],
    "not": {"type": "string"},
    "if": {"type": "string"},
    "then": {"minLength": 1},
    "else": {"minLength": 1},
    "multipleOf": 2,
    "uniqueItems": True,
    "prefixItems": [{"type": "string"}],
    "additionalItems": False,
    "contains": {"type": "string"},
    "minContains": 1,
    "maxContains": 2,
    "patternProperties": {"^a": {"type": "string"}},
    "dependentRequired": {"a": ["b"]},
    "dependentSchemas": {"a": {"required": ["b"]}},
    "dependencies": {"a": ["b"]},
    "propertyNames": {"maxLength": 3},
    "unevaluatedProperties": False,
    "unevaluatedItems": False,
    "$anchor": "a",
    "$dynamicRef": "#a",
    "$dynamicAnchor": "a",
    "$recursiveRef": "#",
    "$recursiveAnchor": True,
    "$vocabulary": {},
    "contentMediaType": "application/json",
    "contentEncoding": "base64",
    "x-custom": 1,
}


def _placements(fragment: dict[str, Any]) -> list[dict[str, Any]]:
    """The fragment at the root, and deep inside each kind of subschema."""
    return [
        fragment,
        {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": fragment}}}},
        {"type": "object", "properties": {"list": {"type": "array", "items": fragment}}},
        {"type": "object", "additionalProperties": fragment},
        {"type": "array", "items": {"type": "array", "items": fragment}},
    ]


@pytest.mark.parametrize("keyword", sorted(UNSUPPORTED_KEYWORDS))
def test_unsupported_keyword_anywhere_gives_none(keyword: str) -> None:
    fragment = {"type": "string", keyword: UNSUPPORTED_KEYWORDS[keyword]}
    for schema in _placements(fragment):
        assert compile_fast(schema) is None, schema


MALFORMED: list[dict[str, Any]] = [
    {"type": "any"},
    {"type": 3},
    {"type": ["string", "any"]},
    {"type": ("string",)},
    {"minLength": -1},
    {"minLength": 1.0},
    {"maxLength": True},
    {"maxItems": "3"},
    {"minProperties": None},
    {"pattern": "("},
    {"pattern": "[a-"},
    {"pattern": 3},
    {"minimum": "0"},
    {"maximum": True},
    {"exclusiveMinimum": True, "minimum": 0},  # Draft 4's boolean form
    {"required": "a"},
    {"required": [1]},
    {"enum": "abc"},
    {"properties": []},
    {"properties": {"a": 3}},
    {"items": [{"type": "string"}]},  # Draft 7's tuple form
    {"additionalProperties": "no"},
    {"type": "string", "minimum": "x"},  # malformed even when the type rules the keyword out
    {"type": "integer", "properties": {"a": {"$ref": "#"}}},
    {"$id": 5},
]


@pytest.mark.parametrize("fragment", MALFORMED, ids=[json.dumps(m, default=str) for m in MALFORMED])
def test_malformed_keyword_anywhere_gives_none(fragment: dict[str, Any]) -> None:
    for schema in _placements(fragment):
        assert compile_fast(schema) is None, schema


@pytest.mark.parametrize(
    "dialect",
    [
        "http://json-schema.org/draft-04/schema#",
        "http://json-schema.org/draft-03/schema#",
        "https://example.com/my-dialect",
        5,
    ],
)
def test_other_dialects_give_none(dialect: Any) -> None:
    assert compile_fast({"$schema": dialect, "type": "string"}) is None


@pytest.mark.parametrize(
    "dialect",
    [
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2020-12/schema#",
        "https://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft-07/schema#",
        "http://json-schema.org/draft-07/schema",
        "http://json-schema.org/draft-06/schema#",
    ],
)
def test_draft_6_and_later_are_supported(dialect: str) -> None:
    accepts = compile_fast({"$schema": dialect, "type": "string"})
    assert accepts is not None
    assert accepts("x")
    assert not accepts(1)


def test_schema_keyword_inside_a_subschema_gives_none() -> None:
    nested = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "string"}
    assert compile_fast({"type": "object", "properties": {"a": nested}}) is None


# ---------------------------------------------------------------------------------------------------------
# Exact behaviours
# ---------------------------------------------------------------------------------------------------------


def _accepts(schema: Any) -> Any:
    accepts = compile_fast(schema)
    assert accepts is not None
    return accepts


def _valid(schema: Any, value: Any) -> bool:
    return bool(Draft202012Validator(schema).is_valid(value))


class Level(enum.IntEnum):
    ONE = 1


class Text(str):
    pass


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"type": "integer"}, True),
        ({"type": "number"}, False),
        ({"type": "integer", "maximum": 2}, 1.0),  # valid for jsonschema: left to it
        ({"enum": [1]}, True),
        ({"enum": [True]}, 1),
        ({"enum": [1]}, 1.0),
        ({"type": "integer", "enum": [2, True]}, 1),
        ({"type": "boolean", "enum": [False, 1]}, True),
        ({"const": 0}, False),
        ({"const": False}, 0),
        ({"const": 0}, 0.0),
        ({"enum": [[1, 2]]}, [1, 2]),  # arrays and objects in enums: left to jsonschema
        ({"const": {"a": 1}}, {"a": 1}),
        ({"type": "array"}, (1, 2)),
        ({"type": "integer"}, Level.ONE),
        ({"type": "object"}, collections.OrderedDict(a=1)),
        ({"type": "string"}, Text("x")),
        ({"type": "number", "minimum": 0}, float("nan")),
        ({"maxLength": 1}, "e\u0301"),  # two code points
        ({"type": "object", "properties": {"x": False}}, {"x": 1}),
        ({"type": "array", "items": False}, [1]),
        ({"type": []}, "x"),
        ({"enum": []}, "x"),
        ({"const": "a", "enum": ["b"]}, "a"),
        ({"type": "object", "required": ["a"]}, {"b": 1}),
        ({"type": "object", "additionalProperties": False}, {1: "x"}),
        ({"type": "object", "maxProperties": 1}, {"a": 1, "b": 2}),
        ({"type": "object", "minProperties": 1}, {}),
        ({"type": "array", "minItems": 1}, []),
        ({"type": "number", "exclusiveMaximum": 2}, 2),
        ({"type": "number", "exclusiveMinimum": 2}, 2.0),
        ({"pattern": "^a"}, "ba"),
    ],
)
def test_not_accepted(schema: Any, value: Any) -> None:
    assert _accepts(schema)(value) is False


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({}, object()),  # no assertion: anything is valid
        ({"title": "t", "description": "d"}, ("a", "tuple")),
        ({"type": "string", "format": "email"}, "not an email"),  # format is an annotation by default
        ({"maxLength": 1}, "😀"),  # one code point
        ({"pattern": "b"}, "abc"),  # re.search, not re.match
        ({"pattern": "^é+$", "minLength": 2}, "éé"),
        ({"minLength": 3}, 5),  # string keywords do not apply to a number
        ({"minimum": 3}, "a"),
        ({"required": ["a"]}, []),
        ({"items": {"type": "string"}}, {"a": 1}),
        ({"type": ["string", "null"]}, None),
        ({"type": "number", "maximum": 10**400}, 10**399),
        ({"type": "number", "minimum": -1.5}, -1.5),
        ({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, 0.5),
        ({"type": "integer", "minimum": 10**30}, 10**30 + 1),
        ({"enum": [1, "1", True, None, 1.5]}, True),
        ({"enum": [1, "1", True, None, 1.5]}, 1),
        ({"enum": [1, "1", True, None, 1.5]}, None),
        ({"const": False}, False),
        ({"const": 0.0}, -0.0),
        ({"type": "object", "properties": {"x": True, "y": False}}, {"x": object()}),
        ({"type": "object", "additionalProperties": {"type": "integer"}}, {"a": 1, "b": 2}),
        ({"type": "array", "items": False}, []),
        ({"type": "array", "items": {"type": "array", "items": {"type": "number"}}}, [[1, 2.5], []]),
        ({"type": "object", "required": ["a"], "properties": {"a": {"type": "null"}}}, {"a": None}),
    ],
)
def test_accepted_and_valid(schema: Any, value: Any) -> None:
    assert _accepts(schema)(value) is True
    assert _valid(schema, value)


def test_ticket_mutations_are_not_accepted() -> None:
    accepts = _accepts(TICKET)
    assert accepts(VALID_TICKET)
    missing = dict(VALID_TICKET)
    del missing["urgency"]
    mutations = [
        missing,
        dict(VALID_TICKET, urgency="soon"),
        dict(VALID_TICKET, category="Billing"),
        dict(VALID_TICKET, summary=""),
        dict(VALID_TICKET, summary="x" * 201),
        dict(VALID_TICKET, product=None),
        dict(VALID_TICKET, needs_human="yes"),
        dict(VALID_TICKET, needs_human=1),
        dict(VALID_TICKET, sentiment=True),
        dict(VALID_TICKET, sentiment="1"),
        dict(VALID_TICKET, sentiment=3),
        dict(VALID_TICKET, sentiment=1.0),  # valid for jsonschema, but left to it
        dict(VALID_TICKET, extra="x"),
        [VALID_TICKET],
        None,
    ]
    for value in mutations:
        assert accepts(value) is False, value
    assert accepts(dict(VALID_TICKET, summary="x" * 200, sentiment=2, needs_human=False))
    assert accepts(dict(VALID_TICKET, summary="日本語のチケット😀"))


def test_a_compiled_check_holds_no_reference_to_later_schema_edits() -> None:
    schema = copy.deepcopy(TICKET)
    accepts = _accepts(schema)
    schema["properties"]["urgency"]["enum"].append("soon")
    assert accepts(dict(VALID_TICKET, urgency="soon")) is False


# ---------------------------------------------------------------------------------------------------------
# Differential: accepts(v) => jsonschema valid, on random values and mutations; plain valid values accepted
# ---------------------------------------------------------------------------------------------------------

SCHEMAS: dict[str, dict[str, Any]] = {
    "ticket": TICKET,
    "order": {
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "pattern": "^ORD-[0-9]{4}$", "examples": ["ORD-0001", "ORD-9876"]},
            "customer": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 40},
                    "email": {"type": "string", "format": "email"},
                    "vip": {"type": "boolean"},
                },
                "required": ["name"],
                "additionalProperties": False,
            },
            "lines": {
                "type": "array",
                "minItems": 1,
                "maxItems": 4,
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string", "enum": ["A1", "B2", "C3"]},
                        "qty": {"type": "integer", "minimum": 1, "maximum": 10},
                        "price": {"type": "number", "exclusiveMinimum": 0},
                    },
                    "required": ["sku", "qty"],
                    "additionalProperties": False,
                },
            },
            "status": {"enum": ["open", "shipped", None]},
        },
        "required": ["order_id", "customer", "lines"],
        "additionalProperties": False,
    },
    "nullable": {
        "type": "object",
        "properties": {
            "name": {"type": ["string", "null"], "maxLength": 5},
            "age": {"type": ["integer", "null"], "minimum": 0, "maximum": 130},
            "score": {"type": ["number", "boolean"], "maximum": 1},
        },
        "required": ["name"],
    },
    "numbers": {
        "type": "object",
        "properties": {
            "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "score": {"type": "number", "minimum": -1.5, "maximum": 10},
            "count": {"type": "integer", "minimum": 0, "maximum": 3},
            "offset": {"type": "integer", "exclusiveMinimum": -3, "maximum": 3.5},
        },
        "additionalProperties": False,
    },
    "patterns": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{3}-\\d{2}$", "examples": ["ABC-12", "XYZ-99"]},
            "word": {"type": "string", "pattern": "é|ß", "minLength": 2, "examples": ["café", "straße"]},
            "any": {"type": "string", "pattern": "", "maxLength": 3},
        },
        "required": ["code"],
    },
    "untyped": {
        "properties": {
            "a": {"minLength": 2},
            "b": {"minimum": 0},
            "c": {"items": {"type": "integer"}, "maxItems": 2},
            "d": {"required": ["e"]},
        },
        "required": ["a"],
    },
    "mixed_enum": {
        "type": "object",
        "properties": {
            "flag": {"enum": [1, "1", True, None, 1.5, 0, "x"]},
            "zero": {"const": 0},
            "no": {"const": False},
            "word": {"const": "yes"},
            "num": {"type": "number", "enum": [1, 2.5, "1"]},
            "int_or_true": {"type": "integer", "enum": [2, True]},
            "bool_or_one": {"type": "boolean", "enum": [False, 1]},
        },
        "additionalProperties": False,
    },
    "open_additional": {
        "type": "object",
        "properties": {"id": {"type": "integer"}},
        "additionalProperties": {"type": "string", "maxLength": 3},
        "minProperties": 1,
        "maxProperties": 3,
    },
    "arrays": {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"type": "string", "enum": ["a", "b", "c"]},
                "minItems": 1,
                "maxItems": 3,
            },
            "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "empty": {"type": "array", "items": False},
        },
        "required": ["tags"],
    },
    "booleans": {
        "type": "object",
        "properties": {"anything": True, "nothing": False, "meta": {}, "described": {"description": "d"}},
        "additionalProperties": True,
    },
    "top_array": {
        "type": "array",
        "maxItems": 4,
        "items": {
            "type": "object",
            "properties": {"k": {"type": "string"}, "v": {"type": ["number", "boolean"]}},
            "required": ["k", "v"],
            "additionalProperties": False,
        },
    },
    "draft7": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "https://example.com/person.json",
        "title": "person",
        "type": "object",
        "properties": {
            "name": {"type": "string", "format": "email", "default": "x", "examples": ["a@b.c"]},
            "kind": {"const": "person", "$comment": "fixed"},
            "tags": {"type": "array", "items": {"type": "string", "readOnly": True}, "maxItems": 2},
        },
        "required": ["name", "kind"],
        "additionalProperties": False,
    },
    "scalar_root": {"type": ["string", "integer"], "minLength": 1, "maximum": 5, "deprecated": True},
    "empty": {},
}

_ALPHABET = "abcxyzABC-_ 0123456789éßü日本語😀\u0301\n"
_EXTRA_KEYS = ["extra", "Category", "", "summary ", "x", "id2"]
_TRICKY: list[Any] = [
    True,
    False,
    0,
    1,
    -1,
    2,
    -2,
    3,
    1.0,
    2.0,
    0.5,
    -1.5,
    10.0,
    10**20,
    -(10**20),
    float("nan"),
    float("inf"),
    "",
    "x",
    "1",
    None,
    [],
    {},
    [1],
    {"a": 1},
]


def _walk(schema: Any) -> list[Any]:
    """Every (sub)schema."""
    found = [schema]
    if isinstance(schema, dict):
        for sub in schema.get("properties", {}).values():
            found.extend(_walk(sub))
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                found.extend(_walk(schema[key]))
    return found


def _vocabulary(schema: Any) -> tuple[list[str], list[Any]]:
    """Property names, and scalar values worth trying (enum members, consts, examples)."""
    names: list[str] = []
    pool: list[Any] = []
    for sub in _walk(schema):
        if not isinstance(sub, dict):
            continue
        names.extend(sub.get("properties", {}))
        names.extend(sub.get("required", []))
        pool.extend(sub.get("enum", []))
        pool.extend(sub.get("examples", []))
        if "const" in sub:
            pool.append(sub["const"])
    return sorted(set(names)) or ["a"], pool or ["x"]


class _Gen:
    def __init__(self, schema: Any, rng: random.Random) -> None:
        self.rng = rng
        self.names, self.pool = _vocabulary(schema)
        self._validators: dict[int, Any] = {}

    def string(self) -> str:
        rng = self.rng
        length = rng.choice([0, 1, 2, 3, 4, 5, 8, 12, rng.randint(195, 205)])
        return "".join(rng.choice(_ALPHABET) for _ in range(length))

    def scalar(self) -> Any:
        rng = self.rng
        pick = rng.random()
        if pick < 0.2:
            return copy.deepcopy(rng.choice(self.pool))
        if pick < 0.4:
            return self.string()
        if pick < 0.55:
            return rng.randint(-5, 15)
        if pick < 0.65:
            return rng.choice([round(rng.uniform(-5, 15), 2), float(rng.randint(-3, 5))])
        if pick < 0.75:
            return rng.choice([True, False])
        if pick < 0.8:
            return None
        return copy.deepcopy(rng.choice(_TRICKY))

    def value(self, depth: int = 3) -> Any:
        rng = self.rng
        pick = rng.random()
        if depth > 0 and pick < 0.35:
            keys = rng.sample(self.names + _EXTRA_KEYS, rng.randint(0, min(7, len(self.names) + len(_EXTRA_KEYS))))
            return {key: self.value(depth - 1) for key in keys}
        if depth > 0 and pick < 0.5:
            return [self.value(depth - 1) for _ in range(rng.randint(0, 4))]
        return self.scalar()

    def _is_valid(self, schema: Any, value: Any) -> bool:
        validator = self._validators.get(id(schema))
        if validator is None:
            validator = self._validators[id(schema)] = Draft202012Validator(schema)
        return bool(validator.is_valid(value))

    def valid(self, schema: Any) -> Any:
        """A value built to be valid (usually: the caller checks with jsonschema)."""
        rng = self.rng
        if schema is True:
            return self.value(2)
        if schema is False:
            raise _NoValid
        if "const" in schema:
            return copy.deepcopy(schema["const"])
        if "enum" in schema:
            for _ in range(20):
                choice = copy.deepcopy(rng.choice(schema["enum"]))
                if self._is_valid(schema, choice):
                    return choice
            raise _NoValid
        types = schema.get("type", ["object", "array", "string", "integer", "number", "boolean", "null"])
        kind = rng.choice([types] if isinstance(types, str) else types)
        if kind == "object":
            return self._valid_object(schema)
        if kind == "array":
            items = schema.get("items", True)
            low = schema.get("minItems", 0)
            count = 0 if items is False else rng.randint(low, min(schema.get("maxItems", low + 3), low + 3))
            return [self.valid(items) for _ in range(count)]
        for _ in range(200):
            candidate = self._leaf(kind)
            if self._is_valid(schema, candidate):
                return candidate
        raise _NoValid

    def _leaf(self, kind: str) -> Any:
        rng = self.rng
        if kind == "string":
            strings = [each for each in self.pool if isinstance(each, str)]
            return rng.choice(strings) if strings and rng.random() < 0.5 else self.string()
        if kind == "integer":
            return rng.randint(-5, 15)
        if kind == "number":
            return rng.choice([rng.randint(-5, 15), round(rng.uniform(-5, 15), 3)])
        if kind == "boolean":
            return rng.choice([True, False])
        return None

    def _valid_object(self, schema: dict[str, Any]) -> dict[str, Any]:
        rng = self.rng
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        out: dict[str, Any] = {}
        for name in required:
            out[name] = self.valid(properties.get(name, True))
        for name, sub in properties.items():
            if name not in out and rng.random() < 0.5:
                with contextlib.suppress(_NoValid):
                    out[name] = self.valid(sub)
        additional = schema.get("additionalProperties", True)
        wanted = rng.randint(0, 2)
        low = schema.get("minProperties", 0)
        if additional is not False:
            extras = [key for key in _EXTRA_KEYS if key not in properties]
            while extras and (wanted > 0 or len(out) < low):
                out[extras.pop(rng.randrange(len(extras)))] = self.valid(additional)
                wanted -= 1
        optional = [key for key in out if key not in required]
        while len(out) > schema.get("maxProperties", len(out)) and optional:
            del out[optional.pop()]
        return out

    def mutate(self, value: Any) -> Any:
        value = copy.deepcopy(value)
        for _ in range(self.rng.randint(1, 3)):
            value = self._mutate_once(value)
        return value

    def _mutate_once(self, value: Any) -> Any:
        rng = self.rng
        if isinstance(value, dict) and value and rng.random() < 0.7:
            key = rng.choice(list(value))
            pick = rng.random()
            if pick < 0.45:
                value[key] = self._mutate_once(value[key])
            elif pick < 0.65:
                del value[key]
            elif pick < 0.85:
                value[rng.choice(self.names + _EXTRA_KEYS)] = self.value(1)
            else:
                value[key] = self._tweak(value[key])
            return value
        if isinstance(value, list) and value and rng.random() < 0.7:
            index = rng.randrange(len(value))
            pick = rng.random()
            if pick < 0.5:
                value[index] = self._mutate_once(value[index])
            elif pick < 0.7:
                del value[index]
            else:
                value.append(copy.deepcopy(rng.choice(value)) if rng.random() < 0.5 else self.value(1))
            return value
        return self._tweak(value)

    def _tweak(self, value: Any) -> Any:
        """A near miss: the wrong type, bool for int, 1.0 for 1, a changed string, another enum member."""
        rng = self.rng
        options: list[Any] = [copy.deepcopy(rng.choice(_TRICKY)), copy.deepcopy(rng.choice(self.pool)), [value]]
        if type(value) is str:
            options += [value + "x", value.upper(), value[:-1], value + "😀" * rng.randint(1, 3), " " + value, ""]
            options += [value * rng.randint(2, 60)]
        elif type(value) is bool:
            options += [int(value), float(value), str(value).lower()]
        elif type(value) is int:
            options += [float(value), value + 1, value - 1, bool(value), str(value), -value]
        elif type(value) is float and value == value and abs(value) != float("inf"):
            options += [int(value), value + 0.5, -value, value * 1e-9]
        return rng.choice(options)


class _NoValid(Exception):
    pass


def _validators_for(schema: Any) -> list[Any]:
    classes = [validators.validator_for(schema, default=Draft202012Validator), Draft202012Validator, Draft7Validator]
    return [cls(schema) for cls in dict.fromkeys(classes)]


RANDOM_VALUES = 1500
MUTATIONS = 1500
VALID_TRIES = 400


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_accepts_only_valid_values_and_most_plain_valid_ones(name: str) -> None:
    schema = SCHEMAS[name]
    accepts = _accepts(schema)
    judges = _validators_for(schema)
    gen = _Gen(schema, random.Random(1234))

    def valid(value: Any) -> bool:
        return all(judge.is_valid(value) for judge in judges)

    plain: list[Any] = []
    for _ in range(VALID_TRIES):
        try:
            candidate = gen.valid(schema)
        except _NoValid:
            continue
        if valid(candidate):
            plain.append(candidate)
    assert len(plain) >= VALID_TRIES // 2, f"the generator built too few valid values ({len(plain)})"
    accepted_plain = [value for value in plain if accepts(value)]
    assert len(accepted_plain) / len(plain) > 0.9, [value for value in plain if not accepts(value)][:5]

    values = [gen.value() for _ in range(RANDOM_VALUES)]
    values += [gen.mutate(gen.rng.choice(plain)) for _ in range(MUTATIONS)]
    accepted = 0
    for value in plain + values:
        if accepts(value):
            accepted += 1
            assert valid(value), f"accepts() took an invalid value: {value!r}"
    assert accepted >= len(accepted_plain)
