"""One output row from one answer or one failure, field by field (SPEC §3). Found by the mutation run."""

from __future__ import annotations

from inferbatch.errors import Fatal
from inferbatch.results import error_record, ok_record


def _answer(message: dict[str, object], **extra: object) -> dict[str, object]:
    return {"choices": [{"message": message, "finish_reason": "tool_calls"}], **extra}


def test_an_answer_with_only_tool_calls_has_null_content_not_the_text_null() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    record = ok_record("r", 0, _answer({"role": "assistant", "content": None, "tool_calls": calls}),
                       status_code=200, attempts=1, latency_ms=12.5, request_id=None, keep={})  # fmt: skip
    assert record["content"] is None
    assert record["tool_calls"] == '[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]'


def test_content_given_as_parts_is_kept_as_json_text() -> None:
    parts = [{"type": "text", "text": "hi"}]
    record = ok_record("r", 0, _answer({"role": "assistant", "content": parts}), status_code=200, attempts=1,
                       latency_ms=1.0, request_id=None, keep={})  # fmt: skip
    assert record["content"] == '[{"type":"text","text":"hi"}]'


def test_request_id_is_the_header_else_the_answers_own_id() -> None:
    data = _answer({"role": "assistant", "content": "x"}, id="chatcmpl-body")
    header = ok_record("r", 0, data, status_code=200, attempts=1, latency_ms=1.0, request_id="req-hdr", keep={})
    assert header["request_id"] == "req-hdr"
    body = ok_record("r", 0, data, status_code=200, attempts=1, latency_ms=1.0, request_id=None, keep={})
    assert body["request_id"] == "chatcmpl-body"


def test_a_failed_row_keeps_its_last_attempts_latency_and_status() -> None:
    exc = Fatal("bad_request: nope", status=400, code="bad_request", latency_ms=123.4567, request_id="req-1")
    record = error_record("r", 3, exc, attempts=2, keep={"kept": 1})
    assert (record["status"], record["status_code"], record["attempts"]) == ("error", 400, 2)
    assert record["latency_ms"] == 123.457 and record["request_id"] == "req-1"
    assert record["error"] == "bad_request: nope" and record["kept"] == 1
    no_response = error_record("r", 3, Fatal("timeout"), attempts=1, keep={})
    assert no_response["latency_ms"] is None and no_response["status_code"] is None
