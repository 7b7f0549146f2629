"""A local OpenAI-compatible chat-completions server: `inferbatch simulate`, `--simulate`, and the tests' real server.

It answers ``POST /v1/chat/completions`` (and ``/chat/completions``) with OpenAI-shaped
completions whose reply is derived from the request, so the same request always gets the
same answer. ``GET /v1/models``, ``GET /health``, ``GET /stats`` and ``POST /stats/reset``
(``POST /reset`` also forgets attempt counts and the rate-limit window) complete it.
``GET /stats?prompts=1`` adds ``prompts``: for each distinct last user message (its first
200 characters; at most 50,000 of them, later ones only counted in ``prompts_untracked``),
``{"requests": n, "answered": m}``: the requests that reached the model with it, and the
completions (200 answers with choices) given to it. Tests use it to check that a row
recorded by a run is never sent again; the plain ``/stats`` leaves it out, so it stays small.

Misbehaviour comes from :class:`SimOptions` (latency, fault rates drawn from a seeded RNG,
a sliding-window RPM/TPM limit, a required key, a redirect) or, row by row, from directives
in the text of the last user message, which is how a test makes one row fail among many:

    [[sim:500]]  [[sim:404]] ...     that status (400-599) with a Heroku-shaped JSON error, every attempt
    [[sim:500x2]]                    that status for the first 2 attempts of this request, then success
    [[sim:403html]]                  403 with an HTML page, like a web application firewall
    [[sim:403auth]]  [[sim:401]]     403 authorization_error / 401 invalid_api_key, JSON (a bare 403 is the former)
    [[sim:hang]]  [[sim:drop]]       never answer / close the connection without a response
    [[sim:malformed]]  [[sim:empty]] 200 with truncated JSON / an empty body
    [[sim:sleep=250]]                250 ms more latency
    [[sim:retry_after=2]]            Retry-After for this request's 429s
    [[sim:length]]                   finish_reason "length"

Every fault takes an ``xN`` suffix (``hangx1``, ``dropx1``). Several faults form a script
played in order: ``[[sim:500x1]] [[sim:429x1]]`` is 500, then 429, then success. Attempts
are counted per distinct request body. Faults from rates apply only to rows without
directives. Gateway answers (307, 401 for a wrong key, 400, 404, 413, the RPM/TPM 429)
come without latency and do not advance a row's script. Every answer carries ``x-request-id``.

This module never imports click; the CLI maps its options onto :class:`SimOptions`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import signal
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aiohttp import web

from inferbatch.window import SlidingWindow

if TYPE_CHECKING:
    from inferbatch.config import RunConfig

__all__ = [
    "STATS_KEY",
    "SimOptions",
    "SimServer",
    "SimStats",
    "create_app",
    "format_reset",
    "in_thread",
    "running",
    "serve",
]


def _json_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


_dumps: Callable[[Any], bytes] = _json_dumps
_loads: Callable[[bytes], Any] = json.loads
try:
    import orjson

    _dumps = orjson.dumps
    _loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is optional
    pass

DEFAULT_MODELS = ("claude-4-sonnet", "claude-3-7-sonnet", "claude-3-5-haiku")
_SHUTDOWN_TIMEOUT = 1.0
PROMPT_KEY_CHARS = 200
MAX_TRACKED_PROMPTS = 50_000
_JSON = "application/json"
_DIRECTIVE = re.compile(r"\[\[sim:([^\[\]]*)\]\]")
_FAULT = re.compile(r"(\d{3})(html|auth)?(?:x(\d+))?|(hang|drop|malformed|empty)(?:x(\d+))?")
_MODIFIER = re.compile(r"(sleep|retry_after)=(\d+(?:\.\d*)?)")
_WAF_PAGE = "<html><body><h1>{status} {reason}</h1>Request blocked by WAF</body></html>"
_ERROR_KINDS = {
    400: ("invalid_request", "invalid_request_error"),
    401: ("invalid_api_key", "authentication_error"),
    403: ("authorization_error", "authorization_error"),
    404: ("not_found", "not_found_error"),
    408: ("request_timeout", "timeout_error"),
    409: ("conflict", "conflict_error"),
    413: ("request_too_large", "invalid_request_error"),
    422: ("unprocessable_entity", "invalid_request_error"),
    429: ("rate_limit_exceeded", "rate_limit_error"),
    500: ("internal_server_error", "server_error"),
    502: ("bad_gateway", "server_error"),
    503: ("service_unavailable", "server_error"),
    504: ("gateway_timeout", "server_error"),
    529: ("overloaded", "overloaded_error"),
}


@dataclass(frozen=True, slots=True)
class SimOptions:
    """How the simulator behaves; rates are probabilities drawn per request from ``Random(seed)``."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    seed: int = 0
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_hang: float = 0.0
    rate_drop: float = 0.0
    rate_malformed: float = 0.0
    retry_after: float | None = 1.0
    retry_after_ms: bool = False
    rpm: int | None = None
    tpm: int | None = None
    window_s: float = 60.0
    ratelimit_headers: bool = True
    require_key: str | None = None
    echo_key_in_error: bool = False
    models: tuple[str, ...] = ()
    redirect_to: str | None = None
    max_body_bytes: int = 8 * 1024 * 1024


