"""The client's edges that the mutation run (issue 16) found unpinned: exact excerpt and id lengths, the
boundaries of the size limit, the shapes of error bodies, a 402 quota stop, a key hidden behind ``\\/``
escapes, latency in milliseconds under an injected clock, and connections closed when the client is left.

Every case runs the real ``Client`` against a real loopback server (``faultserver.py``, or a few lines of
asyncio streams where the test must see the connection itself).
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from faultserver import FaultServer, completion, hang, json_error, ok, reset_mid_body, respond, running
from inferbatch import client as client_module
from inferbatch.client import Client, Response
from inferbatch.errors import Fatal, QuotaRejected, RequestFailed, Retryable

KEY = "sk-mut-Hq4Wn8Rz2Lx6Tc9Vb3Md7Pk1Jf5Gs0Ya"


@pytest.fixture
def fault() -> Iterator[FaultServer]:
    with running() as server:
        yield server


def body(prompt: str) -> bytes:
    return orjson.dumps({"model": "fault-model", "messages": [{"role": "user", "content": prompt}]})


async def outcome(server: FaultServer, prompt: str, *, key: str | None = KEY, **options: Any) -> Any:
    """The Response ``Client.send`` returned for the scripted answer, or the RequestFailed it raised."""
    timeout = options.pop("timeout", 10.0)
    async with Client(server.chat_url, key, timeout=timeout, concurrency=1, **options) as client:
        try:
            return await client.send(body(prompt))
        except RequestFailed as exc:
            return exc


# ---- lengths: what reaches the error, error code and request_id columns -----------------------------------


async def test_an_error_code_is_clipped_to_100_characters(fault: FaultServer) -> None:
    fault.on("long code", json_error(400, "c" * 150, "bad value"))
    exc = await outcome(fault, "long code")
    assert type(exc) is Fatal
    assert exc.code == "c" * 99 + "…"
    assert exc.message == "c" * 99 + "…: bad value"


async def test_a_message_of_exactly_300_characters_is_kept_whole(fault: FaultServer) -> None:
    fault.on("at the limit", json_error(400, "c", "m" * 297))  # "c: " + 297 = 300 characters
    fault.on("one more", json_error(400, "c", "m" * 298))
    at = await outcome(fault, "at the limit")
    assert at.message == "c: " + "m" * 297
    over = await outcome(fault, "one more")
    assert over.message == "c: " + "m" * 296 + "…"
    assert len(over.message) == 300


async def test_a_request_id_is_clipped_to_200_characters_and_one_of_200_is_kept(fault: FaultServer) -> None:
    fault.on("long id", ok(headers={"x-request-id": "r" * 250}))
    fault.on("id at the limit", ok(headers={"x-request-id": "r" * 200}))
    long_id = await outcome(fault, "long id")
    assert isinstance(long_id, Response)
    assert long_id.request_id == "r" * 199 + "…"
    at = await outcome(fault, "id at the limit")
    assert at.request_id == "r" * 200


async def test_a_malformed_200s_excerpt_is_200_characters(fault: FaultServer) -> None:
    fault.on("not json", respond(200, "x" * 500, content_type="text/plain"))
    exc = await outcome(fault, "not json")
    assert type(exc) is Retryable
    assert exc.message == "malformed_response: 200 without a completion (" + "x" * 199 + "…)"


async def test_a_quota_stop_keeps_160_characters_of_the_servers_words(fault: FaultServer) -> None:
    fault.on("quota", json_error(429, "insufficient_quota", "w" * 400))
    exc = await outcome(fault, "quota")
    assert type(exc) is QuotaRejected
    # "insufficient_quota: " is 20 characters: 139 more, the ellipsis, then what the headers say of the reset
    assert exc.message == "insufficient_quota: " + "w" * 139 + "…; the server gave no reset time"


async def test_only_the_first_64_kib_of_an_error_page_is_read_for_its_excerpt(fault: FaultServer) -> None:
    head = "<html><body><p>Service unavailable</p>"
    page = head + " " * (64 * 1024 - len(head)) + "<p>late words</p></body></html>"
    fault.on("page", respond(503, page, content_type="text/html"))
    exc = await outcome(fault, "page")
    assert type(exc) is Retryable
    assert exc.message == "http_503: Service unavailable"


# ---- error bodies of other shapes --------------------------------------------------------------------------


async def test_a_top_level_message_is_the_message_not_the_whole_body(fault: FaultServer) -> None:
    fault.on("top", respond(422, {"message": "max_tokens too large"}))
    fault.on("code only", respond(400, {"error": {"code": "bad_thing"}}))
    top = await outcome(fault, "top")
    assert (type(top), top.message) == (Fatal, "http_422: max_tokens too large")
    code_only = await outcome(fault, "code only")
    assert (type(code_only), code_only.code, code_only.message) == (Fatal, "bad_thing", "bad_thing")


async def test_an_error_that_is_not_an_object_falls_back_to_the_top_level_words(fault: FaultServer) -> None:
    fault.on("null error", respond(500, {"error": None, "message": "upstream overloaded"}))
    fault.on("list error", respond(500, {"error": ["x"], "detail": "shard 3 down"}))
    null = await outcome(fault, "null error")
    assert (type(null), null.message) == (Retryable, "http_500: upstream overloaded")
    listed = await outcome(fault, "list error")
    assert (type(listed), listed.message) == (Retryable, "http_500: shard 3 down")


# ---- quota ---------------------------------------------------------------------------------------------------


async def test_a_402_with_a_quota_code_is_a_quota_stop(fault: FaultServer) -> None:
    fault.on("402", json_error(402, "billing_hard_limit_reached", "Payment required"))
    exc = await outcome(fault, "402")
    assert type(exc) is QuotaRejected
    assert exc.status == 402
    assert exc.message == "billing_hard_limit_reached: Payment required; the server gave no reset time"


async def test_a_429_whose_error_is_a_string_is_a_rate_limit_not_a_quota_stop(fault: FaultServer) -> None:
    fault.on("string", respond(429, {"error": "slow down"}))
    exc = await outcome(fault, "string")
    assert type(exc) is Retryable
    assert (exc.status, exc.message) == (429, "http_429: slow down")


# ---- the size limit's boundaries (SPEC §8.37) -------------------------------------------------------------


async def test_a_content_length_exactly_at_the_limit_is_read(fault: FaultServer) -> None:
    size = len(json.dumps(completion()).encode())  # what ok() sends, with that Content-Length
    fault.on("fits", ok())
    response = await outcome(fault, "fits", max_response_bytes=size)
    assert isinstance(response, Response)
    assert response.data["choices"][0]["message"]["content"] == "fine"
    refused = await outcome(fault, "fits", max_response_bytes=size - 1)
    assert type(refused) is Fatal and refused.code == "response_too_large"
    assert refused.message.endswith(f" MiB (Content-Length {size}); not read further")


async def test_a_compressed_body_at_the_limit_that_decodes_past_it_does_not_blame_its_content_length(
    fault: FaultServer,
) -> None:
    """The Content-Length is named only when it is itself over the limit: here the decoded bytes are."""
    packed = gzip.compress(json.dumps(completion("a" * 100_000)).encode(), mtime=0)
    fault.on("bomb", respond(200, packed, headers={"Content-Encoding": "gzip"}))
    exc = await outcome(fault, "bomb", max_response_bytes=len(packed))
    assert type(exc) is Fatal and exc.code == "response_too_large"
    limit = len(packed) / (1024 * 1024)
    assert exc.message == f"response_too_large: HTTP 200 body over {limit:g} MiB; not read further"


# ---- a key hidden behind JSON escapes (SPEC §8.33) ----------------------------------------------------------

SLASHED_KEY = "sk-Ab3/Cd4Ef5/Gh6Ij7/Kl8Mn9"  # no 8 characters without a "/": sent as "\/", no raw piece remains


async def test_a_200_echoing_a_key_behind_slash_escapes_only_is_scrubbed(fault: FaultServer) -> None:
    escaped = SLASHED_KEY.replace("/", "\\/")
    raw = '{"id": "x", "choices": [{"index": 0, "message": {"content": "k=' + escaped + '"}}]}'
    assert "\\u" not in raw
    fault.on("echo", respond(200, raw))
    response = await outcome(fault, "echo", key=SLASHED_KEY)
    assert isinstance(response, Response)
    assert response.data["choices"][0]["message"]["content"] == "k=[REDACTED]"


# ---- latency_ms: the attempt's time in milliseconds, on every path ------------------------------------------


class StepClock:
    """``perf_counter`` for the client: each reading is ``step`` seconds after the one before."""

    def __init__(self, start: float = 100.0, step: float = 0.25) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> float:
        now = self.now
        self.now += self.step
        return now


async def test_latency_is_milliseconds_between_the_two_readings_on_every_path(
    fault: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "time", SimpleNamespace(perf_counter=StepClock()))
    fault.on("answer", ok())
    fault.on("too large", ok())
    fault.on("cut", reset_mid_body())
    fault.on("silent", hang())
    answer = await outcome(fault, "answer")
    assert isinstance(answer, Response)
    too_large = await outcome(fault, "too large", max_response_bytes=10)
    assert type(too_large) is Fatal and too_large.code == "response_too_large"
    cut = await outcome(fault, "cut")
    assert type(cut) is Retryable and cut.code == "connection_error"
    silent = await outcome(fault, "silent", timeout=0.2)
    assert type(silent) is Retryable and silent.code == "timeout"
    latencies = [answer.latency_ms, too_large.latency_ms, cut.latency_ms, silent.latency_ms]
    assert latencies == [250.0, 250.0, 250.0, 250.0]


# ---- the session's connections -------------------------------------------------------------------------------


async def test_leaving_the_client_closes_its_kept_alive_connection() -> None:
    """A connection kept alive for the next request is closed when the client is left, not left open."""
    answer = json.dumps(completion()).encode()
    served = asyncio.Event()
    closed = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(answer)}\r\n\r\n".encode()
            + answer
        )
        await writer.drain()
        served.set()
        await reader.read()  # b"" once the client closes its end
        closed.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with Client(f"http://127.0.0.1:{port}/v1/chat/completions", KEY, timeout=5, concurrency=1) as client:
            response = await client.send(body("hello"))
            assert response.data["choices"][0]["message"]["content"] == "fine"
            await asyncio.wait_for(served.wait(), 10)
            assert not closed.is_set()  # kept alive while the client is open
        # aiohttp's own keep-alive timeout would close it after 15 s; leaving the client closes it now
        await asyncio.wait_for(closed.wait(), 10)
    finally:
        server.close()
        await server.wait_closed()
