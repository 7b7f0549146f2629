"""One output row from one answer or one failure, field by field (SPEC §3). Found by the mutation run."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from inferbatch import results
from inferbatch.errors import Fatal, Retryable
from inferbatch.results import COLUMNS, EVAL_COLUMNS, Evaluation, Result, Status


def _answer(message: dict[str, object], **extra: object) -> dict[str, object]:
    return {"choices": [{"message": message, "finish_reason": "tool_calls"}], **extra}


def test_an_answer_with_only_tool_calls_has_null_content_not_the_text_null() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    record = Result.answered(
        "r",
        0,
        _answer({"role": "assistant", "content": None, "tool_calls": calls}),
        status_code=200,
        attempts=1,
        latency_ms=12.5,
        request_id=None,
    ).record()
    assert record["content"] is None
    assert record["tool_calls"] == '[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]'


def test_content_given_as_parts_is_kept_as_json_text() -> None:
    parts = [{"type": "text", "text": "hi"}]
    record = Result.answered(
        "r",
        0,
        _answer({"role": "assistant", "content": parts}),
        status_code=200,
        attempts=1,
        latency_ms=1.0,
        request_id=None,
    ).record()
    assert record["content"] == '[{"type":"text","text":"hi"}]'


def test_request_id_is_the_header_else_the_answers_own_id() -> None:
    data = _answer({"role": "assistant", "content": "x"}, id="chatcmpl-body")
    header = Result.answered("r", 0, data, status_code=200, attempts=1, latency_ms=1.0, request_id="req-hdr")
    assert header.request_id == "req-hdr"
    body = Result.answered("r", 0, data, status_code=200, attempts=1, latency_ms=1.0, request_id=None)
    assert body.request_id == "chatcmpl-body"


def test_a_failed_row_keeps_its_last_attempts_latency_and_status() -> None:
    exc = Fatal("bad_request: nope", status=400, code="bad_request", latency_ms=123.4567, request_id="req-1")
    record = Result.failed("r", 3, exc, attempts=2, kept={"kept": 1}).record()
    assert (record["status"], record["status_code"], record["attempts"]) == ("error", 400, 2)
    assert record["latency_ms"] == 123.457 and record["request_id"] == "req-1"
    assert record["error"] == "bad_request: nope" and record["kept"] == 1
    no_response = Result.failed("r", 3, Fatal("timeout"), attempts=1)
    assert no_response.latency_ms is None and no_response.status_code is None
    assert no_response.status is Status.ERROR


# ---- serialisation, in one place (Result.record / line, public, openai_batch_line, error_code) -------------------

COMPLETION = {
    "id": "chatcmpl-7",
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
}


def _ok(**kwargs: object) -> Result:
    return Result.answered("r1", 0, COMPLETION, status_code=200, attempts=1, latency_ms=5.0, request_id=None, **kwargs)  # type: ignore[arg-type]


def _timeout(**kwargs: object) -> Result:
    return Result.failed("r2", 1, Retryable("read timed out after 30 s", code="timeout"), attempts=3, **kwargs)  # type: ignore[arg-type]


def test_a_plain_records_keys_are_exactly_the_columns_in_order() -> None:
    record = _ok().record()
    assert tuple(record) == COLUMNS
    assert record == {
        "id": "r1",
        "index": 0,
        "status": "ok",
        "status_code": 200,
        "content": "hello",
        "finish_reason": "stop",
        "model": "m",
        "prompt_tokens": 4,
        "completion_tokens": 2,
        "total_tokens": 6,
        "attempts": 1,
        "latency_ms": 5.0,
        "error": None,
        "tool_calls": None,
        "request_id": "chatcmpl-7",
        "cached_tokens": None,
        "reasoning_tokens": None,
    }


def test_an_evaluated_records_keys_are_the_columns_then_the_evaluation_columns() -> None:
    evaluation = Evaluation("v1", 2, False, ("content: expected 'x'", "finish_reason"), True)
    record = dataclasses.replace(_ok(), evaluation=evaluation).record()
    assert tuple(record) == COLUMNS + EVAL_COLUMNS
    assert [record[c] for c in EVAL_COLUMNS] == ["v1", 2, False, '["content: expected \'x\'","finish_reason"]', True]


def test_kept_columns_come_last_in_their_given_order() -> None:
    kept = {"zeta": 1, "alpha": "a", "mid": None}
    assert tuple(_ok(kept=kept).record()) == COLUMNS + ("zeta", "alpha", "mid")
    evaluation = Evaluation(None, 0, True, (), False)
    evaluated = dataclasses.replace(_ok(kept=kept), evaluation=evaluation).record()
    assert tuple(evaluated) == COLUMNS + EVAL_COLUMNS + ("zeta", "alpha", "mid")
    assert [evaluated[k] for k in kept] == [1, "a", None]


def test_an_error_line_carries_the_internal_code_and_public_strips_it() -> None:
    line = _timeout(kept={"k": 9}).line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = orjson.loads(line)
    assert tuple(record) == COLUMNS + ("k", results.CODE_KEY)
    assert record[results.CODE_KEY] == "timeout"
    assert (record["status"], record["status_code"], record["error"]) == ("error", None, "read timed out after 30 s")
    assert tuple(results.public(record)) == COLUMNS + ("k",)
    assert results.CODE_KEY in record  # public() copies; the checkpoint's record is left whole


def test_an_ok_record_has_no_internal_keys_and_public_returns_it_as_is() -> None:
    record = _ok().record()
    assert results.CODE_KEY not in record and results.BODY_KEY not in record
    assert results.public(record) is record


def test_openai_batch_line_of_an_error_uses_the_carried_code() -> None:
    record = orjson.loads(_timeout().line())
    assert results.openai_batch_line(record) == {
        "id": "batch_req_r2",
        "custom_id": "r2",
        "response": None,
        "error": {"code": "timeout", "message": "read timed out after 30 s"},
    }


def test_the_carried_code_wins_over_the_status() -> None:
    exc = Fatal("unprocessable", status=422, code="invalid_request_error")
    record = Result.failed("r", 0, exc, attempts=1).record()
    assert results.error_code(record) == "invalid_request_error"


def test_openai_batch_line_of_an_invalid_row() -> None:
    record = orjson.loads(Result.invalid("r3", 2, "line 3: not JSON").line())
    assert record[results.CODE_KEY] == "invalid_row"
    assert results.openai_batch_line(record) == {
        "id": "batch_req_r3",
        "custom_id": "r3",
        "response": None,
        "error": {"code": "invalid_row", "message": "invalid_row: line 3: not JSON"},
    }


def test_openai_batch_line_of_an_answer_has_a_response_and_no_error() -> None:
    record = _ok().record(keep_body=True)
    assert results.openai_batch_line(record) == {
        "id": "batch_req_r1",
        "custom_id": "r1",
        "error": None,
        "response": {"status_code": 200, "request_id": "chatcmpl-7", "body": COMPLETION},
    }


@pytest.mark.parametrize(
    ("status", "status_code", "expected"),
    [
        ("error", 503, "http_503"),
        ("error", 400, "http_400"),
        ("error", None, "connection_error"),
        ("invalid", None, "invalid_row"),
        ("ok", 200, None),
    ],
)
def test_a_legacy_record_without_a_code_falls_back(status: str, status_code: int | None, expected: str | None) -> None:
    record = {"id": "r", "status": status, "status_code": status_code, "error": "boom"}
    assert results.error_code(record) == expected


def test_a_legacy_error_records_batch_line_uses_the_fallback_code() -> None:
    record = {"id": "r", "status": "error", "status_code": 503, "error": "boom", "request_id": None}
    line = results.openai_batch_line(record)
    assert line["error"] == {"code": "http_503", "message": "boom"}
    assert line["response"] == {"status_code": 503, "request_id": None, "body": None}


def test_keep_body_keeps_the_body_of_an_answer_and_of_an_error_with_a_status() -> None:
    assert _ok().record(keep_body=True)[results.BODY_KEY] == COMPLETION
    assert results.BODY_KEY not in _ok().record()
    error_body = {"error": {"message": "rate limited", "type": "rate_limit"}}
    failed = Result.failed(
        "r", 0, Retryable("rate limited", status=429, code="rate_limited", body=error_body), attempts=5
    )
    record = failed.record(keep_body=True)
    assert record[results.BODY_KEY] == error_body
    assert tuple(record) == COLUMNS + (results.CODE_KEY, results.BODY_KEY)


def test_keep_body_keeps_no_body_for_an_invalid_row_or_a_failure_without_a_response() -> None:
    assert results.BODY_KEY not in Result.invalid("r", 0, "bad").record(keep_body=True)
    assert results.BODY_KEY not in _timeout().record(keep_body=True)


def test_a_result_is_frozen() -> None:
    result = _ok()
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.status = Status.ERROR  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Evaluation(None, 0, True, (), False).passed = False  # type: ignore[misc]
    assert result.status is Status.OK
