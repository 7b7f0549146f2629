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

A request with a ``response_format`` (SPEC §8.42) is answered with JSON: for ``json_schema`` the compact
text of :func:`minimal_instance` of its schema; for ``json_object`` ``{"answer": <the usual reply>}``, or a
minimal instance of its ``schema`` key (llama.cpp's way). The LLM-judge schema (properties exactly
pass/score/reason, §8.44) gets a passing verdict. These directives shape such answers; they are read from
every user message of the request, not only the last, so a re-ask that appends the bad answer and a
correction still carries them, and they are counted per prompt (the messages up to the one holding them):

    [[sim:schema-miss]]              JSON that fails the schema (see :func:`mismatching_instance`), every time
    [[sim:schema-missx2]]            that for the first 2 structured answers to this prompt, then a matching one
    [[sim:fenced]]                   the JSON in a Markdown fence: a line "```json", the JSON, a line "```"
    [[sim:not-json]]                 the usual plain-text reply even though JSON was asked for
    [[sim:judge-fail]]               (anywhere in the messages) the judge's verdict is pass false, score 0.0
    [[sim:judge-score=0.4]]          (anywhere in the messages) the judge's score is 0.4 (pass as above)
    [[sim:cached=N]]  [[sim:reasoning=N]]  N in usage's cached_tokens / reasoning_tokens (0 otherwise)

Every completion's ``usage`` carries ``prompt_tokens_details.cached_tokens`` and
``completion_tokens_details.reasoning_tokens`` (§8.43); the last two directives work without a ``response_format``.

Every fault takes an ``xN`` suffix (``hangx1``, ``dropx1``). Several faults form a script
played in order: ``[[sim:500x1]] [[sim:429x1]]`` is 500, then 429, then success. Attempts
are counted per distinct request body. Faults from rates apply only to rows without
directives. Gateway answers (307, 401 for a wrong key, 400, 404, 413, the RPM/TPM 429)
come without latency and do not advance a row's script. Every answer carries ``x-request-id``.
``SimOptions(reject_response_format=True)`` plays a model without structured output: any request with a
``response_format`` gets OpenAI's 400 ``unsupported_parameter``. ``SimStats.structured_requests`` counts the
requests that carried a ``response_format``, so a test can count re-asks; ``judge_requests`` (and
``judge_models``, by model) those asking for the judge's verdict, so a test can tell judge calls from answers.

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
from typing import TYPE_CHECKING, Any, TypeGuard

from aiohttp import web

from inferbatch.structured import STATED_SCHEMA
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
    "minimal_instance",
    "mismatching_instance",
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
# Directives on a structured answer's form and on usage details: read by _read_shape from every user message.
_SHAPE = re.compile(r"schema-miss(?:x(\d+))?|fenced|not-json|judge-fail|(cached|reasoning)=(\d+)")
_JUDGE_FAIL = "judge-fail"
_JUDGE_SCORE = re.compile(r"judge-score=(\d+(?:\.\d*)?)")
_JUDGE_KEYS = frozenset({"pass", "score", "reason"})
_UNSUPPORTED_RESPONSE_FORMAT = "Unsupported parameter: 'response_format' is not supported with this model."
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
    # a model without structured output: any request with a response_format is OpenAI's 400 unsupported_parameter
    reject_response_format: bool = False


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
    # chat requests whose body had a response_format key (answered or not): re-asks of structured answers show here
    structured_requests: int = 0
    # requests asking for the LLM judge's verdict (its schema, sent or stated; SPEC §8.44), by model
    judge_requests: int = 0
    judge_models: dict[str, int] = field(default_factory=dict)
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
            "structured_requests": self.structured_requests,
            "judge_requests": self.judge_requests,
            "judge_models": dict(sorted(self.judge_models.items())),
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
        self.structured_requests = 0
        self.judge_requests = 0
        self.judge_models.clear()
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
        elif _SHAPE.fullmatch(spec) or _JUDGE_SCORE.fullmatch(spec):
            pass  # about the answer's form: _read_shape reads these, from every user message
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


