"""LLM-as-judge (SPEC §8.44), unit by unit: rubric templates, the llm-rubric assertion's settings, the judge
request, votes and their majority, the checkpoint's accounting of judged rows, and the summary's judge bill.
No network, no sleeps: every piece is called directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from inferbatch.checkpoint import Checkpoint
from inferbatch.config import RunConfig, resolve
from inferbatch.errors import ConfigError
from inferbatch.evaluation import RUBRIC, Assertion, check
from inferbatch.judging import (
    ERROR,
    FAILED,
    JUDGE_SCHEMA,
    MAX_TOKENS,
    PENDING,
    SCHEMA_NAME,
    SYSTEM,
    Judge,
    rubric_fields,
    vote_key,
    vote_of,
)
from inferbatch.pricing import Pricing
from inferbatch.progress import Summary
from inferbatch.results import JUDGE, JUDGE_PENDING_KEY, VOTES_KEY, Result, Status
from inferbatch.shaping import Request
from inferbatch.structured import STATED_SCHEMA

ENV = {"INFERENCE_URL": "https://env.example.com", "INFERENCE_KEY": "env-secret-key", "INFERENCE_MODEL_ID": "env-model"}


# --- helpers -------------------------------------------------------------------------------------------------------


def rubric(number: int = 1, **table: Any) -> Assertion:
    return Assertion.from_table({"type": RUBRIC, "rubric": "Is {output} polite?", **table}, number)


def refusal(table: dict[str, Any], number: int = 3) -> str:
    with pytest.raises(ConfigError) as info:
        Assertion.from_table(table, number)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert f"[[assert]] #{number}" in message, message
    return message


def item(**changes: Any) -> Request:
    base: dict[str, Any] = {
        "id": "row-7",
        "index": 7,
        "line": 8,
        "body": {"model": "row-model", "messages": [{"role": "user", "content": "hi"}]},
        "keep": {},
        "slot": 21,
        "variant": "terse",
        "sample": 2,
        "expect": {"question": "What is 2+2?"},
    }
    base.update(changes)
    return Request(**base)


def good(passed: bool, score: float, reason: str = "r", **usage: Any) -> dict[str, Any]:
    """A vote as ``vote_of`` makes it from a judge answer that parsed."""
    return {
        "model": "judge-m",
        "requests": 1,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "cached": False,
        "pass": passed,
        "score": score,
        "reason": reason,
        "error": None,
        **usage,
    }


def bad(error: str = "judge: HTTP 500", **usage: Any) -> dict[str, Any]:
    return {
        "model": "judge-m",
        "requests": 3,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "cached": False,
        "error": error,
        **usage,
    }


def one_entry(judge: Judge, votes: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    entries, failures = judge.verdicts(votes)
    assert len(entries) == 1
    return entries[0], failures


# --- rubric_fields -------------------------------------------------------------------------------------------------


def test_rubric_fields_lists_each_name_once_in_order_output_included() -> None:
    assert rubric_fields("Does {output} answer {question} for {user}? ({question})") == ("output", "question", "user")


def test_rubric_fields_of_a_rubric_without_fields_is_empty_and_escaped_braces_are_not_fields() -> None:
    assert rubric_fields("Be polite.") == ()
    assert rubric_fields("Answer in {{json}} braces") == ()


def test_rubric_fields_dotted_and_indexed_fields_give_their_base() -> None:
    assert rubric_fields("{row.name} {items[0]} {meta[a].b} {output!r:>5}") == ("row", "items", "meta", "output")


@pytest.mark.parametrize("template", ["{", "}", "{}", "Judge {output} and {}", "{[0]}", "{output"])
def test_rubric_fields_refuses_a_template_that_cannot_be_filled(template: str) -> None:
    with pytest.raises(ValueError):
        rubric_fields(template)


def test_config_refuses_a_bad_rubric_template_naming_the_assert_number(tmp_path: Path) -> None:
    job = write_job(
        tmp_path,
        '[[assert]]\ntype = "contains"\nvalue = "x"\n\n[[assert]]\ntype = "llm-rubric"\nrubric = "Is {output} {}"\n',
    )
    error = config_error(tmp_path, job)
    assert "[[assert]] #2 (llm-rubric)" in str(error)
    assert "not a valid template" in str(error)
    assert "{{" in str(error)  # tells how to write a literal brace


@pytest.mark.parametrize("template", ["{", "Judge {} now"])
def test_assertion_refuses_a_bad_rubric_template(template: str) -> None:
    message = refusal({"type": RUBRIC, "rubric": template}, number=4)
    assert "[[assert]] #4 (llm-rubric): the rubric is not a valid template" in message


# --- Assertion.from_table for llm-rubric ---------------------------------------------------------------------------


def test_rubric_assertion_defaults() -> None:
    assertion = Assertion.from_table({"type": RUBRIC, "rubric": "Is it {output}?"}, 3)
    assert assertion.type == RUBRIC
    assert assertion.rubric == "Is it {output}?"
    assert assertion.name == "rubric-3"
    assert assertion.threshold == 0.5
    assert assertion.judge_model is None


def test_rubric_assertion_takes_name_judge_model_and_threshold() -> None:
    assertion = rubric(2, name="polite", judge_model="claude-4-5-haiku", threshold=1)
    assert (assertion.name, assertion.judge_model) == ("polite", "claude-4-5-haiku")
    assert assertion.threshold == 1.0 and isinstance(assertion.threshold, float)
    assert rubric(threshold=0).threshold == 0.0


@pytest.mark.parametrize("table", [{}, {"rubric": ""}, {"rubric": "   \n"}, {"rubric": 5}, {"rubric": None}])
def test_rubric_assertion_needs_a_rubric(table: dict[str, Any]) -> None:
    message = refusal({"type": RUBRIC, **table})
    assert "needs `rubric" in message


@pytest.mark.parametrize("threshold", [-0.01, 1.01, 2, True, False, "0.5", None, float("nan")])
def test_rubric_threshold_must_be_a_number_from_0_to_1(threshold: Any) -> None:
    message = refusal({"type": RUBRIC, "rubric": "{output}", "threshold": threshold})
    assert "`threshold` is a number from 0 to 1" in message
    assert repr(threshold) in message


def test_rubric_assertion_refuses_an_unknown_key_and_says_which_keys_it_takes() -> None:
    message = refusal({"type": RUBRIC, "rubric": "{output}", "value": "x", "colum": "y"})
    assert "unknown key(s) colum, value" in message
    for key in ("judge_model", "name", "rubric", "threshold", "type"):
        assert key in message


@pytest.mark.parametrize("name", ["", "   ", 5, None])
def test_rubric_name_must_be_a_non_empty_string(name: Any) -> None:
    message = refusal({"type": RUBRIC, "rubric": "{output}", "name": name})
    assert "`name` must be a non-empty string" in message


@pytest.mark.parametrize("model", ["", "  ", 5, ["m"], True])
def test_rubric_judge_model_must_be_a_model_name(model: Any) -> None:
    message = refusal({"type": RUBRIC, "rubric": "{output}", "judge_model": model})
    assert "`judge_model` must be a model name" in message


def test_rubric_as_dict_holds_everything_that_decides_a_verdict() -> None:
    assertion = rubric(1, name="polite", judge_model="jm", threshold=0.75)
    assert assertion.as_dict() == {
        "type": RUBRIC,
        "rubric": "Is {output} polite?",
        "name": "polite",
        "judge_model": "jm",
        "threshold": 0.75,
    }


@pytest.mark.parametrize(
    "change",
    [
        {"rubric": "Is {output} rude?"},
        {"name": "other"},
        {"judge_model": "another-model"},
        {"threshold": 0.9},
    ],
)
def test_a_rubric_change_changes_the_checkpoint_fingerprint(change: dict[str, Any]) -> None:
    before = RunConfig(input="in.jsonl", assertions=(rubric(1, name="polite"),))
    after = RunConfig(input="in.jsonl", assertions=(rubric(1, **{"name": "polite", **change}),))
    old, new = before.shaping_fingerprint(), after.shaping_fingerprint()
    assert old != new
    assert [k for k in old if old[k] != new.get(k)] == ["assert"]


def test_a_judge_repeat_change_changes_the_checkpoint_fingerprint() -> None:
    once = RunConfig(input="in.jsonl", assertions=(rubric(),), judge_repeat=1).shaping_fingerprint()
    thrice = RunConfig(input="in.jsonl", assertions=(rubric(),), judge_repeat=3).shaping_fingerprint()
    twice = RunConfig(input="in.jsonl", assertions=(rubric(),), judge_repeat=2).shaping_fingerprint()
    assert once != thrice and twice != thrice
    assert thrice["judge_repeat"] == 3
    assert "judge_repeat" not in once  # checkpoints made before judge_repeat existed stay valid


# --- evaluation.check ----------------------------------------------------------------------------------------------


def test_check_leaves_llm_rubric_assertions_to_the_judge() -> None:
    contains = Assertion.from_table({"type": "contains", "value": "yes"}, 1)
    record = {"status": Status.OK.value, "content": "no"}
    assert check((rubric(2),), record, None) == []
    assert check((rubric(1), contains), record, None) == ["contains"]
    assert check((rubric(1), contains), {"status": "ok", "content": "yes"}, None) == []


@pytest.mark.parametrize("status", [Status.ERROR.value, Status.INVALID.value])
def test_check_of_a_row_not_ok_is_status_even_with_only_a_rubric(status: str) -> None:
    assert check((rubric(),), {"status": status, "content": None}, None) == ["status"]


# --- config: judge_repeat ------------------------------------------------------------------------------------------


RUBRIC_TABLE = '[[assert]]\ntype = "llm-rubric"\nrubric = "Is {output} polite?"\n'


def write_job(tmp_path: Path, text: str) -> str:
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n', encoding="utf-8")
    path = tmp_path / "job.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def run_flags(tmp_path: Path, job: str | None, **given: Any) -> dict[str, Any]:
    return {
        "job": job,
        "input": str(tmp_path / "in.jsonl"),
        "output": str(tmp_path / "out.jsonl"),
        "judge_repeat": None,
        **given,
    }


def config_error(tmp_path: Path, job: str | None, **given: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        resolve(run_flags(tmp_path, job, **given), ENV)
    assert info.value.exit_code == 2
    return info.value


def test_judge_repeat_defaults_to_1(tmp_path: Path) -> None:
    cfg = resolve(run_flags(tmp_path, write_job(tmp_path, RUBRIC_TABLE)), ENV)
    assert cfg.judge_repeat == 1
    assert [a.type for a in cfg.assertions] == [RUBRIC]


@pytest.mark.parametrize("where", ["flag", "job"])
def test_judge_repeat_0_is_refused(tmp_path: Path, where: str) -> None:
    if where == "flag":
        error = config_error(tmp_path, write_job(tmp_path, RUBRIC_TABLE), judge_repeat=0)
    else:
        error = config_error(tmp_path, write_job(tmp_path, "judge_repeat = 0\n" + RUBRIC_TABLE))
    assert "--judge-repeat" in str(error) and "at least 1" in str(error)


def test_judge_repeat_above_1_without_an_llm_rubric_is_refused(tmp_path: Path) -> None:
    job = write_job(tmp_path, '[[assert]]\ntype = "contains"\nvalue = "x"\n')
    error = config_error(tmp_path, job, judge_repeat=2)
    assert "--judge-repeat" in str(error) and "llm-rubric" in str(error)
    error = config_error(tmp_path, None, judge_repeat="2")  # no job file, no assertions at all
    assert "llm-rubric" in str(error)


def test_judge_repeat_above_1_with_an_llm_rubric_is_fine(tmp_path: Path) -> None:
    cfg = resolve(run_flags(tmp_path, write_job(tmp_path, RUBRIC_TABLE), judge_repeat=2), ENV)
    assert cfg.judge_repeat == 2
    cfg = resolve(run_flags(tmp_path, write_job(tmp_path, "judge_repeat = 3\n" + RUBRIC_TABLE)), ENV)
    assert cfg.judge_repeat == 3
    assert cfg.shaping_fingerprint()["judge_repeat"] == 3


# --- Judge.of / request ------------------------------------------------------------------------------------------


def test_judge_of_keeps_only_the_rubrics_and_is_none_without_any() -> None:
    contains = Assertion.from_table({"type": "contains", "value": "x"}, 1)
    assert Judge.of((contains,), 1, "m", "api") is None
    judge = Judge.of((contains, rubric(2, name="a"), rubric(3, name="b")), 2, "m", "prompt")
    assert judge is not None
    assert [r.name for r in judge.rubrics] == ["a", "b"]
    assert (judge.repeat, judge.default_model, judge.schema_mode) == (2, "m", "prompt")


def test_judge_columns_are_the_rubrics_row_columns_without_output() -> None:
    judge = Judge((rubric(1, rubric="{output} vs {expected}"), rubric(2, rubric="{question} {meta[a]}")))
    assert judge.columns == {"expected", "question", "meta"}


def test_request_body_in_api_mode() -> None:
    judge = Judge((rubric(1, rubric="Does {output} answer {question}?"),), default_model="run-model")
    request = judge.request(item(), "Four.", 0, 0)
    assert isinstance(request, Request)
    body = request.body
    assert body["model"] == "run-model"
    assert body["max_tokens"] == MAX_TOKENS
    assert body["stream"] is False
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Does Four. answer What is 2+2??"},
    ]
    response_format = body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == SCHEMA_NAME == "judge_verdict"
    assert response_format["json_schema"]["schema"] == JUDGE_SCHEMA


def test_api_mode_response_format_is_strict_as_the_contract_says() -> None:
    """Contract: {"type": "json_schema", "json_schema": {"name": "judge_verdict", "schema": ..., "strict": true}}."""
    request = Judge((rubric(),), default_model="m").request(item(), "x", 0, 0)
    assert isinstance(request, Request)
    assert request.body["response_format"]["json_schema"].get("strict") is True


def test_the_judge_model_is_the_rubrics_else_the_runs_else_the_rows() -> None:
    own = Judge((rubric(judge_model="rubric-model"),), default_model="run-model")
    run = Judge((rubric(),), default_model="run-model")
    row = Judge((rubric(),), default_model=None)
    for judge, expected in ((own, "rubric-model"), (run, "run-model"), (row, "row-model")):
        request = judge.request(item(), "x", 0, 0)
        assert isinstance(request, Request)
        assert request.body["model"] == expected
        assert judge.model_for(0, item()) == expected
    nothing = item(body={"messages": [{"role": "user", "content": "hi"}]})
    request = row.request(nothing, "x", 0, 0)
    assert isinstance(request, Request)
    assert row.model_for(0, nothing) is None


def test_request_in_json_object_mode_sends_the_schema_with_json_object() -> None:
    request = Judge((rubric(),), default_model="m", schema_mode="json-object").request(item(), "x", 0, 0)
    assert isinstance(request, Request)
    assert request.body["response_format"] == {"type": "json_object", "schema": JUDGE_SCHEMA}
    assert request.body["messages"][0] == {"role": "system", "content": SYSTEM}


def test_request_in_prompt_mode_states_the_schema_in_the_system_message() -> None:
    request = Judge((rubric(),), default_model="m", schema_mode="prompt").request(item(), "x", 0, 0)
    assert isinstance(request, Request)
    assert "response_format" not in request.body
    messages = request.body["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]  # one system message, not two
    system = messages[0]["content"]
    assert system.startswith(SYSTEM)
    assert STATED_SCHEMA in system
    assert orjson.loads(system.split(STATED_SCHEMA, 1)[1]) == JUDGE_SCHEMA
    assert messages[1]["content"] == "Is x polite?"
    assert request.structure is not None  # held to the schema all the same


def test_request_fills_output_and_row_columns_and_shows_none_as_empty() -> None:
    judge = Judge((rubric(rubric="Q={question} E={expected} A={output} M={meta[k]}"),), default_model="m")
    row = item(expect={"question": "Why?", "expected": None, "meta": {"k": 3}})
    request = judge.request(row, "Because {question}.", 0, 0)
    assert isinstance(request, Request)
    # the answer's own braces are not a template
    assert request.body["messages"][1]["content"] == "Q=Why? E= A=Because {question}. M=3"
    request = judge.request(row, None, 0, 0)
    assert isinstance(request, Request)
    assert "A= M=3" in request.body["messages"][1]["content"]


def test_a_rubric_without_output_gets_the_answer_appended() -> None:
    judge = Judge((rubric(rubric="The answer must be polite to {question}."),), default_model="m")
    request = judge.request(item(), "Sure thing!", 0, 0)
    assert isinstance(request, Request)
    text = request.body["messages"][1]["content"]
    assert text.startswith("The answer must be polite to What is 2+2?.")
    assert text.endswith("Sure thing!\n</answer>")
    assert text.index("What is 2+2?") < text.index("Sure thing!")
    escaped = Judge((rubric(rubric="Answer {{output}} literally"),), default_model="m").request(item(), "A!", 0, 0)
    assert isinstance(escaped, Request)
    text = escaped.body["messages"][1]["content"]
    assert text.startswith("Answer {output} literally") and "A!" in text


def test_a_column_the_row_lacks_is_a_problem_naming_it() -> None:
    judge = Judge((rubric(rubric="{output} {question} {reference} {extra}"),), default_model="m")
    problem = judge.request(item(expect={"question": "q"}), "x", 0, 0)
    assert isinstance(problem, str)
    assert "reference" in problem and "extra" in problem
    assert "question" not in problem
    no_expect = judge.request(item(expect=None), "x", 0, 0)
    assert isinstance(no_expect, str) and "question" in no_expect


def test_the_request_is_the_items_slot_with_the_vote_as_its_sample() -> None:
    judge = Judge((rubric(1, name="a"), rubric(2, name="b")), repeat=3, default_model="m")
    source = item()  # answer sample 2
    request = judge.request(source, "x", 1, 2)
    assert isinstance(request, Request)
    # Each vote of each answer sample is its own cached sample: answer sample 2, vote 2 of 3.
    assert request.sample == 2 * 3 + 2
    samples = {
        r.sample
        for s in range(3)
        for k in range(3)
        if isinstance(r := judge.request(item(sample=s), "x", 1, k), Request)
    }
    assert samples == set(range(9))
    assert (request.id, request.index, request.line, request.slot, request.variant) == (
        source.id,
        source.index,
        source.line,
        source.slot,
        source.variant,
    )
    assert request.run_format is True
    assert request.keep == {}
    other = judge.request(source, "x", 1, 0)
    assert isinstance(other, Request) and other.sample == 2 * 3 + 0
    assert other.body == request.body  # the votes differ only by their sample (each its own cache entry)


def test_the_request_structure_accepts_a_verdict_and_refuses_anything_else() -> None:
    request = Judge((rubric(),), default_model="m").request(item(), "x", 0, 0)
    assert isinstance(request, Request) and request.structure is not None
    parsed, problem = request.structure.check('{"pass": true, "score": 0.7, "reason": "fine"}')
    assert problem is None and orjson.loads(parsed or "") == {"pass": True, "score": 0.7, "reason": "fine"}
    for answer in (
        '{"pass": "yes"}',
        '{"pass": "yes", "score": 0.5, "reason": "r"}',
        '{"pass": true, "score": 1.5, "reason": "r"}',
        '{"pass": true, "score": 0.5}',
        '{"pass": true, "score": 0.5, "reason": "r", "extra": 1}',
        "not json",
    ):
        parsed, problem = request.structure.check(answer)
        assert parsed is None and problem, answer


# --- Judge.missing -----------------------------------------------------------------------------------------------


def test_missing_is_every_pair_when_no_vote_is_in() -> None:
    judge = Judge((rubric(1), rubric(2)), repeat=2)
    assert judge.missing({}) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_missing_is_none_when_every_vote_is_in() -> None:
    judge = Judge((rubric(1), rubric(2)), repeat=2)
    votes = {vote_key(r, k): good(True, 1.0) for r in range(2) for k in range(2)}
    assert judge.missing(votes) == []
    votes[vote_key(1, 0)] = bad()  # an errored vote is in: it is not asked again
    assert judge.missing(votes) == []


def test_missing_counts_a_vote_a_stop_cut_off_and_only_the_absent_ones() -> None:
    judge = Judge((rubric(1), rubric(2)), repeat=2)
    votes = {
        vote_key(0, 0): good(True, 1.0),
        vote_key(0, 1): {"model": "m", "requests": 1, "prompt_tokens": 5, "resend": True},
        vote_key(1, 1): good(False, 0.0),
    }
    assert judge.missing(votes) == [(0, 1), (1, 0)]
    assert vote_key(1, 0) == "1:0"


# --- Judge.verdicts: one vote --------------------------------------------------------------------------------------


def test_one_vote_that_passes_above_the_threshold_holds() -> None:
    judge = Judge((rubric(name="polite", judge_model="jm"),))
    entry, failures = one_entry(judge, {"0:0": good(True, 0.8, "kind", model="judge-x")})
    assert failures == []
    assert entry["holds"] is True
    assert (entry["name"], entry["pass"], entry["score"], entry["reason"]) == ("polite", True, 0.8, "kind")
    assert entry["threshold"] == 0.5
    assert entry["model"] == "judge-x"
    assert entry["error"] is None
    assert entry["votes"] == 1
    assert entry["agreement"] is None
    assert "pending" not in entry
    contract = {"name", "pass", "score", "reason", "holds", "threshold", "model", "requests", "prompt_tokens"}
    contract |= {"completion_tokens", "cached_tokens", "cached", "error", "votes", "agreement"}
    assert contract <= set(entry)


def test_a_score_exactly_at_the_threshold_holds() -> None:
    for threshold in (0.0, 0.7, 1.0):
        judge = Judge((rubric(threshold=threshold),))
        entry, failures = one_entry(judge, {"0:0": good(True, threshold)})
        assert entry["holds"] is True and failures == [], threshold


def test_a_score_below_the_threshold_fails() -> None:
    judge = Judge((rubric(threshold=0.7),))
    entry, failures = one_entry(judge, {"0:0": good(True, 0.69)})
    assert entry["holds"] is False and entry["pass"] is True
    assert failures == [FAILED] == ["llm-rubric"]


def test_pass_false_fails_even_with_a_perfect_score() -> None:
    judge = Judge((rubric(threshold=0.0),))
    entry, failures = one_entry(judge, {"0:0": good(False, 1.0)})
    assert entry["holds"] is False and entry["pass"] is False and entry["score"] == 1.0
    assert failures == ["llm-rubric"]


def test_the_model_falls_back_to_the_rubrics_judge_model() -> None:
    judge = Judge((rubric(judge_model="jm"),))
    entry, _ = one_entry(judge, {"0:0": {**good(True, 1.0), "model": None}})
    assert entry["model"] == "jm"


# --- Judge.verdicts: several votes ---------------------------------------------------------------------------------


def test_two_of_three_holding_votes_hold_with_agreement_two_thirds() -> None:
    judge = Judge((rubric(),), repeat=3)
    votes = {"0:0": good(True, 0.9, "yes-1"), "0:1": good(False, 0.2, "no"), "0:2": good(True, 0.6, "yes-2")}
    entry, failures = one_entry(judge, votes)
    assert failures == []
    assert entry["holds"] is True and entry["pass"] is True
    assert entry["agreement"] == 0.6667
    assert entry["votes"] == 3
    assert entry["score"] == round((0.9 + 0.2 + 0.6) / 3, 4)
    assert entry["reason"] == "yes-1"  # a reason agreeing with the majority


def test_one_of_three_holding_fails_with_a_dissenting_reason_not_shown() -> None:
    judge = Judge((rubric(),), repeat=3)
    votes = {"0:0": good(True, 0.9, "yes"), "0:1": good(False, 0.2, "no-1"), "0:2": good(True, 0.3, "no-2")}
    entry, failures = one_entry(judge, votes)
    assert entry["holds"] is False and failures == ["llm-rubric"]
    assert entry["reason"] == "no-1"
    assert entry["agreement"] == 0.6667


def test_a_tie_fails() -> None:
    judge = Judge((rubric(),), repeat=2)
    entry, failures = one_entry(judge, {"0:0": good(True, 0.9, "yes"), "0:1": good(True, 0.1, "low")})
    assert entry["holds"] is False
    assert failures == ["llm-rubric"]
    assert entry["agreement"] == 0.5
    assert entry["reason"] == "low"


def test_an_errored_vote_is_left_out_of_the_majority_but_its_tokens_count() -> None:
    judge = Judge((rubric(),), repeat=3)
    votes = {
        "0:0": good(True, 0.9, requests=1, prompt_tokens=100, completion_tokens=10),
        "0:1": bad(requests=3, prompt_tokens=300, completion_tokens=0),
        "0:2": good(True, 0.7, requests=2, prompt_tokens=200, completion_tokens=20, cached_tokens=50),
    }
    entry, failures = one_entry(judge, votes)
    assert failures == []
    assert entry["holds"] is True and entry["error"] is None
    assert entry["votes"] == 2
    assert entry["agreement"] == 1.0
    assert entry["score"] == 0.8
    assert (entry["requests"], entry["prompt_tokens"], entry["completion_tokens"], entry["cached_tokens"]) == (
        6,
        600,
        30,
        50,
    )


def test_an_errored_vote_can_turn_a_majority_into_a_tie() -> None:
    judge = Judge((rubric(),), repeat=3)
    votes = {"0:0": good(True, 0.9), "0:1": bad(), "0:2": good(False, 0.1)}
    entry, failures = one_entry(judge, votes)
    assert entry["holds"] is False and failures == ["llm-rubric"]
    assert entry["votes"] == 2


def test_all_votes_errored_is_a_rubric_error_with_its_text() -> None:
    judge = Judge((rubric(),), repeat=2)
    votes = {
        "0:0": bad("judge: HTTP 500: boom", requests=3, prompt_tokens=0),
        "0:1": bad("judge: $.pass: 'yes' is not of type 'boolean'", requests=3, prompt_tokens=40, completion_tokens=9),
    }
    entry, failures = one_entry(judge, votes)
    assert failures == [ERROR] == ["llm-rubric:error"]
    assert entry["error"] == "judge: HTTP 500: boom"
    assert entry["holds"] is False
    assert entry["pass"] is None and entry["score"] is None
    assert entry["votes"] == 0
    assert (entry["requests"], entry["prompt_tokens"], entry["completion_tokens"]) == (6, 40, 9)


def test_a_missing_vote_leaves_the_verdict_pending() -> None:
    judge = Judge((rubric(),), repeat=2)
    entry, failures = one_entry(judge, {"0:0": good(True, 1.0, prompt_tokens=30, completion_tokens=5)})
    assert entry["pending"] is True
    assert failures == [PENDING] == ["llm-rubric:pending"]
    assert entry["holds"] is False and entry["error"] is None
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (30, 5)  # paid so far
    entry, failures = one_entry(Judge((rubric(),)), {})
    assert entry["pending"] is True and failures == ["llm-rubric:pending"]
    assert entry["cached"] is False  # nothing came from the cache: nothing came at all


def test_a_vote_a_stop_cut_off_leaves_the_verdict_pending_even_after_errors() -> None:
    judge = Judge((rubric(),), repeat=2)
    votes = {"0:0": bad(), "0:1": {"model": "jm", "requests": 1, "prompt_tokens": 7, "resend": True}}
    entry, failures = one_entry(judge, votes)
    assert entry.get("pending") is True
    assert failures == ["llm-rubric:pending"]
    assert entry["prompt_tokens"] == 7


def test_usage_is_summed_over_every_vote_and_cached_only_when_all_were() -> None:
    judge = Judge((rubric(),), repeat=3)
    votes = {
        f"0:{k}": good(True, 1.0, requests=k, prompt_tokens=10 * (k + 1), completion_tokens=k + 1, cached_tokens=k)
        for k in range(3)
    }
    entry, _ = one_entry(judge, votes)
    assert (entry["requests"], entry["prompt_tokens"], entry["completion_tokens"], entry["cached_tokens"]) == (
        3,
        60,
        6,
        3,
    )
    assert entry["cached"] is False
    cached = {key: {**vote, "cached": True, "requests": 0} for key, vote in votes.items()}
    entry, _ = one_entry(judge, cached)
    assert entry["cached"] is True and entry["requests"] == 0


def test_votes_beyond_the_repeat_count_are_not_counted() -> None:
    judge = Judge((rubric(),), repeat=1)
    entry, failures = one_entry(judge, {"0:0": good(True, 1.0), "0:1": good(False, 0.0, prompt_tokens=99)})
    assert entry["holds"] is True and failures == []
    assert entry["prompt_tokens"] == 0 and entry["votes"] == 1


def test_two_rubrics_give_two_entries_in_job_order_and_failures_once_each() -> None:
    judge = Judge((rubric(1, name="first"), rubric(2, name="second"), rubric(3, name="third")))
    entries, failures = judge.verdicts({"0:0": good(False, 0.0), "1:0": good(True, 0.1), "2:0": good(True, 1.0)})
    assert [e["name"] for e in entries] == ["first", "second", "third"]
    assert [e["holds"] for e in entries] == [False, False, True]
    assert failures == ["llm-rubric"]
    entries, failures = judge.verdicts({"0:0": bad(), "1:0": good(False, 0.0), "2:0": bad()})
    assert failures == ["llm-rubric:error", "llm-rubric"]
    entries, failures = judge.verdicts({"0:0": good(True, 1.0), "2:0": bad()})
    assert failures == ["llm-rubric:pending", "llm-rubric:error"]
    assert entries[0]["holds"] is True


# --- vote_of -------------------------------------------------------------------------------------------------------


def judge_result(**changes: Any) -> Result:
    base: dict[str, Any] = {
        "id": "row-7",
        "index": 7,
        "status": Status.OK,
        "status_code": 200,
        "content": '{"pass":true,"score":0.7,"reason":"r"}',
        "model": "judge-served",
        "prompt_tokens": 120,
        "completion_tokens": 30,
        "total_tokens": 150,
        "cached_tokens": 20,
        "attempts": 2,
        "parsed": '{"pass":true,"score":0.7,"reason":"r"}',
        "structured": True,
    }
    base.update(changes)
    return Result(**base)


def test_vote_of_a_parsed_answer() -> None:
    vote = vote_of(judge_result(), "asked-model")
    assert vote == {
        "model": "judge-served",
        "requests": 2,
        "prompt_tokens": 120,
        "completion_tokens": 30,
        "cached_tokens": 20,
        "cached": False,
        "pass": True,
        "score": 0.7,
        "reason": "r",
        "error": None,
    }
    assert "resend" not in vote


def test_vote_of_a_cached_answer_without_usage_or_model() -> None:
    result = judge_result(
        model=None, prompt_tokens=None, completion_tokens=None, cached_tokens=None, attempts=0, cached=True
    )
    vote = vote_of(result, "asked-model")
    assert vote["model"] == "asked-model"
    assert (vote["requests"], vote["prompt_tokens"], vote["completion_tokens"], vote["cached_tokens"]) == (0, 0, 0, 0)
    assert vote["cached"] is True and vote["pass"] is True


def test_vote_of_an_error_keeps_the_error_text_prefixed() -> None:
    result = Result("row-7", 7, Status.ERROR, 500, error="HTTP 500: upstream boom", attempts=3, prompt_tokens=None)
    vote = vote_of(result, "jm")
    assert vote["error"] == "judge: HTTP 500: upstream boom"
    assert vote["requests"] == 3 and vote["model"] == "jm"
    assert "pass" not in vote and "resend" not in vote
    mismatch = judge_result(status=Status.ERROR, parsed=None, error="schema_mismatch: $.pass: not boolean")
    vote = vote_of(mismatch, "jm")
    assert vote["error"] == "judge: schema_mismatch: $.pass: not boolean"
    assert vote["prompt_tokens"] == 120  # a mismatching answer was still paid for
    unparsed = judge_result(parsed=None, error=None)
    assert vote_of(unparsed, "jm")["error"] == "judge: no verdict"


def test_vote_of_a_result_a_stop_cut_off_is_a_resend() -> None:
    result = judge_result(status=Status.ERROR, parsed=None, resend=True, error="schema_mismatch: $: not JSON")
    vote = vote_of(result, "jm")
    assert vote["resend"] is True
    assert "error" not in vote and "pass" not in vote
    assert vote["prompt_tokens"] == 120 and vote["requests"] == 2
    judge = Judge((rubric(),))
    assert judge.missing({"0:0": vote}) == [(0, 0)]


def test_vote_of_carries_an_earlier_resend_votes_tokens() -> None:
    earlier = vote_of(judge_result(status=Status.ERROR, parsed=None, resend=True), "jm")
    vote = vote_of(judge_result(cached=True), "jm", earlier)
    assert vote["requests"] == 4
    assert (vote["prompt_tokens"], vote["completion_tokens"], vote["cached_tokens"]) == (240, 60, 40)
    assert vote["cached"] is False  # part of it was paid for
    assert vote["pass"] is True and "resend" not in vote


def test_vote_of_ignores_an_earlier_vote_that_was_not_a_resend() -> None:
    earlier = vote_of(judge_result(), "jm")
    vote = vote_of(judge_result(), "jm", earlier)
    assert (vote["requests"], vote["prompt_tokens"]) == (2, 120)


# --- checkpoint accounting -----------------------------------------------------------------------------------------


MANIFEST = {"input": {"size": 1, "hash": "x"}, "shaping": {}}


def judged_line(index: int, entries: list[dict[str, Any]], *, pending: bool, votes: dict[str, Any] | None = None):
    record: dict[str, Any] = {
        "id": f"r{index}",
        "index": index,
        "status": "ok",
        "status_code": 200,
        "content": "answer",
        "model": "answer-model",
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "total_tokens": 110,
        "attempts": 1,
        "cached_tokens": 0,
        "variant": None,
        "sample": 0,
        "passed": False,
        "failures": '["llm-rubric:pending"]' if pending else "[]",
        "cached": False,
        JUDGE: orjson.dumps(entries).decode(),
    }
    if pending:
        record[JUDGE_PENDING_KEY] = True
        record[VOTES_KEY] = votes or {}
    return record


def entry(prompt: int, completion: int, *, pending: bool = False, model: str = "judge-model") -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "polite",
        "pass": None if pending else True,
        "score": None if pending else 1.0,
        "reason": "x",
        "holds": not pending,
        "threshold": 0.5,
        "model": model,
        "requests": 1,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": 0,
        "cached": False,
        "error": None,
        "votes": 1,
        "agreement": None,
    }
    if pending:
        data["pending"] = True
    return data


def open_with_lines(tmp_path: Path, records: list[dict[str, Any]]) -> Checkpoint:
    output = str(tmp_path / "out.jsonl")
    Checkpoint.open_for_run(output, MANIFEST, restart=False).close()  # makes the manifest
    lines = b"".join(orjson.dumps(r) + b"\n" for r in records)
    (tmp_path / "out.jsonl.checkpoint" / "results.jsonl").write_bytes(lines)
    return Checkpoint.open_for_run(output, MANIFEST, restart=False)


def test_resumed_tokens_count_a_judged_rows_final_line_once(tmp_path: Path) -> None:
    votes = {"0:0": good(True, 1.0, prompt_tokens=30, completion_tokens=4)}
    pending = judged_line(0, [entry(30, 4, pending=True)], pending=True, votes=votes)
    final = judged_line(0, [entry(50, 6)], pending=False)
    checkpoint = open_with_lines(tmp_path, [pending, final])
    try:
        resumed = checkpoint.resumed
        assert resumed.prompt_tokens == 100 + 50  # not 100 + 30 + 100 + 50
        assert resumed.completion_tokens == 10 + 6
        assert resumed.usage_by_model["answer-model"] == (100, 10, 0)
        assert resumed.usage_by_model["judge-model"] == (50, 6, 0)
        assert checkpoint.judge_pending == {}
        assert checkpoint.needs_sending(0, retry_errors=False) is False
        assert resumed.finished == 1
    finally:
        checkpoint.close()


def test_resumed_tokens_of_a_row_still_pending_are_its_last_pending_line(tmp_path: Path) -> None:
    first = judged_line(1, [entry(0, 0, pending=True)], pending=True)
    second = judged_line(1, [entry(30, 4, pending=True)], pending=True, votes={"0:0": good(True, 1.0)})
    checkpoint = open_with_lines(tmp_path, [first, second])
    try:
        assert checkpoint.resumed.prompt_tokens == 100 + 30
        assert checkpoint.resumed.completion_tokens == 10 + 4
        assert list(checkpoint.judge_pending) == [1]
        assert checkpoint.judge_pending[1][VOTES_KEY] == {"0:0": good(True, 1.0)}
    finally:
        checkpoint.close()


def test_judge_pending_holds_a_slot_whose_last_line_is_pending_only(tmp_path: Path) -> None:
    records = [
        judged_line(0, [entry(10, 1, pending=True)], pending=True),  # row 0: pending, then final
        judged_line(1, [entry(10, 1, pending=True)], pending=True),  # row 1: pending only
        judged_line(0, [entry(20, 2)], pending=False),
        judged_line(2, [entry(20, 2)], pending=False),  # row 2: final only
    ]
    checkpoint = open_with_lines(tmp_path, records)
    try:
        assert set(checkpoint.judge_pending) == {1}
        assert checkpoint.judge_pending[1]["index"] == 1
        assert checkpoint.needs_sending(1, retry_errors=False) is True
        assert checkpoint.needs_sending(0, retry_errors=False) is False
        assert checkpoint.needs_sending(2, retry_errors=False) is False
        assert checkpoint.needs_sending(3, retry_errors=False) is True  # never finished
        assert checkpoint.resumed.prompt_tokens == 3 * 100 + 20 + 10 + 20
        assert checkpoint.resumed.completion_tokens == 3 * 10 + 2 + 1 + 2
    finally:
        checkpoint.close()


# --- Summary -------------------------------------------------------------------------------------------------------


def summary_record(index: int, variant: str, entries: list[dict[str, Any]], *, passed: bool) -> dict[str, Any]:
    return {
        "id": f"r{index}",
        "index": index,
        "status": "ok",
        "status_code": 200,
        "content": "answer",
        "finish_reason": "stop",
        "model": "claude-4-5-sonnet",
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "total_tokens": 1100,
        "attempts": 1,
        "latency_ms": 10.0,
        "cached_tokens": 0,
        "variant": variant,
        "sample": 0,
        "passed": passed,
        "failures": "[]" if passed else '["llm-rubric"]',
        "cached": False,
        JUDGE: orjson.dumps(entries).decode(),
    }


def verdict(
    holds: bool, *, error: str | None = None, pending: bool = False, cached: bool = False, **usage: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "polite",
        "pass": holds if error is None and not pending else None,
        "score": (1.0 if holds else 0.0) if error is None and not pending else None,
        "reason": "r",
        "holds": holds,
        "threshold": 0.5,
        "model": "claude-4-5-haiku",
        "requests": 1,
        "prompt_tokens": 2000,
        "completion_tokens": 200,
        "cached_tokens": 0,
        "cached": cached,
        "error": error,
        "votes": 0 if error or pending else 1,
        "agreement": None,
        **usage,
    }
    if pending:
        data["pending"] = True
    return data


def judged_summary() -> Summary:
    summary = Summary(pricing=Pricing(), default_model="claude-4-5-sonnet")
    summary.add(summary_record(0, "a", [verdict(True, agreement=1.0)], passed=True))
    summary.add(summary_record(1, "a", [verdict(False, error="judge: HTTP 500", requests=3)], passed=False))
    summary.add(summary_record(2, "b", [verdict(False, pending=True)], passed=False))
    summary.add(summary_record(3, "b", [verdict(False, agreement=0.5), verdict(True, cached=True)], passed=False))
    return summary


def test_summary_counts_judge_verdicts_apart_from_pending_ones() -> None:
    judge = judged_summary().judge
    assert judge is not None
    assert judge.verdicts == 4  # pending entries are not verdicts
    assert judge.passed == 2
    assert judge.errors == 1
    assert judge.pending == 1
    assert judge.cached == 1
    assert judge.requests == 1 + 3 + 1 + 1 + 1
    assert judge.prompt_tokens == 5 * 2000  # the pending one was paid for too
    assert judge.completion_tokens == 5 * 200


def test_summary_bills_the_judge_apart_and_totals_both() -> None:
    data = judged_summary().as_dict()
    answers = 4 * (1000 * 3.00 + 100 * 15.00) / 1_000_000
    judge_cost = 5 * (2000 * 1.00 + 200 * 5.00) / 1_000_000
    assert data["prompt_tokens"] == 4000 and data["completion_tokens"] == 400  # the answers' only
    assert data["cost_usd"] == pytest.approx(round(answers, 4))
    assert data["judge"]["cost_usd"] == pytest.approx(round(judge_cost, 4))
    assert data["total_cost_usd"] == pytest.approx(round(answers + judge_cost, 4))
    assert set(data["judge"]) >= {
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cost_usd",
        "verdicts",
        "passed",
        "errors",
        "cached",
    }
    assert not {"pass_rate", "wilson_low", "wilson_high"} & set(data["judge"])
    assert (data["judge"]["verdicts"], data["judge"]["passed"], data["judge"]["errors"]) == (4, 2, 1)
    assert data["judge"]["pending"] == 1
    assert data["judge"]["agreement"] == 0.75


def test_summary_has_judge_stats_per_variant() -> None:
    variants = judged_summary().as_dict()["variants"]
    a, b = variants["a"]["judge"], variants["b"]["judge"]
    for stats in (a, b):
        assert {
            "verdicts",
            "passed",
            "errors",
            "pass_rate",
            "wilson_low",
            "wilson_high",
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
            "agreement",
        } <= set(stats)
    assert (a["verdicts"], a["passed"], a["errors"], a["requests"]) == (2, 1, 1, 4)
    assert a["pass_rate"] == 1.0  # the error is no verdict on the answer: out of the pass rate
    assert (b["verdicts"], b["passed"], b["errors"], b["pending"]) == (2, 1, 0, 1)
    assert b["pass_rate"] == 0.5
    assert b["prompt_tokens"] == 3 * 2000
    assert b["cost_usd"] == pytest.approx(round(3 * (2000 * 1.00 + 200 * 5.00) / 1_000_000, 4))
    assert a["agreement"] == 1.0 and b["agreement"] == 0.5
    assert variants["a"]["prompt_tokens"] == 2000  # the variant's answers only


def test_summary_judge_cost_is_unknown_for_an_unpriced_judge_model_and_no_total_then() -> None:
    summary = Summary(pricing=Pricing(), default_model="claude-4-5-sonnet")
    summary.add(summary_record(0, "a", [verdict(True, model="no-such-model")], passed=True))
    data = summary.as_dict()
    assert data["cost_usd"] is not None
    assert data["judge"]["cost_usd"] is None
    assert "total_cost_usd" not in data
    assert "cost_usd=unknown" in next(line for line in summary.lines() if line.startswith("summary_judge "))


def test_summary_without_a_judge_column_has_no_judge_block() -> None:
    summary = Summary(pricing=Pricing(), default_model="claude-4-5-sonnet")
    record = summary_record(0, "a", [], passed=True)
    del record[JUDGE]
    summary.add(record)
    data = summary.as_dict()
    assert "judge" not in data and "total_cost_usd" not in data
    assert "judge" not in data["variants"]["a"]
    assert not any(line.startswith("summary_judge") for line in summary.lines())


def test_summary_lines_have_a_summary_judge_line() -> None:
    lines = judged_summary().lines(run_figures=False)
    judge_lines = [line for line in lines if line.startswith("summary_judge ")]
    assert len(judge_lines) == 1
    line = judge_lines[0]
    for field in ("requests=7", "prompt=10000", "completion=1000", "verdicts=4", "passed=2", "errors=1", "cached=1"):
        assert f" {field}" in line, (field, line)
    assert "cost_usd=0.015" in line


# --- pinned by the mutation run (benchmarks/mutation, judging.py) ----------------------------------------------------


def test_a_problem_vote_sent_nothing_and_cost_nothing() -> None:
    from inferbatch.judging import problem_vote

    assert problem_vote("the rubric needs column(s) q which the row lacks", "judge-m") == {
        "model": "judge-m",
        "requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "cached": False,
        "error": "judge: the rubric needs column(s) q which the row lacks",
    }


def test_the_judge_models_are_each_rubrics_own_else_the_runs() -> None:
    named = Judge((rubric(1, judge_model="j1"), rubric(2)), default_model="run-m")
    assert named.models() == {"j1", "run-m"}
    assert Judge((rubric(1, judge_model="j1"),), default_model=None).models() == {"j1"}


def test_a_rubric_that_cannot_be_filled_for_a_row_is_a_problem_not_a_crash() -> None:
    judge = Judge((rubric(rubric="Is {output} about {question[0]}?"),), default_model="m")
    problem = judge.request(item(expect={"question": 5}), "x", 0, 0)  # 5[0]: not subscriptable
    assert isinstance(problem, str) and problem.startswith("the rubric could not be filled (")


def test_the_judges_own_pass_is_the_strict_majority_of_its_votes_too() -> None:
    judge = Judge((rubric(threshold=0.0),), repeat=2, default_model="m")
    split = {vote_key(0, 0): good(True, 0.9), vote_key(0, 1): good(False, 0.9)}
    entry, _ = one_entry(judge, split)
    assert entry["pass"] is False  # one of two is no majority


def test_an_earlier_resend_vote_missing_a_count_adds_nothing_for_it() -> None:
    earlier = {"model": "judge-m", "requests": 2, "prompt_tokens": 10, "resend": True}  # no completion/cached counts
    answer = Result(
        "row-7",
        7,
        Status.OK,
        200,
        content='{"pass":true,"score":0.9,"reason":"ok"}',
        prompt_tokens=5,
        completion_tokens=3,
        cached_tokens=1,
        attempts=1,
        parsed='{"pass":true,"score":0.9,"reason":"ok"}',
    )
    vote = vote_of(answer, "judge-m", earlier)
    counts = (vote["requests"], vote["prompt_tokens"], vote["completion_tokens"], vote["cached_tokens"])
    assert counts == (3, 15, 3, 1)


def test_the_judge_asks_for_at_most_1024_completion_tokens() -> None:
    """The budget reserves this much per judge call before it is sent: a larger cap stops runs sooner."""
    request = Judge((rubric(),), default_model="m").request(item(), "x", 0, 0)
    assert isinstance(request, Request) and request.body["max_tokens"] == MAX_TOKENS == 1024
