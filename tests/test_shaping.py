"""Shaping rows into request bodies (SPEC §2, §8.4, §8.11): every row shape, precedence, identity, invalid rows."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pytest

from inferbatch.errors import ConfigError
from inferbatch.shaping import (
    IdSet,
    Invalid,
    Request,
    Shaper,
    _template_fields,
    estimate_prompt_tokens,
    shard_of,
)

USER = [{"role": "user", "content": "hello"}]


def shaper(**options: Any) -> Shaper:
    options.setdefault("model", "default-model")
    options.setdefault("params", {})
    return Shaper(**options)


def request(data: dict[str, Any], *, index: int = 0, line: int = 1, **options: Any) -> Request:
    result = shaper(**options).shape(index, line, data)
    assert isinstance(result, Request), result
    return result


def invalid(
    data: dict[str, Any] | None, *, index: int = 0, line: int = 1, error: str | None = None, **options: Any
) -> Invalid:
    result = shaper(**options).shape(index, line, data, error)
    assert isinstance(result, Invalid), result
    return result


def names_line(reason: str, line: int) -> bool:
    return re.search(rf"\bline {line}\b", reason) is not None


# --- 1. OpenAI Batch lines ---------------------------------------------------------------------------------------


def batch_line(body: dict[str, Any], custom_id: str = "req-1") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def test_batch_line_body_is_sent_as_is() -> None:
    body = {"model": "row-model", "messages": USER, "temperature": 0.3, "max_tokens": 50, "seed": 7}
    result = request(batch_line(dict(body)))
    assert result.id == "req-1"
    assert result.body == {**body, "stream": False}


def test_batch_line_model_filled_in_when_absent() -> None:
    result = request(batch_line({"messages": USER}), model="fallback-model")
    assert result.body["model"] == "fallback-model"
    assert result.body["messages"] == USER


def test_batch_line_params_fill_only_missing_keys() -> None:
    result = request(
        batch_line({"messages": USER, "temperature": 0.9}),
        params={"temperature": 0.0, "max_tokens": 100},
    )
    assert result.body["temperature"] == 0.9
    assert result.body["max_tokens"] == 100


def test_batch_line_body_not_an_object_is_invalid() -> None:
    result = invalid(batch_line("not a body"), line=4)  # type: ignore[arg-type]
    assert names_line(result.reason, 4)
    assert "body" in result.reason


# --- 2. Chat rows --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("temperature", 0.2),
        ("max_tokens", 64),
        ("top_p", 0.5),
        ("stop", ["\n\n"]),
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
        ("tool_choice", "auto"),
        ("response_format", {"type": "json_object"}),
        ("model", "row-model"),
    ],
)
def test_chat_row_body_params_go_into_the_body(param: str, value: Any) -> None:
    result = request({"id": "a", "messages": USER, param: value})
    assert result.body[param] == value
    assert result.body["messages"] == USER


def test_chat_row_non_param_keys_stay_out_of_the_body() -> None:
    result = request({"id": "a", "messages": USER, "expected": "Paris", "category": "geo"})
    assert set(result.body) == {"model", "messages", "stream"}


def test_chat_row_param_wins_over_shaper_params() -> None:
    result = request(
        {"messages": USER, "temperature": 1.0},
        params={"temperature": 0.0, "max_tokens": 20},
    )
    assert result.body["temperature"] == 1.0
    assert result.body["max_tokens"] == 20


def test_row_model_wins_over_configured_model() -> None:
    assert request({"messages": USER, "model": "row-model"}, model="cfg-model").body["model"] == "row-model"
    assert request({"messages": USER}, model="cfg-model").body["model"] == "cfg-model"


def test_messages_as_json_text_are_parsed() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    result = request({"id": "p", "messages": json.dumps(messages)})
    assert result.body["messages"] == messages


def test_messages_as_text_that_is_not_json_is_invalid() -> None:
    result = invalid({"messages": "hello there"}, line=3)
    assert names_line(result.reason, 3)
    assert "messages" in result.reason


def test_assistant_message_with_tool_calls_needs_no_content() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    assert request({"messages": messages}).body["messages"] == messages


def test_content_as_list_of_parts_is_accepted() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "describe"}]}]
    assert request({"messages": messages}).body["messages"] == messages


# --- 3. Prompt rows ------------------------------------------------------------------------------------------------


def test_prompt_row_without_system() -> None:
    result = request({"id": "q1", "prompt": "What is 2+2?"})
    assert result.id == "q1"
    assert result.body["messages"] == [{"role": "user", "content": "What is 2+2?"}]


def test_prompt_row_with_system() -> None:
    result = request({"prompt": "What is 2+2?", "system": "Answer with a number."})
    assert result.body["messages"] == [
        {"role": "system", "content": "Answer with a number."},
        {"role": "user", "content": "What is 2+2?"},
    ]


def test_prompt_row_params_go_into_the_body() -> None:
    result = request({"prompt": "hi", "max_tokens": 5, "expected": "x"}, params={"max_tokens": 500, "temperature": 0})
    assert result.body["max_tokens"] == 5
    assert result.body["temperature"] == 0
    assert "expected" not in result.body


# --- 4. Templates over columns -------------------------------------------------------------------------------------


def test_template_is_filled_from_columns() -> None:
    result = request(
        {"id": "c1", "country": "France", "topic": "capital"},
        template="What is the {topic} of {country}?",
    )
    assert result.body["messages"] == [{"role": "user", "content": "What is the capital of France?"}]


def test_template_missing_column_is_invalid_and_names_it() -> None:
    result = invalid({"id": "c1", "country": "France"}, line=6, template="The {topic} of {country}")
    assert names_line(result.reason, 6)
    assert "topic" in result.reason


def test_template_shows_objects_and_lists_as_json_and_indexes_into_them() -> None:
    data = {"meta": {"name": "é", "tags": ["a", "b"]}, "n": [1, 2]}
    result = request(data, template="{meta} | {n} | {meta[name]} | {meta[tags]} | {n[1]}")
    assert result.body["messages"][-1]["content"] == '{"name": "é", "tags": ["a", "b"]} | [1, 2] | é | ["a", "b"] | 2'


@pytest.mark.parametrize("template", ["{n[x]}", "{meta[0]}", "{meta.name}", "{n:d}"])
def test_template_that_cannot_index_a_value_is_invalid_not_a_crash(template: str) -> None:
    result = invalid({"meta": {"name": "x"}, "n": [1, 2]}, template=template)
    assert "template" in result.reason


def test_template_fields_lists_placeholders() -> None:
    assert _template_fields("Q: {question} ({lang}) {question}") == ("question", "lang")


@pytest.mark.parametrize("template", ["{unclosed", "closing only }", "{a!}"])
def test_malformed_template_is_a_usage_error(template: str) -> None:
    with pytest.raises(ConfigError):
        _template_fields(template)
    with pytest.raises(ConfigError):
        Shaper(model="m", params={}, template=template)


# --- --system, stream ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {"messages": USER},
        {"prompt": "hello"},
        batch_line({"messages": USER}),
    ],
)
def test_system_option_prepended_when_row_has_none(data: dict[str, Any]) -> None:
    result = request(data, system="You are terse.")
    assert result.body["messages"][0] == {"role": "system", "content": "You are terse."}
    assert result.body["messages"][1:] == USER


@pytest.mark.parametrize(
    "data",
    [
        {"messages": [{"role": "system", "content": "Row system."}, *USER]},
        {"prompt": "hello", "system": "Row system."},
    ],
)
def test_system_option_not_added_when_row_has_one(data: dict[str, Any]) -> None:
    messages = request(data, system="You are terse.").body["messages"]
    assert [m for m in messages if m["role"] == "system"] == [{"role": "system", "content": "Row system."}]
    assert messages[-1] == USER[0]


@pytest.mark.parametrize(
    ("data", "params"),
    [
        ({"messages": USER}, {}),
        ({"messages": USER, "stream": True}, {}),
        ({"messages": USER}, {"stream": True}),
        (batch_line({"messages": USER, "stream": True}), {}),
        ({"prompt": "hi"}, {"stream": True}),
    ],
)
def test_stream_is_always_false(data: dict[str, Any], params: dict[str, Any]) -> None:
    assert request(data, params=params).body["stream"] is False


# --- Row identity (SPEC §8.4) --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "id_column", "expected"),
    [
        ({"custom_id": "c", "id": "i", "key": "k", "messages": USER}, "key", "k"),
        ({"custom_id": "c", "id": "i", "messages": USER}, None, "c"),
        ({"id": "i", "messages": USER}, None, "i"),
        ({"id": 42, "messages": USER}, None, "42"),
        ({"messages": USER}, None, "7"),
    ],
)
def test_row_identity(data: dict[str, Any], id_column: str | None, expected: str) -> None:
    result = request(data, index=7, line=9, id_column=id_column)
    assert result.id == expected
    assert result.index == 7
    assert result.line == 9


def test_missing_value_in_explicit_id_column_is_invalid() -> None:
    result = invalid({"id": "i", "messages": USER}, line=12, id_column="key")
    assert names_line(result.reason, 12)
    assert "key" in result.reason


def test_duplicate_id_later_row_is_invalid_first_stays_valid() -> None:
    s = shaper()
    first = s.shape(0, 1, {"id": "same", "messages": USER})
    other = s.shape(1, 2, {"id": "other", "messages": USER})
    second = s.shape(2, 3, {"id": "same", "messages": [{"role": "user", "content": "different"}]})
    assert isinstance(first, Request) and first.id == "same"
    assert isinstance(other, Request)
    assert isinstance(second, Invalid)
    assert second.id == "<index 2>" and second.index == 2  # SPEC §8.30: output ids are unique
    assert names_line(second.reason, 3)
    assert "duplicate" in second.reason and "'same'" in second.reason


# --- Ids never collide (SPEC §8.30) -------------------------------------------------------------------------------


def test_input_without_ids_names_every_row_by_position() -> None:
    s = shaper(has_ids=False)
    assert s.shape(0, 1, {"messages": USER}).id == "0"
    assert s.shape(1, 2, None, "line 2: invalid JSON").id == "1"


def test_in_input_with_ids_a_missing_or_empty_id_is_invalid_and_named_by_position() -> None:
    s = shaper(has_ids=True)
    missing = s.shape(3, 4, {"messages": USER})
    empty = s.shape(4, 5, {"id": "", "messages": USER})
    real = s.shape(5, 6, {"id": "3", "messages": USER})
    assert isinstance(missing, Invalid) and missing.id == "<index 3>" and "no id" in missing.reason
    assert isinstance(empty, Invalid) and empty.id == "<index 4>" and names_line(empty.reason, 5)
    assert isinstance(real, Request) and real.id == "3"


def test_unreadable_row_is_named_by_position_and_never_makes_a_duplicate() -> None:
    s = shaper(has_ids=True)
    bad = s.shape(2, 3, None, "line 3: invalid JSON")
    later = s.shape(3, 4, {"id": "<index 2>x", "messages": USER})
    assert isinstance(bad, Invalid) and bad.id == "<index 2>"
    assert isinstance(later, Request)


def test_a_bad_row_with_a_readable_id_keeps_it_but_none_of_its_other_values() -> None:
    s = shaper(has_ids=True, keep_columns=("question",))
    bad = s.shape(0, 2, {"id": "q1", "question": "shifted?"}, "line 2: 3 fields, the header has 2")
    again = s.shape(1, 3, {"id": "q1", "messages": USER})
    assert isinstance(bad, Invalid) and bad.id == "q1" and bad.keep == {"question": None}
    assert isinstance(again, Invalid) and again.id == "<index 1>" and "duplicate" in again.reason


def test_an_id_of_the_reserved_position_form_is_invalid() -> None:
    s = shaper(has_ids=True)
    result = s.shape(0, 1, {"id": "<index 7>", "messages": USER})
    assert isinstance(result, Invalid) and result.id == "<index 0>"
    assert "<index 7>" in result.reason


def test_the_first_readable_row_decides_whether_rows_have_ids() -> None:
    with_ids = shaper()
    assert with_ids.shape(0, 1, None, "line 1: invalid JSON").id == "<index 0>"  # undecided: the safe form
    assert with_ids.shape(1, 2, {"id": "a", "messages": USER}).id == "a"
    later = with_ids.shape(2, 3, {"messages": USER})
    assert isinstance(later, Invalid) and "no id" in later.reason

    without = shaper()
    assert without.shape(0, 1, {"messages": USER}).id == "0"
    stray = without.shape(1, 2, {"id": "0", "messages": USER})
    assert isinstance(stray, Invalid) and stray.id == "1" and "first row has none" in stray.reason


def test_row_id_for_sharding_is_the_own_id_even_for_a_duplicate() -> None:
    s = shaper(has_ids=True)
    s.shape(0, 1, {"id": "same", "messages": USER})
    assert s.row_id({"id": "same"}, 5) == "same"
    assert s.row_id({"messages": USER}, 6) == "<index 6>"
    assert s.row_id(None, 7, "line 8: invalid JSON") == "<index 7>"


def test_kept_integer_past_64_bits_becomes_text() -> None:
    s = shaper(keep_columns=("n", "m"))
    result = s.shape(0, 1, {"messages": USER, "n": 2**64 - 1, "m": 2**63 - 1})
    assert result.keep == {"n": str(2**64 - 1), "m": 2**63 - 1}


def test_keep_columns_are_carried_on_requests_and_invalid_rows() -> None:
    s = shaper(keep_columns=("expected", "absent"))
    ok = s.shape(0, 1, {"messages": USER, "expected": "Paris"})
    bad = s.shape(1, 2, {"messages": [], "expected": "Rome"})
    assert isinstance(ok, Request) and ok.keep == {"expected": "Paris", "absent": None}
    assert isinstance(bad, Invalid) and bad.keep == {"expected": "Rome", "absent": None}


# --- Invalid rows: each names the 1-based line and the problem ------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "options", "problem"),
    [
        ({"messages": []}, {}, "empty"),
        ({"messages": {"role": "user", "content": "hi"}}, {}, "list"),
        ({"messages": "[1, 2"}, {}, "messages"),
        ({"messages": [{"content": "hi"}]}, {}, "role"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, {}, "role"),
        ({"messages": [{"role": "user"}]}, {}, "content"),
        ({"messages": [{"role": "user", "content": 42}]}, {}, "content"),
        ({"messages": [{"role": "user", "content": {"text": "hi"}}]}, {}, "content"),
        ({"messages": ["hello"]}, {}, "message 1"),
        ({"prompt": 42}, {}, "prompt"),
        ({"prompt": ["a"]}, {}, "prompt"),
        ({"prompt": ""}, {}, "prompt"),
        ({"prompt": "   "}, {}, "prompt"),
        ({"question": "What?", "answer": "x"}, {}, "messages"),
        ({}, {}, "messages"),
        ({"messages": USER, "max_tokens": 0}, {}, "max_tokens"),
        ({"messages": USER, "max_tokens": -5}, {}, "max_tokens"),
        ({"messages": USER, "max_tokens": 1.5}, {}, "max_tokens"),
        ({"messages": USER, "max_tokens": "100"}, {}, "max_tokens"),
        ({"messages": USER, "max_tokens": True}, {}, "max_tokens"),
        ({"messages": USER}, {"params": {"max_tokens": 0}}, "max_tokens"),
        ({"messages": USER, "model": 5}, {}, "model"),
        ({"messages": USER, "model": ["a"]}, {}, "model"),
        ({"messages": USER}, {"model": None}, "model"),
        ({"prompt": "hi"}, {"model": None}, "model"),
        (batch_line({"messages": USER}), {"model": None}, "model"),
    ],
)
def test_invalid_rows_name_line_and_problem(data: dict[str, Any], options: dict[str, Any], problem: str) -> None:
    result = invalid(data, index=4, line=5, **options)
    assert result.index == 4
    assert names_line(result.reason, 5), result.reason
    assert problem in result.reason, result.reason


def test_second_message_problem_names_that_message() -> None:
    result = invalid({"messages": [USER[0], {"role": "user", "content": 3}]}, line=2)
    assert "message 2" in result.reason


def test_parse_error_from_the_source_becomes_invalid() -> None:
    result = invalid(None, index=3, line=8, error="line 8: invalid JSON (unexpected character)", has_ids=False)
    assert result.id == "3"
    assert names_line(result.reason, 8)
    assert "invalid JSON" in result.reason


def test_a_valid_row_after_invalid_rows_is_still_shaped() -> None:
    s = shaper()
    assert isinstance(s.shape(0, 1, None, "line 1: invalid JSON"), Invalid)
    assert isinstance(s.shape(1, 2, {"messages": []}), Invalid)
    assert isinstance(s.shape(2, 3, {"messages": USER}), Request)


# --- IdSet, shard_of, estimates ------------------------------------------------------------------------------------


def test_idset_add_reports_repeats() -> None:
    ids = IdSet()
    assert ids.add("a") is True
    assert ids.add("b") is True
    assert ids.add("a") is False
    assert ids.add("b") is False
    assert ids.add("A") is True


def test_idset_survives_growth() -> None:
    ids = IdSet()
    keys = [f"row-{i}" for i in range(6000)]
    assert all(ids.add(k) for k in keys)
    assert not any(ids.add(k) for k in keys)
    assert ids.add("row-6000") is True


def test_shard_of_is_stable_and_in_range() -> None:
    for count in (1, 2, 3, 7):
        for row_id in ("a", "row-17", "", "ünïcödé"):
            first = shard_of(row_id, count)
            assert 0 <= first < count
            assert shard_of(row_id, count) == first
    assert shard_of("anything", 1) == 0


def test_shard_of_spreads_ids() -> None:
    counts = Counter(shard_of(f"id-{i}", 4) for i in range(10_000))
    assert set(counts) == {0, 1, 2, 3}
    assert all(2_200 <= n <= 2_800 for n in counts.values()), counts


def test_shard_of_depends_on_the_id() -> None:
    assert len({shard_of(f"id-{i}", 1000) for i in range(50)}) > 10


@pytest.mark.parametrize("chars", [400, 4000, 40_000])
def test_estimate_prompt_tokens_about_chars_over_four(chars: int) -> None:
    body = {"messages": [{"role": "user", "content": "x" * chars}]}
    estimate = estimate_prompt_tokens(body)
    assert chars / 4 <= estimate <= chars / 4 * 1.1 + 10


def test_estimate_prompt_tokens_counts_every_message_and_parts() -> None:
    one = {"messages": [{"role": "user", "content": "x" * 800}]}
    two = {"messages": [{"role": "system", "content": "y" * 800}, {"role": "user", "content": "x" * 800}]}
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 800}]}]}
    assert estimate_prompt_tokens(two) >= estimate_prompt_tokens(one) + 200
    assert estimate_prompt_tokens(parts) == estimate_prompt_tokens(one)
    assert estimate_prompt_tokens({"messages": [{"role": "user", "content": ""}]}) >= 1