@dataclass(slots=True)
class _Shape:
    """What the answer-shape directives of one request ask for (see the module docstring)."""

    miss: bool = False
    miss_count: int | None = None  # schema-missxN: N; None: every time
    miss_key: str = ""  # the prompt the misses are counted for: a hash of the messages up to the directive's
    fenced: bool = False
    not_json: bool = False
    judge_fail: bool = False
    judge_score: float | None = None  # judge-score=X: the judge's score (its pass stays true unless judge-fail)
    cached: int = 0
    reasoning: int = 0


def _read_shape(messages: list[Any]) -> _Shape:
    """The answer-shape directives of every user message (``judge-fail``: of any message).

    Every user message, not only the last, because a re-ask may append the bad answer and a correction to the
    conversation; the misses are counted for the messages up to the first ``schema-miss``, which such a re-ask
    leaves as they were. Other directives, and unknown ones, are the last user message's business."""
    shape = _Shape()
    digest = hashlib.blake2b(digest_size=8)
    for message in messages:
        text = _text(message.get("content"))
        role = message.get("role")
        digest.update(f"{role}\x00{text}\x00".encode())
        if "[[sim:" not in text:
            continue
        for token in _DIRECTIVE.findall(text):
            spec = token.replace(" ", "").lower()
            if spec == _JUDGE_FAIL:
                shape.judge_fail = True
            score = _JUDGE_SCORE.fullmatch(spec)
            if score is not None:
                shape.judge_score = min(1.0, float(score[1]))
            m = _SHAPE.fullmatch(spec)
            if m is None or role != "user":
                continue
            if spec.startswith("schema-miss"):
                if not shape.miss:
                    shape.miss, shape.miss_key = True, digest.hexdigest()
                    shape.miss_count = int(m[1]) if m[1] else None
            elif spec == "fenced":
                shape.fenced = True
            elif spec == "not-json":
                shape.not_json = True
            elif m[2] == "cached":
                shape.cached = int(m[3])
            elif m[2] == "reasoning":
                shape.reasoning = int(m[3])
    return shape


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
        self.misses: dict[str, int] = {}  # structured answers given per [[sim:schema-missxN]] prompt
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
        if "response_format" in body:
            self.stats.structured_requests += 1
            if opts.reject_response_format:
                raise _BadRequest(400, "unsupported_parameter", _UNSUPPORTED_RESPONSE_FORMAT)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest(400, "invalid_request", "'messages' must be a non-empty list")
        model = body.get("model")
        answer_format = body.get("response_format") or _stated_format(body)
        if _asks_judge(body, answer_format):
            self.stats.judge_requests += 1
            self.stats.judge_models[str(model)] = self.stats.judge_models.get(str(model), 0) + 1
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
        shape = _read_shape(messages) if b"[[sim:" in raw else None
        cached, reasoning = (shape.cached, shape.reasoning) if shape is not None else (0, 0)
        prompt_tokens = max(1, math.ceil(prompt_chars / 4), cached)

        def reply(miss: bool) -> tuple[dict[str, Any], int, bool]:
            choice, tokens, structured = _reply(
                body, last_user, last_role, digest, max_tokens, shape, miss, answer_format
            )
            if plan is not None and plan.length:
                choice["finish_reason"] = "length"
            return choice, max(tokens, reasoning), structured

        miss = self._miss_due(shape)
        choice, completion_tokens, structured = reply(miss)

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
        if miss != self._miss_due(shape):  # during the latency, a request with the same prompt took the last miss
            miss = not miss
            choice, completion_tokens, structured = reply(miss)

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
                "prompt_tokens_details": {"cached_tokens": cached},
                "completion_tokens_details": {"reasoning_tokens": reasoning},
            },
        }
        if counts is not None:
            counts[1] += 1
        if structured and shape is not None and shape.miss:
            # counted when answered, so a fault or a rate-limit 429 before it does not use up a miss
            self.misses[shape.miss_key] = self.misses.get(shape.miss_key, 0) + 1
        return web.Response(body=_dumps(completion), headers=headers, content_type=_JSON)

    def _miss_due(self, shape: _Shape | None) -> bool:
        """Whether this prompt's next structured answer fails its schema: ``schema-miss``, or ``schema-missxN``
        with fewer than N such answers given."""
        if shape is None or not shape.miss:
            return False
        return shape.miss_count is None or self.misses.get(shape.miss_key, 0) < shape.miss_count

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


