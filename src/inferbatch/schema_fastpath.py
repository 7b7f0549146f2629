"""A fast, conservative pre-check of structured answers against simple JSON Schemas.

Why it exists: every structured answer is validated with the ``jsonschema`` library
(``structured.Expectation.check``), which costs ~45 µs a row on a six-field schema, while the whole client
spends ~300 µs of CPU a row at full speed; validation should cost no more than 10 % of throughput. Most
schemas used for extraction are simple (objects of typed properties, enums, ``required``,
``additionalProperties: false``, arrays of those), and for those a hand-compiled check costs a few µs.

    compile_fast(schema) ─▶ accepts(value) -> bool    the schema is in the supported subset
                         └▶ None                       it is not: use jsonschema alone

The contract is CONSERVATIVE: ``accepts(value)`` is True only when the value is certainly valid under the
schema, as jsonschema's Draft 2020-12 (and Draft 6, 7, 2019-09) validators judge it when built without a
``format_checker`` (``format`` is then an annotation). False means "invalid, or not sure": the caller then
asks jsonschema, which gives the error message, and whose answer wins. So ``accepts`` may be stricter than
jsonschema (e.g. it says False for ``1.0`` under ``integer``, for enum members that are arrays or objects,
and for any value whose Python type is not exactly dict, list, str, int, float, bool or None), never looser.

The schema is compiled once into nested closures (no keyword look-ups per call). Supported subset, anywhere
in the schema; any other keyword, or a malformed value of one, makes ``compile_fast`` return None:

- annotations, ignored: ``$schema`` (root only, Draft 6 and later), ``$id``, ``title``, ``description``,
  ``default``, ``examples``, ``$comment``, ``format``, ``deprecated``, ``readOnly``, ``writeOnly``;
- ``type`` (a name or a list of names), ``enum``, ``const``;
- strings: ``minLength``, ``maxLength``, ``pattern`` (``re.search``, as jsonschema does);
- numbers: ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum`` (the numeric form);
- objects: ``properties``, ``required``, ``additionalProperties`` (a boolean or a schema),
  ``minProperties``, ``maxProperties``;
- arrays: ``items`` (one schema), ``minItems``, ``maxItems``;
- boolean schemas: ``true`` accepts anything, ``false`` nothing.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["Accepts", "compile_fast"]

Accepts = Callable[[Any], bool]

_ANNOTATIONS: Final = frozenset(
    {
        "$schema",
        "$id",
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "format",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)
_STRING_KEYWORDS: Final = frozenset({"minLength", "maxLength", "pattern"})
_NUMBER_KEYWORDS: Final = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
_OBJECT_KEYWORDS: Final = frozenset(
    {"properties", "required", "additionalProperties", "minProperties", "maxProperties"}
)
_ARRAY_KEYWORDS: Final = frozenset({"items", "minItems", "maxItems"})
_KEYWORDS: Final = (
    _ANNOTATIONS | _STRING_KEYWORDS | _NUMBER_KEYWORDS | _OBJECT_KEYWORDS | _ARRAY_KEYWORDS | {"type", "enum", "const"}
)

# The dialects whose meaning of the subset is the one implemented here (a trailing "#" is the same URI).
# Draft 3 and 4 differ (boolean exclusiveMinimum, no const, ...): not supported.
_DIALECTS: Final = frozenset(
    {
        "http://json-schema.org/draft-06/schema",
        "http://json-schema.org/draft-07/schema",
        "https://json-schema.org/draft/2019-09/schema",
        "https://json-schema.org/draft/2020-12/schema",
    }
)

_NONE: Final = type(None)
# JSON Schema type name -> the exact Python types certainly of that type (bool is neither integer nor number;
# jsonschema also takes 1.0 as an integer, but accepts() leaves that to it).
_TYPES: Final[Mapping[str, tuple[type, ...]]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (_NONE,),
}
_ALL_TYPES: Final = (dict, list, str, int, float, bool, _NONE)
_SCALARS: Final = frozenset({str, int, float, bool, _NONE})
_UNBOUNDED: Final = sys.maxsize


class _Unsupported(Exception):
    """The schema uses something outside the subset."""


def compile_fast(schema: Mapping[str, Any]) -> Accepts | None:
    """``accepts(value)``: True only if ``value`` is certainly valid under ``schema``; None for a schema
    outside the supported subset (see the module docstring)."""
    if isinstance(schema, Mapping) and "$schema" in schema:
        dialect = schema["$schema"]
        if not isinstance(dialect, str) or dialect.removesuffix("#") not in _DIALECTS:
            return None
    try:
        return _node(schema, root=True)
    except (_Unsupported, RecursionError):
        return None


def _accept(value: Any) -> bool:
    return True


def _reject(value: Any) -> bool:
    return False


def _node(schema: Any, root: bool = False) -> Accepts:
    """One schema, compiled."""
    if schema is True:
        return _accept
    if schema is False:
        return _reject
    if not isinstance(schema, Mapping):
        raise _Unsupported
    for key in schema:
        if key not in _KEYWORDS or (key == "$schema" and not root):
            raise _Unsupported
    if "$id" in schema and not isinstance(schema["$id"], str):
        raise _Unsupported

    if all(key in _ANNOTATIONS for key in schema):
        return _accept  # no assertion at all: every value is valid

    # The Python types a valid value may have, each with the check of the keywords that apply to it. Every
    # keyword is compiled (and so checked for well-formedness), even one of a type that `type` rules out.
    by_kind: dict[type, Accepts] = {
        str: _string_check(schema),
        int: _number_check(schema),
        dict: _object_check(schema),
        list: _array_check(schema),
    }
    by_kind[float] = by_kind[int]
    allowed = _allowed_types(schema["type"]) if "type" in schema else _ALL_TYPES
    table = {kind: by_kind.get(kind, _accept) for kind in allowed}

    # enum / const: the (exact type, value) pairs a value may be; values of other types are left to jsonschema.
    pairs: frozenset[tuple[type, Any]] | None = None
    if "enum" in schema:
        if not isinstance(schema["enum"], list):
            raise _Unsupported
        pairs = _pairs(schema["enum"])
    if "const" in schema:
        const = _pairs([schema["const"]])
        pairs = const if pairs is None else pairs & const
    if pairs is not None:
        kinds = {kind for kind, _ in pairs}
        table = {kind: check for kind, check in table.items() if kind in kinds}
    return _dispatch(table, pairs)


def _dispatch(table: dict[type, Accepts], pairs: frozenset[tuple[type, Any]] | None) -> Accepts:
    """The check of one schema: the value's exact type must be in ``table`` (and its check pass), and the value
    among ``pairs`` if there is an enum or const."""
    if not table:
        return _reject
    if len(table) == 1:
        ((kind, check),) = table.items()
        if pairs is not None:
            # Every member is of type `kind`, as the value is: plain membership is exact-typed equality.
            members = frozenset(value for member_kind, value in pairs if member_kind is kind)
            if check is _accept:

                def one_of(value: Any) -> bool:
                    return type(value) is kind and value in members

                return one_of

            def one_of_checked(value: Any) -> bool:
                return type(value) is kind and value in members and check(value)

            return one_of_checked
        if check is _accept:

            def of_type(value: Any) -> bool:
                return type(value) is kind

            return of_type

        def of_type_checked(value: Any) -> bool:
            return type(value) is kind and check(value)

        return of_type_checked

    get = table.get
    if pairs is not None:
        # Only scalar types remain in the table, so the value is hashable once its type is found there.
        enum_pairs = pairs

        def any_of(value: Any) -> bool:
            check = get(type(value))
            return check is not None and (type(value), value) in enum_pairs and check(value)

        return any_of

    def typed(value: Any) -> bool:
        check = get(type(value))
        return check is not None and check(value)

    return typed


def _allowed_types(spec: Any) -> tuple[type, ...]:
    names = [spec] if isinstance(spec, str) else spec
    if not isinstance(names, list):
        raise _Unsupported
    kinds: list[type] = []
    for name in names:
        if not isinstance(name, str) or name not in _TYPES:
            raise _Unsupported
        kinds.extend(_TYPES[name])
    return tuple(kinds)


def _pairs(members: list[Any]) -> frozenset[tuple[type, Any]]:
    """Enum members as (exact type, value): True and 1, 1 and 1.0 stay apart, as jsonschema keeps them.
    Arrays and objects are left out (a value equal to one is then never accepted here)."""
    return frozenset((type(member), member) for member in members if type(member) in _SCALARS)


def _count(schema: Mapping[str, Any], key: str, default: int) -> int:
    if key not in schema:
        return default
    value = schema[key]
    if type(value) is not int or value < 0:
        raise _Unsupported
    return value


def _bound(schema: Mapping[str, Any], key: str, default: float) -> float:
    if key not in schema:
        return default
    value = schema[key]
    if type(value) is not int and type(value) is not float:
        raise _Unsupported
    bound: float = value
    return bound


def _string_check(schema: Mapping[str, Any]) -> Accepts:
    low = _count(schema, "minLength", 0)
    high = _count(schema, "maxLength", _UNBOUNDED)
    search: Callable[[str], object] | None = None
    if "pattern" in schema:
        pattern = schema["pattern"]
        if not isinstance(pattern, str):
            raise _Unsupported
        try:
            search = re.compile(pattern).search
        except Exception:  # re.error, and the odd OverflowError or RecursionError of a pathological pattern
            raise _Unsupported from None
    sized = low > 0 or high < _UNBOUNDED
    if search is None:
        if not sized:
            return _accept

        def sized_string(value: str) -> bool:
            return low <= len(value) <= high

        return sized_string
    matcher = search
    if not sized:

        def matching_string(value: str) -> bool:
            return matcher(value) is not None

        return matching_string

    def sized_matching_string(value: str) -> bool:
        return low <= len(value) <= high and matcher(value) is not None

    return sized_matching_string


def _number_check(schema: Mapping[str, Any]) -> Accepts:
    # NaN fails every comparison: with a bound it is never accepted here (jsonschema would take it).
    inf = float("inf")
    low = _bound(schema, "minimum", -inf)
    high = _bound(schema, "maximum", inf)
    above = _bound(schema, "exclusiveMinimum", -inf)
    below = _bound(schema, "exclusiveMaximum", inf)
    if above == -inf and below == inf:
        if low == -inf and high == inf:
            return _accept

        def within(value: float) -> bool:
            return low <= value <= high

        return within

    def strictly_within(value: float) -> bool:
        return low <= value <= high and above < value < below

    return strictly_within


def _object_check(schema: Mapping[str, Any]) -> Accepts:
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping):
        raise _Unsupported
    checks: dict[Any, Accepts] = {}
    for name, subschema in properties.items():
        if not isinstance(name, str):
            raise _Unsupported
        checks[name] = _node(subschema)
    required_list = schema.get("required", [])
    if not isinstance(required_list, list) or not all(isinstance(name, str) for name in required_list):
        raise _Unsupported
    required = frozenset(required_list)
    # jsonschema descends into additionalProperties only when it is a dict; anything else is a boolean to it.
    additional_schema = schema.get("additionalProperties", True)
    if not isinstance(additional_schema, bool | dict):
        raise _Unsupported
    additional: Accepts | None = _node(additional_schema)  # _reject for false: any extra key fails
    if additional is _accept:
        additional = None
    low = _count(schema, "minProperties", 0)
    high = _count(schema, "maxProperties", _UNBOUNDED)
    sized = low > 0 or high < _UNBOUNDED
    if not (checks or required or additional or sized):
        return _accept
    get = checks.get
    extra = additional

    def object_check(value: dict[Any, Any]) -> bool:
        if sized and not low <= len(value) <= high:
            return False
        if required and not value.keys() >= required:
            return False
        for key, item in value.items():
            check = get(key)
            if check is None:
                if extra is None:
                    continue
                check = extra
            if not check(item):
                return False
        return True

    return object_check


def _array_check(schema: Mapping[str, Any]) -> Accepts:
    items = schema.get("items", True)
    if not isinstance(items, bool | Mapping):  # a list is Draft 7's tuple form: not supported
        raise _Unsupported
    item_check = _node(items)
    low = _count(schema, "minItems", 0)
    high = _count(schema, "maxItems", _UNBOUNDED)
    sized = low > 0 or high < _UNBOUNDED
    if item_check is _accept:
        if not sized:
            return _accept

        def sized_array(value: list[Any]) -> bool:
            return low <= len(value) <= high

        return sized_array

    def array_check(value: list[Any]) -> bool:
        if sized and not low <= len(value) <= high:
            return False
        return all(map(item_check, value))

    return array_check
