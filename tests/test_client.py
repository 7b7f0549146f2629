"""The HTTP client: one request, classified, against real servers over loopback.

The simulator covers Heroku-shaped answers and faults; a tiny canned server covers other APIs' odd bodies
(aioresponses 0.7.9 cannot build responses for aiohttp 3.14: pnuckowski/aioresponses#289).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from inferbatch.client import Client, Response
from inferbatch.errors import AuthRejected, Fatal, RequestFailed, Retryable
from inferbatch.simulator import SimServer

CHAT = "/v1/chat/completions"
KEY = "test-key-0123456789"

Sim = Callable[..., SimServer]


def body(text: str = "What is the capital of France?", **params: Any) -> bytes:
    return orjson.dumps({"model": "claude-4-sonnet", "messages": [{"role": "user", "content": text}], **params})


async def send(url: str, payload: bytes, *, key: str | None = KEY, timeout: float = 5.0) -> Response:
    async with Client(url, key, timeout=timeout, concurrency=4) as client:
        return await client.send(payload)


async def failure(url: str, payload: bytes, *, key: str | None = KEY, timeout: float = 5.0) -> RequestFailed:
    with pytest.raises(RequestFailed) as info:
        await send(url, payload, key=key, timeout=timeout)
    return info.value


def assert_one_short_line(text: str) -> None:
    assert text
    assert "\n" not in text and "\r" not in text
    assert len(text) <= 300


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
        responses = await asyncio.gather(*(client.send(body(f"q{i} [[sim:sleep=80]]")) for i in range(6)))
    assert [r.status for r in responses] == [200] * 6
    assert server.stats.max_in_flight <= 2


# ---- classification against the simulator --------------------------------------


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504, 529])
async def test_retryable_statuses_raise_retryable(sim: Sim, status: int) -> None:
    server = sim()
    exc = await failure(server.url + CHAT, body(f"hello [[sim:{status}]]"))
    assert type(exc) is Retryable
    assert exc.status == status
    assert f"simulated {status}" in exc.message
    assert_one_short_line(exc.message)


@pytest.mark.parametrize("status", [400, 404, 413, 418, 422])
async def test_client_errors_are_fatal_with_the_servers_message(sim: Sim, status: int) -> None:
    server = sim()
    exc = await failure(server.url + CHAT, body(f"hello [[sim:{status}]]"))
    assert type(exc) is Fatal
    assert exc.status == status
    assert f"simulated {status}" in exc.message
    assert_one_short_line(exc.message)


async def test_gateway_400_carries_the_servers_message(sim: Sim) -> None:
    server = sim()
    exc = await failure(server.url + CHAT, orjson.dumps({"model": "m", "messages": []}))
    assert type(exc) is Fatal
    assert exc.status == 400
    assert "'messages' must be a non-empty list" in exc.message
    assert exc.code == "invalid_request"


async def test_unknown_model_is_fatal_404(sim: Sim) -> None:
    server = sim(models=("claude-4-sonnet",))
    exc = await failure(server.url + CHAT, orjson.dumps({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}))
    assert type(exc) is Fatal
    assert exc.status == 404
    assert "not found" in exc.message


@pytest.mark.parametrize(("directive", "status"), [("401", 401), ("403auth", 403), ("403", 403)])
async def test_401_and_json_403_are_auth_rejected(sim: Sim, directive: str, status: int) -> None:
    server = sim()
    exc = await failure(server.url + CHAT, body(f"hello [[sim:{directive}]]"))
    assert type(exc) is AuthRejected
    assert isinstance(exc, Fatal)  # never retried
    assert exc.status == status
    assert_one_short_line(exc.message)


async def test_wrong_key_is_auth_rejected(sim: Sim) -> None:
    server = sim(require_key="right-key")
    exc = await failure(server.url + CHAT, body(), key="wrong-key")
    assert type(exc) is AuthRejected
    assert exc.status == 401
    assert "invalid API key" in exc.message


async def test_html_403_is_retryable_with_a_plain_text_excerpt(sim: Sim) -> None:
    server = sim()
    exc = await failure(server.url + CHAT, body("hello [[sim:403html]]"))
    assert type(exc) is Retryable  # a firewall's page about this prompt, not the key (SPEC §4)
    assert exc.status == 403
    assert "Request blocked by WAF" in exc.message
    assert not re.search(r"<[^>]*>", exc.message)
    assert "<" not in exc.message and ">" not in exc.message
    assert_one_short_line(exc.message)


async def test_html_5xx_is_retryable_with_a_plain_text_excerpt(sim: Sim) -> None:
    server = sim()
    exc = await failure(server.url + CHAT, body("hello [[sim:502html]]"))
    assert type(exc) is Retryable
    assert exc.status == 502
    assert "Request blocked by WAF" in exc.message
    assert "<" not in exc.message


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
    assert 0.25 <= elapsed < 2.0
    assert exc.latency_ms is not None and exc.latency_ms >= 250


@pytest.mark.parametrize("fault", ["malformed", "empty"])
async def test_200_without_a_completion_is_retryable_with_status_200(sim: Sim, fault: str) -> None:
    server = sim()
    exc = await failure(server.url + CHAT, body(f"hello [[sim:{fault}]]"))
    assert type(exc) is Retryable  # SPEC §8.10
    assert exc.status == 200
    assert_one_short_line(exc.message)


async def test_429_carries_retry_after(sim: Sim) -> None:
    server = sim()
    exc = await failure(server.url + CHAT, body("hello [[sim:retry_after=7]] [[sim:429]]"))
    assert type(exc) is Retryable
    assert exc.status == 429
    assert exc.retry_after == pytest.approx(7.0)


async def test_429_carries_retry_after_ms_over_retry_after(sim: Sim) -> None:
    server = sim(retry_after=2.5, retry_after_ms=True)
    exc = await failure(server.url + CHAT, body("hello [[sim:429]]"))
    assert exc.status == 429
    assert exc.retry_after == pytest.approx(2.5)


async def test_429_headers_are_kept_for_the_limiter(sim: Sim) -> None:
    server = sim()
    exc = await failure(server.url + CHAT, body("hello [[sim:retry_after=3]] [[sim:429]]"))
    assert exc.headers is not None
    assert exc.headers["x-ratelimit-remaining-requests"] == "0"  # type: ignore[index]
    assert exc.headers["X-RateLimit-Reset-Requests"] == "3s"  # type: ignore[index]


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

Canned = Callable[..., Awaitable[str]]


@pytest.fixture
async def canned() -> AsyncIterator[Canned]:
    """``url = await canned(status, raw, content_type=..., headers=...)``: a server answering every POST that way."""
    servers: list[TestServer] = []

    async def start(
        status: int, raw: bytes | str | Any, *, content_type: str = "application/json", headers: dict[str, str] | None = None
    ) -> str:
        if not isinstance(raw, (bytes, str)):
            raw = json.dumps(raw)
        data = raw.encode() if isinstance(raw, str) else raw

        async def handler(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(status=status, body=data, content_type=content_type, headers=headers)

        app = web.Application()
        app.router.add_post(CHAT, handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url(CHAT))

    yield start
    for server in servers:
        await server.close()


@pytest.mark.parametrize(
    ("status", "payload", "expected"),
    [
        (400, {"detail": "temperature must be at most 2"}, "temperature must be at most 2"),
        (422, {"message": "max_tokens too large"}, "max_tokens too large"),
        (400, {"error": "plain string error"}, "plain string error"),
        (404, {"error": {"message": "model gone", "type": "not_found_error"}}, "model gone"),
        (400, {"error": {"code": "bad", "detail": "nested detail"}}, "nested detail"),
        (422, {"detail": [{"loc": ["body", "messages"], "msg": "field required"}]}, "field required"),
    ],
)
async def test_error_bodies_of_other_shapes(canned: Canned, status: int, payload: Any, expected: str) -> None:
    exc = await failure(await canned(status, payload), body())
    assert type(exc) is Fatal
    assert exc.status == status
    assert expected in exc.message
    assert_one_short_line(exc.message)


async def test_long_message_is_cut_to_one_short_line(canned: Canned) -> None:
    long = "word " * 400  # 2,000 characters
    url = await canned(400, {"error": {"code": "invalid_request", "message": long}})
    exc = await failure(url, body())
    assert type(exc) is Fatal
    assert exc.message.startswith("invalid_request: word word")
    assert_one_short_line(exc.message)


async def test_message_with_newlines_becomes_one_line(canned: Canned) -> None:
    url = await canned(400, {"error": {"message": "first line\nsecond line\r\n\tthird line"}})
    exc = await failure(url, body())
    assert_one_short_line(exc.message)
    assert "first line second line third line" in exc.message


async def test_plain_text_error_body(canned: Canned) -> None:
    url = await canned(503, "Service Unavailable\n\nupstream connect error", content_type="text/plain")
    exc = await failure(url, body())
    assert type(exc) is Retryable
    assert exc.status == 503
    assert "Service Unavailable upstream connect error" in exc.message
    assert_one_short_line(exc.message)


async def test_long_html_page_becomes_a_short_excerpt(canned: Canned) -> None:
    page = (
        "<html><head><style>body { color: red }</style><script>var x = '<b>';</script></head><body>"
        + "<p>Access denied by policy.</p>" * 200
        + "</body></html>"
    )
    exc = await failure(await canned(403, page, content_type="text/html"), body())
    assert type(exc) is Retryable
    assert exc.status == 403
    assert "Access denied by policy." in exc.message
    assert "<" not in exc.message and "color: red" not in exc.message
    assert_one_short_line(exc.message)


@pytest.mark.parametrize("raw", [b"", b"[1, 2, 3]", b"null", b'{"error": null}', b"\xff\xfe not utf-8"])
async def test_odd_error_bodies_are_handled(canned: Canned, raw: bytes) -> None:
    exc = await failure(await canned(500, raw), body())
    assert type(exc) is Retryable
    assert exc.status == 500
    assert_one_short_line(exc.message)


@pytest.mark.parametrize(
    "payload",
    [{"choices": []}, {"object": "chat.completion"}, {"choices": [{"text": "legacy"}]}, [1, 2], "not json at all"],
)
async def test_200_without_a_completion_is_retryable(canned: Canned, payload: Any) -> None:
    exc = await failure(await canned(200, payload), body())
    assert type(exc) is Retryable
    assert exc.status == 200
    assert_one_short_line(exc.message)


async def test_retry_after_on_503_with_mixed_case_header(canned: Canned) -> None:
    url = await canned(503, {"error": {"message": "busy"}}, headers={"Retry-After": "3"})
    exc = await failure(url, body())
    assert type(exc) is Retryable
    assert exc.retry_after == pytest.approx(3.0)


async def test_retry_after_ms_header(canned: Canned) -> None:
    url = await canned(429, {"error": {"message": "slow down"}}, headers={"Retry-After-Ms": "1200", "Retry-After": "9"})
    exc = await failure(url, body())
    assert exc.status == 429
    assert exc.retry_after == pytest.approx(1.2)


async def test_fatal_keeps_the_code_and_the_parsed_body(canned: Canned) -> None:
    payload = {"error": {"code": "invalid_request", "message": "bad", "type": "invalid_request_error"}}
    exc = await failure(await canned(400, payload), body())
    assert type(exc) is Fatal
    assert exc.code == "invalid_request"
    assert exc.body == payload


@pytest.mark.parametrize(
    ("status", "raw", "content_type"),
    [
        (403, f"<html><body>blocked request from key {KEY}</body></html>", "text/html"),
        (400, json.dumps({"error": {"message": f"bad key {KEY}", "param": [f"Bearer {KEY}"]}}), "application/json"),
        (500, f"upstream said: Authorization: Bearer {KEY}", "text/plain"),
        (200, f'{{"echo": "{KEY}"', "application/json"),
    ],
)
async def test_key_never_appears_in_any_failure(canned: Canned, status: int, raw: str, content_type: str) -> None:
    exc = await failure(await canned(status, raw, content_type=content_type), body())
    assert KEY not in exc.message
    assert KEY not in str(exc)
    assert KEY not in repr(exc.body)
    assert "[REDACTED]" in exc.message
