"""The HTTP client: one request, classified, against real servers over loopback.

The simulator covers Heroku-shaped answers and injected faults; a tiny canned server covers other
APIs' odd bodies (aioresponses 0.7.9 cannot build responses under aiohttp 3.14:
pnuckowski/aioresponses#289). Cases of one kind share a client, so the file stays fast.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from inferbatch.client import Client, Response
from inferbatch.errors import AuthRejected, Fatal, QuotaRejected, RequestFailed, Retryable
from inferbatch.simulator import SimServer

CHAT = "/v1/chat/completions"
KEY = "test-key-0123456789"

Sim = Callable[..., SimServer]
K = TypeVar("K")


def body(text: str = "What is the capital of France?", **params: Any) -> bytes:
    return orjson.dumps({"model": "claude-4-sonnet", "messages": [{"role": "user", "content": text}], **params})


async def send(url: str, payload: bytes, *, key: str | None = KEY, timeout: float = 5.0) -> Response:
    async with Client(url, key, timeout=timeout, concurrency=4) as client:
        return await client.send(payload)


async def failure(url: str, payload: bytes, *, key: str | None = KEY, timeout: float = 5.0) -> RequestFailed:
    return (await failures(url, {"only": payload}, key=key, timeout=timeout))["only"]


async def failures(
    url: str, payloads: Mapping[K, bytes], *, key: str | None = KEY, timeout: float = 5.0
) -> dict[K, RequestFailed]:
    """Send each payload with one client; every one must fail."""
    out: dict[K, RequestFailed] = {}
    async with Client(url, key, timeout=timeout, concurrency=4) as client:
        for name, payload in payloads.items():
            try:
                response = await client.send(payload)
            except RequestFailed as exc:
                out[name] = exc
            else:
                pytest.fail(f"{name!r}: expected a failure, got {response.status} {response.raw[:100]!r}")
    return out


def classes(found: Mapping[K, RequestFailed]) -> dict[K, tuple[str, int | None]]:
    return {name: (type(exc).__name__, exc.status) for name, exc in found.items()}


def assert_one_short_line(text: str) -> None:
    assert text
    assert "\n" not in text and "\r" not in text, text
    assert len(text) <= 300, len(text)


# ---- success ------------------------------------------------------------------


async def test_success_returns_the_completion(sim: Sim) -> None:
    server = sim(require_key=KEY)
    response = await send(server.url + CHAT, body())
    assert isinstance(response, Response)
    assert response.status == 200
    assert response.data["choices"][0]["message"]["content"].startswith("sim reply to: What is the capital")
    assert response.data["usage"]["total_tokens"] > 0
    assert json.loads(response.raw) == response.data
    assert response.headers["x-request-id"].startswith("req_")
    assert response.headers["X-Request-Id"] == response.headers["x-request-id"]  # case-insensitive, as from aiohttp
    assert response.latency_ms > 0
    assert server.stats.requests == 1
    assert server.stats.auth_headers_seen == 1


async def test_without_a_key_no_authorization_header_is_sent(sim: Sim) -> None:
    server = sim()
    response = await send(server.url + CHAT, body(), key=None)
    assert response.status == 200
    assert server.stats.auth_headers_seen == 0


async def test_connections_are_limited_to_the_concurrency(sim: Sim) -> None:
    server = sim()
    async with Client(server.url + CHAT, KEY, timeout=5, concurrency=2) as client:
        responses = await asyncio.gather(*(client.send(body(f"q{i} [[sim:sleep=60]]")) for i in range(6)))
    assert [r.status for r in responses] == [200] * 6
    assert server.stats.max_in_flight == 2


# ---- classification against the simulator --------------------------------------

RETRYABLE = [408, 409, 425, 429, 500, 502, 503, 504, 529]
FATAL = [400, 404, 413, 418, 422]


async def test_retryable_statuses_raise_retryable(sim: Sim) -> None:
    server = sim()
    found = await failures(server.url + CHAT, {s: body(f"hello [[sim:{s}]]") for s in RETRYABLE})
    assert classes(found) == {s: ("Retryable", s) for s in RETRYABLE}
    for status, exc in found.items():
        assert f"simulated {status}" in exc.message
        assert_one_short_line(exc.message)


async def test_client_errors_are_fatal_with_the_servers_message(sim: Sim) -> None:
    server = sim()
    found = await failures(server.url + CHAT, {s: body(f"hello [[sim:{s}]]") for s in FATAL})
    assert classes(found) == {s: ("Fatal", s) for s in FATAL}
    for status, exc in found.items():
        assert f"simulated {status}" in exc.message
        assert_one_short_line(exc.message)


async def test_gateway_errors_carry_the_servers_message(sim: Sim) -> None:
    server = sim(models=("claude-4-sonnet",))
    found = await failures(
        server.url + CHAT,
        {
            "empty messages": orjson.dumps({"model": "claude-4-sonnet", "messages": []}),
            "unknown model": orjson.dumps({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
        },
    )
    assert classes(found) == {"empty messages": ("Fatal", 400), "unknown model": ("Fatal", 404)}
    assert "'messages' must be a non-empty list" in found["empty messages"].message
    assert found["empty messages"].code == "invalid_request"
    assert "model 'nope' not found" in found["unknown model"].message


async def test_401_and_json_403_are_auth_rejected(sim: Sim) -> None:
    server = sim()
    found = await failures(server.url + CHAT, {d: body(f"hello [[sim:{d}]]") for d in ("401", "403auth", "403")})
    assert classes(found) == {
        "401": ("AuthRejected", 401),
        "403auth": ("AuthRejected", 403),
        "403": ("AuthRejected", 403),
    }
    for exc in found.values():
        assert isinstance(exc, Fatal)  # never retried
        assert_one_short_line(exc.message)
    assert "authorization_error" in found["403auth"].message


async def test_wrong_key_is_auth_rejected(sim: Sim) -> None:
    server = sim(require_key="right-key")
    exc = await failure(server.url + CHAT, body(), key="wrong-key")
    assert type(exc) is AuthRejected
    assert exc.status == 401
    assert "invalid API key" in exc.message


async def test_html_pages_are_retryable_with_a_plain_text_excerpt(sim: Sim) -> None:
    server = sim()
    found = await failures(server.url + CHAT, {s: body(f"hello [[sim:{s}html]]") for s in (403, 502)})
    # a 403 page is a firewall's verdict on this prompt, not on the key (SPEC §4)
    assert classes(found) == {403: ("Retryable", 403), 502: ("Retryable", 502)}
    for exc in found.values():
        assert "Request blocked by WAF" in exc.message
        assert not re.search(r"<[^>]*>", exc.message)
        assert "<" not in exc.message and ">" not in exc.message
        assert_one_short_line(exc.message)


async def test_dropped_connection_is_retryable_without_status(sim: Sim) -> None:
    server = sim()
    exc = await failure(server.url + CHAT, body("hello [[sim:drop]]"))
    assert type(exc) is Retryable
    assert exc.status is None
    assert_one_short_line(exc.message)
    assert server.stats.dropped == 1


async def test_hang_times_out_as_retryable_without_status(sim: Sim) -> None:
    server = sim()
    started = time.monotonic()
    exc = await failure(server.url + CHAT, body("hello [[sim:hang]]"), timeout=0.3)
    elapsed = time.monotonic() - started
    assert type(exc) is Retryable
    assert exc.status is None
    assert "timeout" in exc.message
    assert_one_short_line(exc.message)
    assert elapsed >= 0.25  # it waited for the timeout...
    assert elapsed < 30.0  # ...and not for the hang (room for a busy CI runner: issue 16)
    assert exc.latency_ms is not None and exc.latency_ms >= 250


async def test_200_without_a_completion_is_retryable_with_status_200(sim: Sim) -> None:
    server = sim()
    found = await failures(server.url + CHAT, {f: body(f"hello [[sim:{f}]]") for f in ("malformed", "empty")})
    assert classes(found) == {"malformed": ("Retryable", 200), "empty": ("Retryable", 200)}  # SPEC §8.10
    for exc in found.values():
        assert_one_short_line(exc.message)


async def test_429_carries_retry_after_and_the_rate_limit_headers(sim: Sim) -> None:
    server = sim()
    exc = await failure(server.url + CHAT, body("hello [[sim:retry_after=7]] [[sim:429]]"))
    assert type(exc) is Retryable
    assert exc.status == 429
    assert exc.retry_after == pytest.approx(7.0)
    assert exc.headers is not None
    assert exc.headers["x-ratelimit-remaining-requests"] == "0"  # type: ignore[index]
    assert exc.headers["X-RateLimit-Reset-Requests"] == "7s"  # type: ignore[index]


async def test_429_prefers_retry_after_ms(sim: Sim) -> None:
    server = sim(retry_after=2.5, retry_after_ms=True)
    exc = await failure(server.url + CHAT, body("hello [[sim:429]]"))
    assert exc.status == 429
    assert exc.retry_after == pytest.approx(2.5)


async def test_rate_window_429_carries_retry_after(sim: Sim) -> None:
    server = sim(rpm=1)
    async with Client(server.url + CHAT, KEY, timeout=5, concurrency=1) as client:
        await client.send(body("first"))
        with pytest.raises(Retryable) as info:
            await client.send(body("second"))
    assert info.value.status == 429
    assert info.value.retry_after is not None and 1.0 <= info.value.retry_after <= 60.0


@pytest.mark.parametrize(
    ("sent_key", "text"),
    [("wrong-key-456", "hello"), ("sekrit-123", "hello [[sim:401]]")],
    ids=["gateway-401", "directive-401"],
)
async def test_key_echoed_by_the_server_is_redacted(sim: Sim, sent_key: str, text: str) -> None:
    server = sim(require_key="sekrit-123", echo_key_in_error=True)
    exc = await failure(server.url + CHAT, body(text), key=sent_key)
    assert type(exc) is AuthRejected
    assert exc.status == 401
    assert sent_key not in exc.message
    assert sent_key not in str(exc)
    assert sent_key not in repr(exc.args)
    assert sent_key not in repr(exc.body)
    assert "[REDACTED]" in exc.message
    assert "[REDACTED]" in json.dumps(exc.body)


async def test_redirect_is_not_followed_and_the_key_stays_home(sim: Sim) -> None:
    other = sim()
    server = sim(redirect_to=other.url + CHAT)
    exc = await failure(server.url + CHAT, body())
    assert type(exc) is Fatal
    assert exc.status == 307
    assert server.stats.requests == 1
    assert other.stats.requests == 0
    assert other.stats.auth_headers_seen == 0
    assert KEY not in exc.message


def unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_is_retryable_without_status() -> None:
    exc = await failure(f"http://127.0.0.1:{unused_port()}{CHAT}", body())
    assert type(exc) is Retryable
    assert exc.status is None
    assert_one_short_line(exc.message)
    assert KEY not in exc.message


# ---- other servers' bodies (a canned loopback server) --------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    raw: Any  # bytes or str as is; anything else is sent as JSON
    content_type: str = "application/json"
    headers: dict[str, str] | None = None

    def data(self) -> bytes:
        if isinstance(self.raw, bytes):
            return self.raw
        return (self.raw if isinstance(self.raw, str) else json.dumps(self.raw)).encode()


Canned = Callable[[Mapping[str, Answer]], Awaitable[str]]


@pytest.fixture
async def canned() -> AsyncIterator[Canned]:
    """``url = await canned({name: Answer(...)})``: a server answering ``body(name)`` with that answer."""
    servers: list[TestServer] = []

    async def start(answers: Mapping[str, Answer]) -> str:
        async def handler(request: web.Request) -> web.Response:
            name = (await request.json())["messages"][-1]["content"]
            a = answers[name]
            return web.Response(status=a.status, body=a.data(), content_type=a.content_type, headers=a.headers)

        app = web.Application()
        app.router.add_post(CHAT, handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url(CHAT))

    yield start
    for server in servers:
        await server.close()


async def canned_failures(canned: Canned, answers: Mapping[str, Answer]) -> dict[str, RequestFailed]:
    url = await canned(answers)
    return await failures(url, {name: body(name) for name in answers})


async def test_error_bodies_of_other_shapes(canned: Canned) -> None:
    cases = {
        "detail": (Answer(400, {"detail": "temperature must be at most 2"}), "temperature must be at most 2"),
        "message": (Answer(422, {"message": "max_tokens too large"}), "max_tokens too large"),
        "string error": (Answer(400, {"error": "plain string error"}), "plain string error"),
        "no code": (Answer(404, {"error": {"message": "model gone", "type": "not_found_error"}}), "model gone"),
        "nested detail": (Answer(400, {"error": {"code": "bad", "detail": "nested detail"}}), "nested detail"),
        "fastapi": (Answer(422, {"detail": [{"loc": ["body"], "msg": "field required"}]}), "field required"),
    }
    found = await canned_failures(canned, {name: answer for name, (answer, _) in cases.items()})
    assert classes(found) == {name: ("Fatal", answer.status) for name, (answer, _) in cases.items()}
    for name, (_, expected) in cases.items():
        assert expected in found[name].message, name
        assert_one_short_line(found[name].message)


async def test_long_and_multiline_messages_become_one_short_line(canned: Canned) -> None:
    found = await canned_failures(
        canned,
        {
            "long": Answer(400, {"error": {"code": "invalid_request", "message": "word " * 400}}),  # 2,000 characters
            "lines": Answer(400, {"error": {"message": "first line\nsecond line\r\n\tthird line"}}),
            "text": Answer(503, "Service Unavailable\n\nupstream connect error", "text/plain"),
        },
    )
    assert classes(found) == {"long": ("Fatal", 400), "lines": ("Fatal", 400), "text": ("Retryable", 503)}
    for exc in found.values():
        assert_one_short_line(exc.message)
    assert found["long"].message.startswith("invalid_request: word word")
    assert "first line second line third line" in found["lines"].message
    assert "Service Unavailable upstream connect error" in found["text"].message


async def test_long_html_page_becomes_a_short_excerpt(canned: Canned) -> None:
    page = (
        "<html><head><style>body { color: red }</style><script>var x = '<b>';</script></head><body>"
        + "<p>Access denied by policy.</p>" * 200
        + "</body></html>"
    )
    exc = (await canned_failures(canned, {"page": Answer(403, page, "text/html")}))["page"]
    assert type(exc) is Retryable
    assert exc.status == 403
    assert "Access denied by policy." in exc.message
    assert "<" not in exc.message and "color: red" not in exc.message
    assert_one_short_line(exc.message)


async def test_odd_error_bodies_are_handled(canned: Canned) -> None:
    raws = {
        "empty": b"",
        "array": b"[1, 2, 3]",
        "null": b"null",
        "error null": b'{"error": null}',
        "binary": b"\xff\xfe",
    }
    found = await canned_failures(canned, {name: Answer(500, raw) for name, raw in raws.items()})
    assert classes(found) == {name: ("Retryable", 500) for name in raws}
    for exc in found.values():
        assert_one_short_line(exc.message)


async def test_200_without_a_completion_is_retryable(canned: Canned) -> None:
    payloads = {
        "no choices": {"choices": []},
        "no message": {"choices": [{"text": "legacy completion"}]},
        "other object": {"object": "chat.completion"},
        "array": [1, 2],
        "text": "not json at all",
    }
    found = await canned_failures(canned, {name: Answer(200, p) for name, p in payloads.items()})
    assert classes(found) == {name: ("Retryable", 200) for name in payloads}
    for exc in found.values():
        assert_one_short_line(exc.message)


async def test_retry_after_headers_on_other_servers(canned: Canned) -> None:
    found = await canned_failures(
        canned,
        {
            "503 seconds": Answer(503, {"error": {"message": "busy"}}, headers={"Retry-After": "3"}),
            "429 ms": Answer(
                429, {"error": {"message": "slow"}}, headers={"Retry-After-Ms": "1200", "Retry-After": "9"}
            ),
            "429 none": Answer(429, {"error": {"message": "slow"}}),
        },
    )
    assert {name: exc.retry_after for name, exc in found.items()} == {
        "503 seconds": pytest.approx(3.0),
        "429 ms": pytest.approx(1.2),
        "429 none": None,
    }


async def test_fatal_keeps_the_code_and_the_parsed_body(canned: Canned) -> None:
    payload = {"error": {"code": "invalid_request", "message": "bad", "type": "invalid_request_error"}}
    exc = (await canned_failures(canned, {"x": Answer(400, payload)}))["x"]
    assert type(exc) is Fatal
    assert exc.code == "invalid_request"
    assert exc.body == payload


async def test_key_never_appears_in_any_failure(canned: Canned) -> None:
    answers = {
        "html": Answer(403, f"<html><body>blocked request from key {KEY}</body></html>", "text/html"),
        "json": Answer(400, {"error": {"message": f"bad key {KEY}", "param": [f"Bearer {KEY}"]}}),
        "text": Answer(500, f"upstream said: Authorization: Bearer {KEY}", "text/plain"),
        "200": Answer(200, f'{{"echo": "{KEY}"'),
        "401": Answer(401, {"error": {"code": "invalid_api_key", "message": f"key {KEY} revoked"}}),
    }
    found = await canned_failures(canned, answers)
    assert set(found) == set(answers)
    for name, exc in found.items():
        assert KEY not in exc.message, name
        assert KEY not in str(exc), name
        assert KEY not in repr(exc.body), name
        assert "[REDACTED]" in exc.message, name


# ---- no fragment of the key (SPEC §8.33) ----------------------------------------------------

LONG_KEY = "sk-live-Qm7Xv2Lp9Rt4Wz8Nc3Hd6Jb1Fg5Ky0Ue"


def key_pieces(key: str = LONG_KEY, size: int = 8) -> set[str]:
    return {key[i : i + size] for i in range(len(key) - size + 1)}


def assert_no_piece(text: str, where: str = "") -> None:
    found = [p for p in key_pieces() if p in text]
    assert not found, f"{where}: key pieces {found[:3]} in {text[:400]!r}"


async def test_a_piece_of_the_key_is_redacted_in_every_failure(canned: Canned) -> None:
    """SPEC §8.33: not only the whole key: any 8+ character piece of it, in messages, kept bodies and request ids."""
    piece = LONG_KEY[5:19]
    answers = {
        "json": Answer(400, {"error": {"code": "bad", "message": f"key ...{piece}... is odd", "id": piece}}),
        "html": Answer(403, f"<html><body>token <b>{piece}</b> blocked</body></html>", "text/html"),
        "text": Answer(502, f"upstream said {LONG_KEY[:12]} and {LONG_KEY[-10:]}", "text/plain"),
        "rid": Answer(500, {"error": {"message": "boom"}}, headers={"x-request-id": f"req_{LONG_KEY[3:30]}"}),
        "bodyid": Answer(400, {"id": f"resp_{piece}", "error": {"message": "no"}}),
        "code": Answer(404, {"error": {"code": f"no_such_key_{piece}", "message": "x"}}),
    }
    url = await canned(answers)
    found = await failures(url, {name: body(name) for name in answers}, key=LONG_KEY)
    for name, exc in found.items():
        assert_no_piece(exc.message, name)
        assert_no_piece(repr(exc.body), name)
        assert_no_piece(str(exc.code), name)
        assert_no_piece(str(exc.request_id), name)
        assert "[REDACTED]" in exc.message + str(exc.request_id), name
    assert found["rid"].request_id == "req_[REDACTED]"
    assert found["bodyid"].request_id == "resp_[REDACTED]"


async def test_a_key_straddling_an_excerpt_cut_does_not_leak_its_first_half(canned: Canned) -> None:
    """Redaction runs before truncation: a key cut by the excerpt must not leave its first 8+ characters."""
    answers = {
        # 1,990 bytes of markup and spaces, then the key: cut at 2,000 bytes before, its head survived the tags
        "page": Answer(503, "<p>" * 600 + " " * 190 + LONG_KEY + " trailing", "text/html"),
        # a 200 that is not a completion: the excerpt was cut at 200 bytes, then redacted
        "malformed": Answer(200, '{"echo": "' + "x" * 175 + LONG_KEY + '"'),
        # the message cut at 300 characters, with the key across the cut
        "long": Answer(400, {"error": {"code": "c", "message": "w" * 285 + LONG_KEY}}),
    }
    url = await canned(answers)
    found = await failures(url, {name: body(name) for name in answers}, key=LONG_KEY)
    for name, exc in found.items():
        assert_one_short_line(exc.message)
        assert_no_piece(exc.message, name)


async def test_a_200_echoing_the_key_is_scrubbed_before_anyone_sees_it(canned: Canned) -> None:
    """A completion that repeats the key (content, tool_calls, id, header) comes back with [REDACTED] instead."""
    completion = {
        "id": f"chatcmpl-{LONG_KEY[2:14]}",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {
                    "role": "assistant",
                    "content": f"Your key is {LONG_KEY}; its middle is {LONG_KEY[10:22]}.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": json.dumps({"k": LONG_KEY[-9:]})},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    url = await canned(
        {
            "echo": Answer(200, completion, headers={"x-request-id": LONG_KEY}),
            "clean": Answer(
                200, {**completion, "id": "chatcmpl-1", "choices": [{"index": 0, "message": {"content": "hi"}}]}
            ),
        }
    )
    async with Client(url, LONG_KEY, timeout=5, concurrency=2) as client:
        echoed = await client.send(body("echo"))
        clean = await client.send(body("clean"))
    message = echoed.data["choices"][0]["message"]
    assert message["content"] == "Your key is [REDACTED]; its middle is [REDACTED]."
    assert "[REDACTED]" in message["tool_calls"][0]["function"]["arguments"]
    assert_no_piece(json.dumps(echoed.data))
    assert_no_piece(echoed.raw.decode())
    assert echoed.request_id == "[REDACTED]"
    assert_no_piece(echoed.headers["x-request-id"])  # even a caller reading the header itself
    assert clean.request_id == "chatcmpl-1"  # no x-request-id: the body's id
    assert clean.data["choices"][0]["message"]["content"] == "hi"


async def test_a_200_echoing_the_key_behind_json_escapes_is_scrubbed(canned: Canned) -> None:
    escaped = "".join(f"\\u{ord(c):04x}" if i % 2 else c for i, c in enumerate(LONG_KEY))  # no raw 8-char run
    raw = '{"id": "x", "choices": [{"index": 0, "message": {"content": "k=' + escaped + '"}}]}'
    url = await canned({"esc": Answer(200, raw)})
    async with Client(url, LONG_KEY, timeout=5, concurrency=1) as client:
        response = await client.send(body("esc"))
    assert response.data["choices"][0]["message"]["content"] == "k=[REDACTED]"


async def test_a_short_key_is_redacted_whole_only(canned: Canned) -> None:
    url = await canned({"x": Answer(400, {"error": {"message": "key short12 and shor and hort12"}})})
    exc = await failure(url, body("x"), key="short12")
    assert exc.message.endswith("key [REDACTED] and shor and hort12")


# ---- quota is a stop (SPEC §4, §8.13) ----------------------------------------------------------


@pytest.mark.parametrize("status", [429, 403])
@pytest.mark.parametrize(
    ("code", "type_"),
    [
        ("insufficient_quota", "insufficient_quota"),
        ("Quota_Exceeded", None),
        ("billing_hard_limit_reached", "invalid_request_error"),
        (None, "billing_not_active"),
        ("credit_balance_too_low", None),
        ("rate_limit_exceeded", "CREDITS_EXHAUSTED"),
    ],
)
async def test_quota_codes_are_quota_rejected_at_once(
    canned: Canned, status: int, code: str | None, type_: str | None
) -> None:
    """A 429/403 whose code or type says quota, credit or billing: QuotaRejected (a Fatal: never retried), naming it."""
    error = {"message": "You exceeded your current quota."}
    if code:
        error["code"] = code
    if type_:
        error["type"] = type_
    exc = (await canned_failures(canned, {"q": Answer(status, {"error": error})}))["q"]
    assert type(exc) is QuotaRejected
    assert isinstance(exc, Fatal) and not isinstance(exc, Retryable)
    assert exc.status == status
    assert (code or type_) in exc.message
    assert "the server gave no reset time" in exc.message
    assert_one_short_line(exc.message)


async def test_quota_message_says_when_it_resets(canned: Canned) -> None:
    when = int(time.time()) + 3 * 86_400
    headers = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": str(when)}
    answer = Answer(429, {"error": {"code": "insufficient_quota"}}, headers=headers)
    exc = (await canned_failures(canned, {"q": answer}))["q"]
    assert type(exc) is QuotaRejected
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    assert re.search(rf"resets in (2d23h|3d) \(at {stamp}\) \(x-ratelimit-reset-tokens\)", exc.message), exc.message


async def test_rate_limit_429s_are_still_retryable(canned: Canned) -> None:
    found = await canned_failures(
        canned,
        {
            "rate": Answer(
                429, {"error": {"code": "rate_limit_exceeded", "type": "requests"}}, headers={"Retry-After": "20"}
            ),
            "quota-ish": Answer(429, {"error": {"message": "insufficient_quota (not a code)"}}),
            "html-403": Answer(403, "<html>insufficient_quota</html>", "text/html"),
            "400": Answer(400, {"error": {"code": "insufficient_quota"}}),
        },
    )
    assert classes(found) == {
        "rate": ("Retryable", 429),
        "quota-ish": ("Retryable", 429),
        "html-403": ("Retryable", 403),
        "400": ("Fatal", 400),
    }
    assert found["rate"].retry_after == pytest.approx(20.0)


@pytest.mark.parametrize(
    "headers",
    [{"Retry-After": "86400"}, {"Retry-After-Ms": "3600000"}, {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}],
    ids=["seconds", "ms", "http-date"],
)
async def test_a_server_wait_longer_than_max_wait_is_quota_rejected(canned: Canned, headers: dict[str, str]) -> None:
    """'Come back tomorrow' is a stop: QuotaRejected saying the wait, when it ends, and --max-wait."""
    url = await canned({s: Answer(int(s), {"error": {"message": "later"}}, headers=headers) for s in ("429", "503")})
    async with Client(url, KEY, timeout=5, concurrency=2, max_wait=600.0) as client:
        for status in ("429", "503"):
            with pytest.raises(QuotaRejected) as info:
                await client.send(body(status))
            assert info.value.status == int(status)
            assert "Retry-After" in info.value.message and "--max-wait 10m" in info.value.message
            assert re.search(r"retry in \d+[dhm]\w* \(at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)", info.value.message)


async def test_a_server_wait_within_max_wait_is_retryable(canned: Canned) -> None:
    url = await canned({"x": Answer(429, {"error": {"message": "later"}}, headers={"Retry-After": "600"})})
    async with Client(url, KEY, timeout=5, concurrency=1, max_wait=600.0) as client:
        with pytest.raises(Retryable) as info:
            await client.send(body("x"))
    assert info.value.retry_after == pytest.approx(600.0)
    async with Client(url, KEY, timeout=5, concurrency=1, max_wait=None) as client:
        with pytest.raises(Retryable):
            await client.send(body("x"))


async def test_a_429_whose_exhausted_limit_resets_beyond_max_wait_is_quota_rejected(canned: Canned) -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": str(int(time.time()) + 20 * 86_400),
        "x-ratelimit-remaining-tokens": "5000",
        "x-ratelimit-reset-tokens": "1s",
    }
    exc = (await canned_failures(canned, {"x": Answer(429, {"error": {"message": "slow down"}}, headers=headers)}))["x"]
    assert type(exc) is QuotaRejected
    assert "x-ratelimit-remaining-requests: 0" in exc.message
    assert re.search(r"resets in (19d23h|20d) \(at ", exc.message), exc.message


async def test_a_short_key_never_mangles_a_completion(canned: Canned) -> None:
    """A key under 8 characters (a test key like "k") is no reason to rewrite the model's words."""
    url = await canned(
        {
            "ok": Answer(
                200, {"choices": [{"message": {"role": "assistant", "content": "the haiku"}, "finish_reason": "stop"}]}
            )
        }
    )
    async with Client(url, "k", timeout=5, concurrency=1) as client:
        response = await client.send(body("ok"))
    assert response.data["choices"][0]["message"]["content"] == "the haiku"