@dataclass(slots=True)
class SimStats:
    """What the server saw; ``by_status`` counts answered chat requests, drops and hangs are apart."""

    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    auth_headers_seen: int = 0
    stream_requested: int = 0
    dropped: int = 0
    hung: int = 0
    # monotonic arrival time of the most recent chat requests, for pacing checks
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    # per last user message (cut to PROMPT_KEY_CHARS): [requests, answered]; at most MAX_TRACKED_PROMPTS keys
    prompts: dict[str, list[int]] = field(default_factory=dict)
    prompts_untracked: int = 0

    def prompt_sent(self, text: str) -> list[int] | None:
        """Count a request for this prompt; returns its counters (None once the table is full)."""
        key = text[:PROMPT_KEY_CHARS]
        counts = self.prompts.get(key)
        if counts is None:
            if len(self.prompts) >= MAX_TRACKED_PROMPTS:
                self.prompts_untracked += 1
                return None
            counts = self.prompts[key] = [0, 0]
        counts[0] += 1
        return counts

    def snapshot(self, prompts: bool = False) -> dict[str, Any]:
        """A JSON-able copy; ``by_status`` keys are strings, as they are after a JSON round trip.

        With ``prompts``, also the per-prompt counts (``prompts`` and ``prompts_untracked``)."""
        extra: dict[str, Any] = {}
        if prompts:
            extra = {
                "prompts": {text: {"requests": n, "answered": m} for text, (n, m) in self.prompts.items()},
                "prompts_untracked": self.prompts_untracked,
            }
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "by_status": {str(code): n for code, n in sorted(self.by_status.items())},
            "auth_headers_seen": self.auth_headers_seen,
            "stream_requested": self.stream_requested,
            "dropped": self.dropped,
            "hung": self.hung,
            **extra,
        }

    def reset(self) -> None:
        """Zero the counters, except ``in_flight``, which still describes live requests."""
        self.requests = 0
        self.max_in_flight = self.in_flight
        self.by_status.clear()
        self.auth_headers_seen = 0
        self.stream_requested = 0
        self.dropped = 0
        self.hung = 0
        self.arrivals.clear()
        self.prompts.clear()
        self.prompts_untracked = 0


STATS_KEY = web.AppKey("inferbatch_sim_stats", SimStats)


def format_reset(seconds: float) -> str:
    """A duration the way OpenAI's ``x-ratelimit-reset-*`` headers write it: ``20ms``, ``51s``, ``6m0s``, ``1.5s``.

    Rounded up to the millisecond, so a client that waits this long is never early.
    """
    ms = math.ceil(seconds * 1000 - 1e-6)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs = f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms / 1000:.3f}".rstrip("0") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


