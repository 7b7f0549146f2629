"""A raw-socket HTTP/1.1 server that misbehaves on purpose, byte by byte, scripted per request.

The simulator is a well-behaved aiohttp application; the faults a client must survive live below
HTTP framing, where no web framework will go: a connection reset half-way through a body, a
Content-Length larger than what is sent, a 40 MB body, a status line that is not one, a gzip body
that is not gzip, headers that echo the caller's key. ``FaultServer`` reads each request itself
(asyncio streams on 127.0.0.1, port 0, in a thread of its own so an in-process CLI run can use it)
and answers with the script for the request's prompt (the last message's content):

    server.on("row 1", reset_mid_body(), ok())     # first attempt: reset; second and later: a completion
    server.on("row 2", respond(429, quota_body("insufficient_quota")))

Actions are small coroutines writing to the socket; ``Seen`` (the request, with the bearer key)
is passed to header/body builders, so an answer can echo the key it was sent. ``bytes_sent`` counts
what the server managed to hand to the kernel for each answer (a client that stops reading stops
that count from reaching the total).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

CHAT_PATH = "/v1/chat/completions"
CHUNK = 64 * 1024


@dataclass
class Seen:
    """One request as the server read it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def key(self) -> str:
        auth = self.headers.get("authorization", "")
        return auth.removeprefix("Bearer ")

    @property
    def prompt(self) -> str:
        try:
            messages = json.loads(self.body)["messages"]
            return str(messages[-1]["content"])
        except (ValueError, KeyError, IndexError, TypeError):
            return ""


HeaderSpec = dict[str, str] | Callable[[Seen], dict[str, str]] | None
BodySpec = bytes | str | dict[str, Any] | Callable[[Seen], Any]


@dataclass
class Outcome:
    """What one answer did: bytes handed to the kernel, and whether the client went away first."""

    prompt: str
    bytes_sent: int = 0
    total: int = 0
    client_closed: bool = False


# An action writes one answer; it returns True if the connection may serve another request.
Action = Callable[[Seen, asyncio.StreamWriter, Outcome], Awaitable[bool]]


def _headers(spec: HeaderSpec, seen: Seen) -> dict[str, str]:
    if spec is None:
        return {}
    return spec(seen) if callable(spec) else dict(spec)


def _body(spec: BodySpec, seen: Seen) -> bytes:
    value = spec(seen) if callable(spec) else spec
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()


def completion(
    content: str = "fine", *, tool_calls: list[Any] | None = None, id: str = "chatcmpl-fault"
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": id,
        "object": "chat.completion",
        "model": "fault-model",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


def quota_body(
    code: str,
    message: str = "You exceeded your current quota, please check your plan and billing.",
    type_: str = "insufficient_quota",
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "type": type_}}


def _head(status: int, headers: dict[str, str], reason: str = "") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason or 'Whatever'}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _write(writer: asyncio.StreamWriter, data: bytes, outcome: Outcome) -> bool:
    """Write and drain; False (and ``client_closed``) if the client has gone."""
    try:
        writer.write(data)
        await writer.drain()
    except (ConnectionError, OSError):
        outcome.client_closed = True
        return False
    outcome.bytes_sent += len(data)
    return True


def respond(
    status: int = 200,
    body: BodySpec = b"",
    *,
    headers: HeaderSpec = None,
    content_type: str = "application/json",
    content_length: bool = True,
) -> Action:
    """A complete answer; without ``content_length`` the body is delimited by closing the connection."""

    async def act(seen: Seen, writer: asyncio.StreamWriter, outcome: Outcome) -> bool:
        data = _body(body, seen)
        head = {"Content-Type": content_type, **_headers(headers, seen)}
        if content_length:
            head["Content-Length"] = str(len(data))
        else:
            head["Connection"] = "close"
        outcome.total = len(data)
        await _write(writer, _head(status, head) + data, outcome)
        return content_length

    return act


def ok(content: str = "fine", *, headers: HeaderSpec = None, **kwargs: Any) -> Action:
    return respond(200, lambda seen: completion(content, **kwargs), headers=headers)


def ok_from(build: Callable[[Seen], dict[str, Any]], *, headers: HeaderSpec = None) -> Action:
    """A 200 whose completion is built from the request (e.g. echoing its key)."""
    return respond(200, build, headers=headers)


def json_error(status: int, code: str, message: str, *, headers: HeaderSpec = None) -> Action:
    return respond(status, {"error": {"code": code, "message": message, "type": code}}, headers=headers)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), not a polite FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def reset_mid_body(total: int = 10_000, sent: int = 100) -> Action:
    """Headers promising ``total`` bytes, ``sent`` of them, then a connection reset."""

    async def act(seen: Seen, writer: asyncio.StreamWriter, outcome: Outcome) -> bool:
        outcome.total = total
        head = _head(200, {"Content-Type": "application/json", "Content-Length": str(total)})
        await _write(writer, head + b'{"id": "chatcmpl-' + b"x" * max(0, sent - 17), outcome)
        _abort(writer)
        return False

    return act


def truncated(total: int = 10_000, sent: int = 100) -> Action:
    """Content-Length larger than what is sent, then a normal close."""

    async def act(seen: Seen, writer: asyncio.StreamWriter, outcome: Outcome) -> bool:
        outcome.total = total
        head = _head(200, {"Content-Type": "application/json", "Content-Length": str(total)})
        await _write(writer, head + b'{"id": "chatcmpl-' + b"x" * max(0, sent - 17), outcome)
        writer.close()
        return False

    return act