async def test_an_exhausted_limit_resetting_exactly_at_max_wait_is_waited_for(canned: Canned) -> None:
    """--max-wait is the longest wait taken: a reset exactly that far away is still a wait, one beyond is a stop."""
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "600s"}
    later = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "601s"}
    url = await canned(
        {
            "at": Answer(429, {"error": {"message": "slow down"}}, headers=headers),
            "past": Answer(429, {"error": {"message": "slow down"}}, headers=later),
        }
    )
    async with Client(url, KEY, timeout=5, concurrency=1, max_wait=600.0) as client:
        with pytest.raises(Retryable) as at:
            await client.send(body("at"))
        assert type(at.value) is Retryable
        with pytest.raises(QuotaRejected):
            await client.send(body("past"))


async def test_a_quota_stop_names_retry_after_as_the_reset_when_that_is_all_it_has(canned: Canned) -> None:
    answer = Answer(429, {"error": {"code": "insufficient_quota"}}, headers={"Retry-After": "7200"})
    exc = (await canned_failures(canned, {"q": answer}))["q"]
    assert type(exc) is QuotaRejected
    assert re.search(r"resets in 2h\w* \(at [0-9T:-]+Z\) \(Retry-After\)$", exc.message), exc.message


async def test_a_json_error_without_a_message_is_shown_as_it_came(canned: Canned) -> None:
    """An error body in a shape we do not know still reaches the `error` column, not an empty message."""
    exc = (await canned_failures(canned, {"odd": Answer(400, {"status": "nope", "why": 42})}))["odd"]
    assert exc.message == 'http_400: {"status": "nope", "why": 42}'