class _BadRequest(Exception):
    """The request cannot be answered: status, error code and message for the body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class _Fault:
    kind: str  # json | html | auth | hang | drop | malformed | empty
    status: int = 200


@dataclass(slots=True)
class _Plan:
    """What the directives of one request ask for."""

    script: list[tuple[_Fault, int | None]] = field(default_factory=list)
    sleep_ms: float = 0.0
    retry_after: float | None = None
    length: bool = False


def _parse_directives(text: str) -> _Plan | None:
    """The directives in ``text``, or None without any; an unknown one is a 400."""
    tokens = _DIRECTIVE.findall(text)
    if not tokens:
        return None
    plan = _Plan()
    for token in tokens:
        spec = token.replace(" ", "").lower()
        if spec == "length":
            plan.length = True
        elif m := _MODIFIER.fullmatch(spec):
            if m[1] == "sleep":
                plan.sleep_ms += float(m[2])
            else:
                plan.retry_after = float(m[2])
        elif (m := _FAULT.fullmatch(spec)) and (m[4] or 400 <= int(m[1]) <= 599):
            if m[4]:
                fault, count = _Fault(m[4]), m[5]
            else:
                fault, count = _Fault(m[2] or "json", int(m[1])), m[3]
            plan.script.append((fault, int(count) if count else None))
        else:
            raise _BadRequest(400, "invalid_request", f"unknown simulator directive [[sim:{token}]]")
    return plan


def _summarise(messages: list[Any]) -> tuple[int, str, Any, str]:
    """Prompt characters, the last user message's text, the last role, and a hash of roles and texts."""
    digest = hashlib.blake2b(digest_size=8)
    prompt_chars = 0
    last_user = ""
    role = None
    for message in messages:
        if not isinstance(message, dict):
            raise _BadRequest(400, "invalid_request", "each message must be an object")
        text = _text(message.get("content"))
        role = message.get("role")
        prompt_chars += len(text)
        digest.update(f"{role}\x00{text}\x00".encode())
        if role == "user":
            last_user = text
    return prompt_chars, last_user, role, digest.hexdigest()


def _text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _error(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    """A Heroku-shaped JSON error: ``{"error": {"code", "message", "type"}}``."""
    fallback = (f"http_{status}", "server_error" if status >= 500 else "invalid_request_error")
    default_code, type_ = _ERROR_KINDS.get(status, fallback)
    body = _dumps({"error": {"code": code or default_code, "message": message, "type": type_}})
    return web.Response(status=status, reason=_reason(status), body=body, headers=headers, content_type=_JSON)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Site Overloaded" if status == 529 else "Error"


def _seconds_header(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


class _Window:
    """Sliding-window admission of requests and tokens, like Heroku's per-model limits.

    The windows are :class:`inferbatch.window.SlidingWindow`, the client limiter's own; the rule here is the
    server's: a request over the limit on its own is never admitted (the client admits one into an empty window).
    """

    __slots__ = ("length", "requests", "rpm", "tokens", "tpm")

    def __init__(self, rpm: int | None, tpm: int | None, length: float) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.length = length
        self.requests = SlidingWindow(length)  # 1 a request, counted even with no rpm: the reset headers use it
        self.tokens = SlidingWindow(length)

    def _room(self, window: SlidingWindow, amount: int, limit: int, now: float) -> float:
        return self.length if amount > limit else window.wait(amount, limit, now)

    def admit(self, tokens: int, now: float) -> float | None:
        """Record the request and return None, or return the seconds until it would fit."""
        wait = 0.0
        if self.rpm is not None:
            wait = max(wait, self._room(self.requests, 1, self.rpm, now))
        if self.tpm is not None:
            wait = max(wait, self._room(self.tokens, tokens, self.tpm, now))
        if wait > 0:
            return max(wait, 0.001)
        self.requests.add(1, now)
        self.tokens.add(tokens, now)
        return None

    def headers(self, now: float) -> dict[str, str]:
        """``x-ratelimit-*`` headers; the reset is when the oldest entry leaves the window."""
        oldest = self.requests.oldest_leaves_in(now)
        reset = format_reset(oldest) if oldest is not None else "0s"
        headers: dict[str, str] = {}
        if self.rpm is not None:
            headers["x-ratelimit-limit-requests"] = str(self.rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, self.rpm - self.requests.count(now)))
            headers["x-ratelimit-reset-requests"] = reset
        if self.tpm is not None:
            headers["x-ratelimit-limit-tokens"] = str(self.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, self.tpm - int(self.tokens.used(now))))
            headers["x-ratelimit-reset-tokens"] = reset
        return headers


