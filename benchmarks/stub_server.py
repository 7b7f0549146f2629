"""A fast OpenAI-compatible stub for ``POST /v1/chat/completions``, for benchmarks only.

Raw asyncio: one ``asyncio.Protocol`` per connection parses HTTP/1.1 just enough
(request line, headers, ``Content-Length`` or chunked body, keep-alive,
pipelining) and answers every chat-completion request with the same small
``chat.completion`` JSON, usage included. Nothing is logged per request.

    python benchmarks/stub_server.py [--host 127.0.0.1] [--port 0] [--latency-ms 0]

The first line on stdout is the base URL (``http://127.0.0.1:PORT``); the
process serves until SIGINT/SIGTERM.

Besides the completion endpoint it serves, for the benchmark driver:

    GET  /health          200 {"ok": true}
    GET  /__stats         {"requests": N, "span_s": S}: completions answered since
                          the last reset, and the time from the first request's
                          arrival to the last response's write
    POST /__reset         zero the counters

``--latency-ms`` delays each completion response by that many milliseconds
(a timer per request, ``loop.call_later``, which is what ``asyncio.sleep`` in
a handler amounts to, without a task per request).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "stub-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the stub server."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    },
    separators=(",", ":"),
).encode()


def _response(status: str, body: bytes, keep_alive: bool = True) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
        "\r\n"
    ).encode() + body


OK_KEEP = _response("200 OK", COMPLETION)
OK_CLOSE = _response("200 OK", COMPLETION, keep_alive=False)
NOT_FOUND = _response("404 Not Found", b'{"error":{"code":"not_found","message":"no such route"}}', keep_alive=False)
BAD_REQUEST = _response(
    "400 Bad Request", b'{"error":{"code":"bad_request","message":"bad request"}}', keep_alive=False
)
HEALTH = _response("200 OK", b'{"ok":true}')


def set_content(content: str) -> None:
    """Answer every completion with ``content`` instead (``--content``: e.g. a JSON answer for a schema run)."""
    global COMPLETION, OK_KEEP, OK_CLOSE
    data = json.loads(COMPLETION)
    data["choices"][0]["message"]["content"] = content
    COMPLETION = json.dumps(data, separators=(",", ":")).encode()
    OK_KEEP = _response("200 OK", COMPLETION)
    OK_CLOSE = _response("200 OK", COMPLETION, keep_alive=False)


MAX_HEAD = 64 * 1024


class Stats:
    __slots__ = ("requests", "first", "last")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.first = 0.0
        self.last = 0.0

    def as_json(self) -> bytes:
        span = self.last - self.first if self.requests else 0.0
        return json.dumps({"requests": self.requests, "span_s": span}).encode()


STATS = Stats()


def _chunked_end(buf: bytearray, start: int) -> tuple[int, bytes] | None:
    """End offset and body of a chunked body starting at ``start``, or None if incomplete."""
    pos = start
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip() or b"0", 16)
        pos = eol + 2
        if size == 0:
            # trailers end with an empty line
            end = buf.find(b"\r\n\r\n", pos - 2)
            if end < 0:
                return None
            return end + 4, bytes(body)
        if len(buf) < pos + size + 2:
            return None
        body += buf[pos : pos + size]
        pos += size + 2


class StubProtocol(asyncio.Protocol):
    __slots__ = ("transport", "buf", "loop", "delay")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while buf:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                if len(buf) > MAX_HEAD:
                    self._reply(BAD_REQUEST, close=True)
                return
            lines = bytes(buf[:head_end]).split(b"\r\n")
            try:
                method, path, version = lines[0].split(b" ", 2)
            except ValueError:
                self._reply(BAD_REQUEST, close=True)
                return
            length = 0
            chunked = False
            close = version == b"HTTP/1.0"
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    token = value.strip().lower()
                    if token == b"close":
                        close = True
                    elif token == b"keep-alive":
                        close = False
            body_start = head_end + 4
            if chunked:
                found = _chunked_end(buf, body_start)
                if found is None:
                    return
                end = found[0]
            else:
                end = body_start + length
                if len(buf) < end:
                    return
            del buf[:end]
            self._dispatch(method, path, close)
            if self.transport is None or self.transport.is_closing():
                return

    def _dispatch(self, method: bytes, path: bytes, close: bool) -> None:
        if method == b"POST" and path.split(b"?", 1)[0] in (b"/v1/chat/completions", b"/chat/completions"):
            now = time.monotonic()
            if STATS.requests == 0:
                STATS.first = now
            STATS.requests += 1
            payload = OK_CLOSE if close else OK_KEEP
            if self.delay > 0:
                self.loop.call_later(self.delay, self._reply, payload, close)
            else:
                self._reply(payload, close)
        elif path == b"/health":
            self._reply(HEALTH, close)
        elif path == b"/__stats":
            body = STATS.as_json()
            self._reply(_response("200 OK", body, not close), close)
        elif path == b"/__reset":
            STATS.reset()
            self._reply(_response("200 OK", b'{"ok":true}', not close), close)
        else:
            self._reply(NOT_FOUND, close=True)

    def _reply(self, payload: bytes, close: bool = False) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if payload is OK_KEEP or payload is OK_CLOSE:
            STATS.last = time.monotonic()
        transport.write(payload)
        if close:
            transport.close()


async def serve(host: str, port: int, latency_ms: float) -> None:
    loop = asyncio.get_running_loop()
    delay = latency_ms / 1000.0
    server = await loop.create_server(lambda: StubProtocol(loop, delay), host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()
    print(f"http://{bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (the URL is printed)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before each completion response")
    parser.add_argument("--content", help="the answer's content (default: a short sentence)")
    args = parser.parse_args(argv)
    if args.content is not None:
        set_content(args.content)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.latency_ms))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