def oversized(size: int, *, framing: str = "length", status: int = 200) -> Action:
    """A ``size``-byte body (a valid completion JSON when read whole), streamed in 64 KB pieces.

    ``framing``: ``length`` (Content-Length), ``chunked`` (Transfer-Encoding) or ``close`` (neither).
    Stops when the client goes away; ``bytes_sent`` counts body bytes handed to the kernel.
    """
    prefix = b'{"id": "chatcmpl-big", "choices": [{"index": 0, "message": {"role": "assistant", "content": "'
    suffix = b'"}, "finish_reason": "stop"}]}'

    def pieces() -> Iterator[bytes]:
        yield prefix
        filler = b"a" * CHUNK
        left = size - len(prefix) - len(suffix)
        while left > 0:
            yield filler[: min(CHUNK, left)]
            left -= CHUNK
        yield suffix

    async def act(seen: Seen, writer: asyncio.StreamWriter, outcome: Outcome) -> bool:
        outcome.total = size
        head: dict[str, str] = {"Content-Type": "application/json"}
        if framing == "length":
            head["Content-Length"] = str(size)
        elif framing == "chunked":
            head["Transfer-Encoding"] = "chunked"
        else:
            head["Connection"] = "close"
        if not await _write(writer, _head(status, head), outcome):
            return False
        outcome.bytes_sent = 0
        finished = True
        for piece in pieces():
            data = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if framing == "chunked" else piece
            before = outcome.bytes_sent
            if not await _write(writer, data, outcome):
                finished = False
                break
            outcome.bytes_sent = before + len(piece)
        if finished and framing == "chunked":
            await _write(writer, b"0\r\n\r\n", outcome)
        writer.close()
        return False

    return act


def garbage_status(line: bytes = b"HTTP/1.1 banana split\r\n") -> Action:
    """A status line that is not one, then a close."""

    async def act(seen: Seen, writer: asyncio.StreamWriter, outcome: Outcome) -> bool:
        await _write(writer, line + b"Content-Length: 2\r\n\r\n{}", outcome)
        writer.close()
        return False

    return act


def gzip_garbage(status: int = 200) -> Action:
    """``Content-Encoding: gzip`` over bytes that are not gzip (a valid gzip header, then noise)."""

    async def act(seen: Seen, writer: asyncio.StreamWriter, outcome: Outcome) -> bool:
        noise = gzip.compress(json.dumps(completion()).encode())[:10] + os.urandom(200)
        head = _head(
            status, {"Content-Type": "application/json", "Content-Encoding": "gzip", "Content-Length": str(len(noise))}
        )
        outcome.total = len(noise)
        await _write(writer, head + noise, outcome)
        return True

    return act


def gzip_bomb(size: int) -> Action:
    """A small gzip body that decompresses to ``size`` bytes of valid-looking JSON."""

    async def act(seen: Seen, writer: asyncio.StreamWriter, outcome: Outcome) -> bool:
        content = b"a" * size
        packed = gzip.compress(b'{"choices": [{"message": {"content": "' + content + b'"}}]}', compresslevel=9)
        head = _head(
            200, {"Content-Type": "application/json", "Content-Encoding": "gzip", "Content-Length": str(len(packed))}
        )
        outcome.total = len(packed)
        await _write(writer, head + packed, outcome)
        return True

    return act


def hang() -> Action:
    """Read the request, answer nothing, keep the connection open."""

    async def act(seen: Seen, writer: asyncio.StreamWriter, outcome: Outcome) -> bool:
        await asyncio.sleep(3600)
        return False

    return act


@dataclass
class FaultServer:
    host: str = "127.0.0.1"
    port: int = 0
    default: Action = field(default_factory=ok)
    requests: list[Seen] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    _scripts: dict[str, list[Action]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def chat_url(self) -> str:
        return self.url + CHAT_PATH

    def on(self, prompt: str, *actions: Action) -> None:
        """Answers for requests whose last message is ``prompt``: in turn, the last one repeating."""
        with self._lock:
            self._scripts[prompt] = list(actions)

    def sent_to(self, prompt: str) -> list[Seen]:
        return [s for s in self.requests if s.prompt == prompt]

    def _next(self, prompt: str) -> Action:
        with self._lock:
            script = self._scripts.get(prompt)
            if not script:
                return self.default
            return script.pop(0) if len(script) > 1 else script[0]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = b""
                if "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                seen = Seen(method, path, headers, body)
                outcome = Outcome(seen.prompt)
                with self._lock:
                    self.requests.append(seen)
                    self.outcomes.append(outcome)
                keep = await self._next(seen.prompt)(seen, writer, outcome)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if not writer.is_closing():
                writer.close()


@contextmanager
def running(server: FaultServer | None = None) -> Iterator[FaultServer]:
    """Serve ``server`` in a thread with its own event loop until the block ends."""
    server = server or FaultServer()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: dict[str, asyncio.Event] = {}

    async def main() -> None:
        stop["event"] = asyncio.Event()
        srv = await asyncio.start_server(server._serve, server.host, 0)
        server.port = srv.sockets[0].getsockname()[1]
        started.set()
        async with srv:
            await stop["event"].wait()
        pending = asyncio.all_tasks() - {asyncio.current_task()}
        for task in pending:
            task.cancel()  # handlers still hanging or streaming
        await asyncio.gather(*pending, return_exceptions=True)

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), name="faultserver", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("fault server did not start")
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(stop["event"].set)
        thread.join(10)
        loop.close()