class _Simulator:
    """The app's state and handlers."""

    def __init__(self, opts: SimOptions) -> None:
        self.opts = opts
        self.stats = SimStats()
        self.models = opts.models or DEFAULT_MODELS
        self.expected_auth = None if opts.require_key is None else f"Bearer {opts.require_key}"
        self.closing = asyncio.Event()
        self.ids = random.Random()
        self.faults_by_rate = [
            (rate, fault)
            for rate, fault in (
                (opts.rate_429, _Fault("json", 429)),
                (opts.rate_500, _Fault("json", 500)),
                (opts.rate_503, _Fault("json", 503)),
                (opts.rate_hang, _Fault("hang")),
                (opts.rate_drop, _Fault("drop")),
                (opts.rate_malformed, _Fault("malformed")),
            )
            if rate > 0
        ]
        self.reset_state()

    def reset_state(self) -> None:
        opts = self.opts
        self.rng = random.Random(opts.seed)
        self.attempts: dict[bytes, int] = {}
        self.window = (
            _Window(opts.rpm, opts.tpm, opts.window_s) if opts.rpm is not None or opts.tpm is not None else None
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        stats.arrivals.append(time.monotonic())
        if "Authorization" in request.headers:
            stats.auth_headers_seen += 1
        stats.in_flight += 1
        if stats.in_flight > stats.max_in_flight:
            stats.max_in_flight = stats.in_flight
        try:
            try:
                response = await self._answer(request)
            except _BadRequest as e:
                response = _error(e.status, e.message, e.code)
        finally:
            stats.in_flight -= 1
        stats.by_status[response.status] = stats.by_status.get(response.status, 0) + 1
        response.headers["x-request-id"] = f"req_{self.ids.getrandbits(96):024x}"
        return response

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        """Gateway checks, then admission to the rate window, then the row's fault or its completion."""
        opts = self.opts
        if opts.redirect_to is not None:
            return web.Response(status=307, headers={"Location": opts.redirect_to})
        authorization = request.headers.get("Authorization")
        if self.expected_auth is not None and authorization != self.expected_auth:
            return self._unauthorized(authorization, "invalid API key")
        raw, body = await self._read_json(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest(400, "invalid_request", "'messages' must be a non-empty list")
        model = body.get("model")
        if opts.models and model not in opts.models:
            raise _BadRequest(404, "model_not_found", f"model {model!r} not found")
        if body.get("stream") is True:
            self.stats.stream_requested += 1
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
            raise _BadRequest(400, "invalid_request", "'max_tokens' must be a positive integer")
        prompt_chars, last_user, last_role, digest = _summarise(messages)
        counts = self.stats.prompt_sent(last_user)
        plan = _parse_directives(last_user) if "[[sim:" in last_user else None

        prompt_tokens = max(1, math.ceil(prompt_chars / 4))
        choice, completion_tokens = _reply(body, last_user, last_role, digest, max_tokens)
        if plan is not None and plan.length:
            choice["finish_reason"] = "length"

        headers: dict[str, str] = {}
        if self.window is not None:
            now = time.monotonic()
            wait = self.window.admit(prompt_tokens + completion_tokens, now)
            if opts.ratelimit_headers:
                headers = self.window.headers(now)
            if wait is not None:
                return self._rate_limited(headers, wait)

        fault = self._fault(plan, raw)
        delay_ms = opts.latency_ms + (plan.sleep_ms if plan is not None else 0.0)
        if opts.latency_jitter_ms > 0:
            delay_ms += self.rng.random() * opts.latency_jitter_ms
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        if fault is not None:
            return await self._faulty(request, fault, headers, plan, authorization, model)

        completion = {
            "id": f"chatcmpl-{self.ids.getrandbits(96):024x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model if isinstance(model, str) else "sim-model",
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        if counts is not None:
            counts[1] += 1
        return web.Response(body=_dumps(completion), headers=headers, content_type=_JSON)

    async def _read_json(self, request: web.Request) -> tuple[bytes, dict[str, Any]]:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _BadRequest(
                413, "request_too_large", f"request body exceeds {self.opts.max_body_bytes} bytes"
            ) from None
        try:
            body = _loads(raw)
        except ValueError:
            raise _BadRequest(400, "invalid_request", "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _BadRequest(400, "invalid_request", "request body must be a JSON object")
        return raw, body

    def _fault(self, plan: _Plan | None, raw: bytes) -> _Fault | None:
        """This attempt's fault: the next step of the row's script, else one drawn by rate."""
        if plan is None:
            if self.faults_by_rate:
                draw = self.rng.random()
                for rate, fault in self.faults_by_rate:
                    if draw < rate:
                        return fault
                    draw -= rate
            return None
        if not plan.script:
            return None
        key = hashlib.blake2b(raw, digest_size=16).digest()
        attempt = self.attempts[key] = self.attempts.get(key, 0) + 1
        for fault, count in plan.script:
            if count is None or attempt <= count:
                return fault
            attempt -= count
        return None

    async def _faulty(
        self,
        request: web.Request,
        fault: _Fault,
        headers: dict[str, str],
        plan: _Plan | None,
        authorization: str | None,
        model: Any,
    ) -> web.StreamResponse:
        kind, status = fault.kind, fault.status
        if kind == "hang":
            self.stats.hung += 1
            await self.closing.wait()
        elif kind == "drop":
            self.stats.dropped += 1
        if kind in ("hang", "drop"):
            if request.transport is not None:
                request.transport.close()
            # The lost connection cancels this handler; a response would go to a dead socket.
            await asyncio.get_running_loop().create_future()
        if kind == "malformed":
            return web.Response(body=b'{"id": "chatcmpl-', headers=headers, content_type=_JSON)
        if kind == "empty":
            return web.Response(body=b"", headers=headers, content_type=_JSON)
        if kind == "html":
            page = _WAF_PAGE.format(status=status, reason=_reason(status))
            return web.Response(status=status, text=page, headers=headers, content_type="text/html")
        if kind == "auth" or (status == 403 and kind == "json"):
            message = f"simulated 403: key not allowed to use model {model}"
            return _error(403, message, "authorization_error", headers)
        if status == 401:
            return self._unauthorized(authorization, "simulated 401: invalid API key", headers)
        if status == 429:
            retry_after = (
                plan.retry_after if plan is not None and plan.retry_after is not None else self.opts.retry_after
            )
            self._retry_headers(headers, retry_after)
            if self.window is None and self.opts.ratelimit_headers:
                headers["x-ratelimit-remaining-requests"] = "0"
                if retry_after is not None:
                    headers["x-ratelimit-reset-requests"] = format_reset(retry_after)
        message = f"simulated {status} {_reason(status)}"
        return _error(status, message, headers=headers)

    def _retry_headers(self, headers: dict[str, str], seconds: float | None) -> None:
        if seconds is None:
            return
        headers["Retry-After"] = _seconds_header(seconds)
        if self.opts.retry_after_ms:
            headers["retry-after-ms"] = str(math.ceil(seconds * 1000))

    def _rate_limited(self, headers: dict[str, str], wait: float) -> web.Response:
        if self.opts.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
            if self.opts.retry_after_ms:
                headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        message = f"rate limit exceeded, retry in {format_reset(wait)}"
        return _error(429, message, headers=headers)

    def _unauthorized(
        self, authorization: str | None, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        if self.opts.echo_key_in_error:
            presented = (authorization or "").removeprefix("Bearer ")
            message = f"{message}: {presented!r}" if authorization else f"{message}: no key presented"
        return _error(401, message, headers=headers)

    async def models_list(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "inferbatch-simulator"} for m in self.models]
        return web.Response(body=_dumps({"object": "list", "data": data}), content_type=_JSON)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type=_JSON)

    async def get_stats(self, request: web.Request) -> web.Response:
        prompts = request.query.get("prompts", "") not in ("", "0", "false")
        return web.Response(body=_dumps(self.stats.snapshot(prompts)), content_type=_JSON)

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.stats.reset()
        return web.Response(body=_dumps(self.stats.snapshot()), content_type=_JSON)

    async def reset_all(self, request: web.Request) -> web.Response:
        self.stats.reset()
        self.reset_state()
        return web.Response(body=_dumps(self.stats.snapshot()), content_type=_JSON)

    async def on_shutdown(self, app: web.Application) -> None:
        self.closing.set()


def _reply(
    body: dict[str, Any], last_user: str, last_role: Any, digest: str, max_tokens: int | None
) -> tuple[dict[str, Any], int]:
    """The deterministic choice for this request and its completion tokens.

    A text reply is ``sim reply to: <first 80 chars of the last user message> [<hash of the messages>]``,
    cut to ``max_tokens * 4`` characters (finish_reason "length"). A request with ``tools`` whose last
    message is the user's gets a call of the named or first function instead.
    """
    tools = body.get("tools")
    tool_choice = body.get("tool_choice")
    if isinstance(tools, list) and tools and last_role == "user" and tool_choice != "none":
        name = None
        if isinstance(tool_choice, dict):
            name = (tool_choice.get("function") or {}).get("name")
        if name is None and isinstance(tools[0], dict):
            name = (tools[0].get("function") or {}).get("name")
        if isinstance(name, str):
            arguments = json.dumps({"input": last_user[:80]})
            tokens = math.ceil((len(name) + len(arguments)) / 4)
            call = {"id": f"call_{digest}", "type": "function", "function": {"name": name, "arguments": arguments}}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            return {"index": 0, "message": message, "finish_reason": "tool_calls"}, min(tokens, max_tokens or tokens)
    content = f"sim reply to: {last_user[:80]} [{digest}]"
    finish_reason = "stop"
    if max_tokens is not None and len(content) > max_tokens * 4:
        content = content[: max_tokens * 4]
        finish_reason = "length"
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
    return choice, math.ceil(len(content) / 4)


def create_app(opts: SimOptions) -> web.Application:
    """The simulator as an aiohttp application; its :class:`SimStats` is ``app[STATS_KEY]``."""
    sim = _Simulator(opts)
    app = web.Application(client_max_size=opts.max_body_bytes)
    app[STATS_KEY] = sim.stats
    app.on_shutdown.append(sim.on_shutdown)
    app.router.add_post("/v1/chat/completions", sim.chat)
    app.router.add_post("/chat/completions", sim.chat)
    app.router.add_get("/v1/models", sim.models_list)
    app.router.add_get("/health", sim.health)
    app.router.add_get("/stats", sim.get_stats)
    app.router.add_post("/stats/reset", sim.reset_stats)
    app.router.add_post("/reset", sim.reset_all)
    return app


@dataclass(frozen=True, slots=True)
class SimServer:
    """A listening simulator: ``url`` is the base, without a trailing slash or ``/v1``."""

    url: str
    host: str
    port: int
    stats: SimStats


@asynccontextmanager
async def running(opts: SimOptions | None = None, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[SimServer]:
    """Serve on the current event loop for the duration of the block; port 0 picks a free port."""
    app = create_app(opts or SimOptions())
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        netloc = f"[{host}]" if ":" in host else host
        yield SimServer(url=f"http://{netloc}:{bound}", host=host, port=bound, stats=app[STATS_KEY])
    finally:
        await runner.cleanup()


@contextmanager
def in_thread(opts: SimOptions | None = None, host: str = "127.0.0.1", port: int = 0) -> Iterator[SimServer]:
    """Serve on an event loop of its own in a daemon thread, for synchronous code; returns once listening."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        box["loop"] = asyncio.get_running_loop()
        box["stop"] = stop = asyncio.Event()
        try:
            async with running(opts, host, port) as server:
                box["server"] = server
                started.set()
                await stop.wait()
        finally:
            started.set()

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name="inferbatch-simulator", daemon=True)
    thread.start()
    started.wait()
    if "server" not in box:
        thread.join()
        raise box.get("error") or RuntimeError("simulator did not start")
    try:
        yield box["server"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(timeout=10)


def serve(
    opts: SimOptions, host: str = "127.0.0.1", port: int = 8000, ready: Callable[[str], None] | None = None
) -> None:
    """Serve until SIGINT or SIGTERM, then return normally; ``ready(url)`` is called once listening."""
    with suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_signal(opts, host, port, ready))


async def _serve_until_signal(opts: SimOptions, host: str, port: int, ready: Callable[[str], None] | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
            loop.add_signal_handler(signum, stop.set)
    async with running(opts, host, port) as server:
        if ready is not None:
            ready(server.url)
        await stop.wait()


@asynccontextmanager
async def simulated(cfg: RunConfig) -> AsyncIterator[RunConfig]:
    """``--simulate``: a simulator on loopback for the block, and ``cfg`` pointed at it (a caller's to start,
    never the runner's: ``async with simulated(cfg) as cfg: await run_batch(cfg)``)."""
    from dataclasses import replace

    from inferbatch.config import endpoint_url

    async with running(SimOptions()) as server:
        yield replace(cfg, url=endpoint_url(server.url))