# --- Structured answers: a minimal valid instance of a JSON Schema, and one that fails it -----------------------

_MAX_DEPTH = 32  # deeper than any real answer schema; a schema that recurses through `required` has no instance
_OPTIONAL_DEPTH = 8  # below this, objects without `required` stop filling in their (optional) properties
_MISS = "schema-miss"
_LOWER_BOUNDS = frozenset({"minimum", "exclusiveMinimum", "minLength", "minItems"})
# Sample values for string formats: jsonschema does not check formats by default, but a client may.
_FORMATS = {
    "date": "2000-01-01",
    "date-time": "2000-01-01T00:00:00Z",
    "time": "00:00:00Z",
    "email": "x@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-0000-0000-000000000000",
}
# A value of each JSON type, with the schema types it satisfies (an integer is also a number).
_TYPED_VALUES: tuple[tuple[Any, frozenset[str]], ...] = (
    (_MISS, frozenset({"string"})),
    (0, frozenset({"integer", "number"})),
    (0.5, frozenset({"number"})),
    (True, frozenset({"boolean"})),
    (None, frozenset({"null"})),
    ([], frozenset({"array"})),
    ({}, frozenset({"object"})),
)


def minimal_instance(schema: Any) -> Any:
    """A small value that validates against ``schema``: what the simulator answers a ``json_schema`` request with.

    Small and predictable rather than realistic, so a test can foresee the answer: an object holds only its
    ``required`` properties (all of ``properties`` when it has no ``required``), an array ``minItems`` items, a
    string ``minLength`` x's (at least one), a number the smallest integer its bounds allow (0 without any),
    ``enum``/``anyOf``/``oneOf`` their first, ``allOf`` its parts merged; local ``$ref`` (``#/$defs/...``,
    ``#/definitions/...``) is followed. An empty or unknown schema gives ``{}``. Not handled: ``pattern``,
    ``not``, ``if``/``then``/``else``, ``dependent*``, ``minProperties``, and ``uniqueItems`` beyond enums,
    strings and numbers."""
    return _minimal(schema, schema, 0)


_UNFAILABLE: Any = object()  # _mismatch's answer for a schema that admits every value


def mismatching_instance(schema: Any) -> Any:
    """A value that fails ``schema``, for ``[[sim:schema-miss]]``: a client's validation must catch it.

    As close to a valid answer as it can be, the way a model goes wrong: an enum or const gets a value outside
    it, an object the minimal instance without its first required property (or with its first property made
    wrong when nothing is required), anything else a value of the wrong type. A schema that admits every value
    (``{}``) cannot be failed; it gets the string ``"schema-miss"``."""
    value = _mismatch(schema, schema, 0)
    return _MISS if value is _UNFAILABLE else value


def _pointer(root: Any, ref: str) -> Any:
    """The schema a local ``$ref`` (``#``, ``#/$defs/x``, JSON-pointer escapes) names; ``{}`` if it names none."""
    from urllib.parse import unquote

    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return {}  # remote and anchor refs: not an answer schema's business
    node = root
    for raw in ref[2:].split("/"):
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return {}
    return node


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two schemas that must both hold, as one, well enough for a minimal instance: properties and required
    combine, lower bounds take the larger, anything else keeps ``a``'s."""
    merged = dict(a)
    for key, value in b.items():
        if key not in merged:
            merged[key] = value
        elif key == "properties" and isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = {**value, **merged[key]}
        elif key == "required" and isinstance(value, list) and isinstance(merged[key], list):
            merged[key] = list(dict.fromkeys([*merged[key], *value]))
        elif key in _LOWER_BOUNDS and _is_number(value) and _is_number(merged[key]) and value > merged[key]:
            merged[key] = value
    return merged


def _resolve(schema: Any, root: Any, depth: int = 0) -> dict[str, Any]:
    """``schema`` with its ``$ref`` and ``allOf`` folded in; ``{}`` for anything that is not a schema object
    (``true`` admits everything; ``false`` admits nothing, so nothing is right for it anyway)."""
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return {}
    resolved: dict[str, Any] = schema
    ref = resolved.get("$ref")
    if isinstance(ref, str):
        rest = {k: v for k, v in resolved.items() if k != "$ref"}
        resolved = _merge(rest, _resolve(_pointer(root, ref), root, depth + 1))
    parts = resolved.get("allOf")
    if isinstance(parts, list):
        merged = {k: v for k, v in resolved.items() if k != "allOf"}
        for part in parts:
            merged = _merge(merged, _resolve(part, root, depth + 1))
        resolved = merged
    return resolved


def _branch(schema: dict[str, Any], root: Any, depth: int) -> dict[str, Any] | None:
    """The first ``anyOf``/``oneOf`` alternative with the schema's other keywords, which hold as well; None
    without alternatives."""
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
            return _merge(rest, _resolve(branches[0], root, depth + 1))
    return None


def _is_number(value: Any) -> TypeGuard[float]:
    """A JSON number (int counts as float for typing), not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _types(schema: dict[str, Any]) -> list[str]:
    """The schema's ``type`` as a list of names (empty without one)."""
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [k for k in kind if isinstance(k, str)]
    return []


def _kind(schema: dict[str, Any]) -> str | None:
    """The type to build: the first non-null of ``type``, else one its keywords imply, else None."""
    types = _types(schema)
    if types:
        return next((k for k in types if k != "null"), types[0])
    if any(k in schema for k in ("properties", "required", "additionalProperties")):
        return "object"
    if any(k in schema for k in ("items", "prefixItems", "minItems")):
        return "array"
    if any(k in schema for k in ("minLength", "maxLength", "format")):
        return "string"
    if any(k in schema for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "multipleOf")):
        return "number"
    return None


def _minimal(schema: Any, root: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        return None
    s = _resolve(schema, root)
    if "const" in s:
        return s["const"]
    enum = s.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    branch = _branch(s, root, depth)
    if branch is not None:
        return _minimal(branch, root, depth + 1)
    kind = _kind(s)
    if kind == "object":
        props = s.get("properties")
        props = props if isinstance(props, dict) else {}
        required = s.get("required")
        if isinstance(required, list):
            keys = [k for k in required if isinstance(k, str)]
        else:
            keys = list(props) if depth < _OPTIONAL_DEPTH else []
        extra = s.get("additionalProperties")
        return {k: _minimal(props.get(k, extra if isinstance(extra, dict) else {}), root, depth + 1) for k in keys}
    if kind == "array":
        return _minimal_array(s, root, depth)
    if kind == "string":
        return _minimal_string(s)
    if kind in ("integer", "number"):
        return _smallest_number(s, kind == "integer")
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return {}


def _minimal_array(s: dict[str, Any], root: Any, depth: int) -> list[Any]:
    """``minItems`` items: ``prefixItems`` (or draft-7 ``items`` as a list) first, then ``items``; distinct ones
    for ``uniqueItems`` where the item schema makes that easy (enums, strings, numbers)."""
    count = s.get("minItems")
    count = count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0
    prefix = s.get("prefixItems")
    prefix = prefix if isinstance(prefix, list) else []
    items = s.get("items", {})
    if isinstance(items, list):
        prefix, items = items, s.get("additionalItems", {})
    values = [_minimal(prefix[i] if i < len(prefix) else items, root, depth + 1) for i in range(count)]
    if s.get("uniqueItems") is True and count > len(prefix) + 1:
        item = _resolve(items, root)
        enum = item.get("enum")
        for i in range(len(prefix) + 1, count):
            if isinstance(enum, list) and len(enum) >= count - len(prefix):
                values[i] = enum[i - len(prefix)]
            elif isinstance(values[i], str):
                values[i] += str(i)
            elif _is_number(values[i]):
                values[i] += i
    return values


def _minimal_string(s: dict[str, Any]) -> str:
    low, high = s.get("minLength"), s.get("maxLength")
    low = low if isinstance(low, int) and not isinstance(low, bool) else 0
    high = high if isinstance(high, int) and not isinstance(high, bool) else None
    fmt = s.get("format")
    sample = _FORMATS.get(fmt) if isinstance(fmt, str) else None
    if sample is not None and len(sample) >= low and (high is None or len(sample) <= high):
        return sample
    length = max(low, 1)
    return "x" * (length if high is None else min(length, high))


def _smallest_number(s: dict[str, Any], integer: bool) -> int | float:
    """The smallest integer the lower bounds allow (0 without any, or below the upper bound), as a multiple of
    ``multipleOf``; a number with no integer in range gets its lower bound (or the middle of a strict range)."""
    low: float | None = None
    strict_low = False
    minimum, exclusive = s.get("minimum"), s.get("exclusiveMinimum")
    if _is_number(minimum):
        low, strict_low = minimum, exclusive is True  # draft 4: a boolean beside minimum
    if _is_number(exclusive) and (low is None or exclusive >= low):
        low, strict_low = exclusive, True
    high: float | None = None
    strict_high = False
    maximum, exclusive = s.get("maximum"), s.get("exclusiveMaximum")
    if _is_number(maximum):
        high, strict_high = maximum, exclusive is True
    if _is_number(exclusive) and (high is None or exclusive <= high):
        high, strict_high = exclusive, True
    if low is None:
        value: int | float = 0
        if high is not None and (high < 0 or (strict_high and high == 0)):
            value = math.ceil(high) - 1 if strict_high else math.floor(high)
    else:
        value = math.floor(low) + 1 if strict_low else math.ceil(low)
    step = s.get("multipleOf")
    if _is_number(step) and step > 0:
        value = math.ceil(value / step) * step
        if float(value).is_integer():
            value = int(value)
    fits = high is None or value < high or (value == high and not strict_high)
    if not fits and not integer and low is not None:
        return (low + high) / 2 if strict_low and high is not None else low
    return value


def _mismatch(schema: Any, root: Any, depth: int) -> Any:
    """A value that fails ``schema``, or ``_UNFAILABLE`` when the schema admits every value."""
    if depth > _MAX_DEPTH:
        return _UNFAILABLE
    s = _resolve(schema, root)
    if "const" in s:
        return _outside([s["const"]])
    enum = s.get("enum")
    if isinstance(enum, list) and enum:
        return _outside(enum)
    if _kind(s) == "object":
        value = _minimal(s, root, depth)
        required, props = s.get("required"), s.get("properties")
        if isinstance(value, dict) and isinstance(required, list) and required and isinstance(required[0], str):
            value.pop(required[0], None)
            return value
        if isinstance(value, dict) and isinstance(props, dict):
            for key, sub in props.items():
                wrong = _mismatch(sub, root, depth + 1)
                if wrong is not _UNFAILABLE:
                    return {**value, key: wrong}
    types = _types(s)
    if types and (wrong := _wrong_type(types)) is not _UNFAILABLE:
        return wrong
    branches = s.get("anyOf", s.get("oneOf"))
    if isinstance(branches, list) and branches:
        # the value must fail every alternative: a type none of them allows, when each names its types
        allowed = [_types(_resolve(b, root)) for b in branches]
        if all(allowed):
            return _wrong_type([t for kinds in allowed for t in kinds])
        return _mismatch(branches[0], root, depth + 1)
    return _UNFAILABLE


def _wrong_type(types: list[str]) -> Any:
    """A value of none of these types (``_UNFAILABLE`` when they cover them all)."""
    allowed = set(types)
    value = next((value for value, kinds in _TYPED_VALUES if not kinds & allowed), _UNFAILABLE)
    return value.copy() if isinstance(value, list | dict) else value  # the table's own [] and {} stay empty


def _outside(values: list[Any]) -> str:
    """A string that is none of ``values``."""
    return next(c for c in (f"{_MISS}-{i}" if i else _MISS for i in range(len(values) + 1)) if c not in values)


def _schema_of(response_format: Any) -> tuple[bool, dict[str, Any] | None]:
    """Whether the request asks for JSON, and the schema it must match (None: any JSON object will do)."""
    if not isinstance(response_format, dict):
        return False, None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return True, schema if isinstance(schema, dict) else {}
    if kind == "json_object":
        schema = response_format.get("schema")
        return True, schema if isinstance(schema, dict) else None
    return False, None


def _stated_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """A model that follows instructions: a schema stated in a system message (``STATED_SCHEMA``, then its
    JSON, as ``structured.schema_instruction`` writes it) is answered as if it had been sent as
    ``response_format`` (``--schema-mode prompt``)."""
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if message.get("role") in ("system", "developer") and isinstance(content, str) and STATED_SCHEMA in content:
            try:
                schema = json.loads(content.split(STATED_SCHEMA, 1)[1])
            except ValueError:
                return None
            if isinstance(schema, dict):
                return {"type": "json_schema", "json_schema": {"name": "stated", "schema": schema}}
    return None


def _structured(response_format: Any, reply: str, shape: _Shape | None, miss: bool) -> str | None:
    """The content of a structured answer (see the module docstring), or None when free text was asked for."""
    wants_json, schema = _schema_of(response_format)
    if not wants_json:
        return None
    if shape is not None and shape.not_json:
        return reply
    value: Any
    if miss:
        value = mismatching_instance(schema if schema is not None else {"type": "object"})
    elif schema is None:
        value = {"answer": reply}
    elif _is_judge(schema):
        passed = shape is None or not shape.judge_fail
        verdict = "meets" if passed else "fails"
        score = shape.judge_score if shape is not None and shape.judge_score is not None else float(passed)
        value = {
            "pass": passed,
            "score": score,
            "reason": f"sim judge: the answer {verdict} the rubric",
        }
    else:
        value = minimal_instance(schema)
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return f"```json\n{text}\n```" if shape is not None and shape.fenced else text


def _asks_judge(body: dict[str, Any], answer_format: Any) -> bool:
    """Whether ``body`` asks for the LLM judge's verdict: ``answer_format`` (its response_format, or the one
    ``_stated_format`` found in its system message) has the judge schema."""
    _, schema = _schema_of(answer_format)
    return schema is not None and _is_judge(schema)


def _is_judge(schema: dict[str, Any]) -> bool:
    """The LLM-judge's schema (SPEC §8.44): its properties are exactly pass, score and reason."""
    props = _resolve(schema, schema).get("properties")
    return isinstance(props, dict) and set(props) == _JUDGE_KEYS


def _reply(
    body: dict[str, Any],
    last_user: str,
    last_role: Any,
    digest: str,
    max_tokens: int | None,
    shape: _Shape | None = None,
    miss: bool = False,
    answer_format: Any = None,
) -> tuple[dict[str, Any], int, bool]:
    """The deterministic choice for this request, its completion tokens, and whether it is a structured answer.

    A text reply is ``sim reply to: <first 80 chars of the last user message> [<hash of the messages>]``,
    cut to ``max_tokens * 4`` characters (finish_reason "length"). A request with ``tools`` whose last
    message is the user's gets a call of the named or first function instead. A ``response_format`` asking
    for JSON makes the content JSON (:func:`_structured`; ``miss``: one that fails the schema), cut the same way.
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
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
            return choice, min(tokens, max_tokens or tokens), False
    content = f"sim reply to: {last_user[:80]} [{digest}]"
    structured = _structured(answer_format, content, shape, miss)
    if structured is not None:
        content = structured
    finish_reason = "stop"
    if max_tokens is not None and len(content) > max_tokens * 4:
        content = content[: max_tokens * 4]
        finish_reason = "length"
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
    return choice, math.ceil(len(content) / 4), structured is not None


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
