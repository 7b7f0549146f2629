"""Send one chat-completion request and classify what came back.

``Client`` owns the run's single ``aiohttp.ClientSession``: a connection
limit equal to the concurrency, a ``ClientTimeout`` per attempt, and
redirects never followed, so the key cannot travel to another host.
``send()`` returns a ``Response`` for a usable 200 and raises otherwise:

    Retryable      no response, timeout, 408/409/425/429/5xx, malformed 200, HTML 403
    AuthRejected   401, or a JSON 403 (the key may not use this model)
    QuotaRejected  a 429/403 (or 402) whose code or type says the quota, credit or billing is
                   exhausted; any wait the server asks for (Retry-After, or a 429 with
                   x-ratelimit-remaining-* = 0 and its reset) longer than ``max_wait``
    Fatal          every other 4xx, 3xx (a redirect is not followed), and a body over
                   ``MAX_RESPONSE_BYTES`` (``response_too_large``, read no further)

Nothing the server sends reaches a message, a kept body or ``request_id``
without ``Redactor.scrub`` (every piece of the key of 8+ characters), applied
before any excerpt is cut. A 200 body is checked for the key once, on its raw
bytes, and scrubbed only when a piece is found.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from inferbatch.errors import AuthRejected, Fatal, QuotaRejected, Retryable
from inferbatch.limits import DEFAULT_MAX_WAIT, describe_reset, header_int, human_duration, parse_reset
from inferbatch.redact import Redactor
from inferbatch.retry import RETRYABLE_STATUSES, parse_retry_after

ERROR_EXCERPT_CHARS = 300
ERROR_SOURCE_BYTES = 64 * 1024  # the part of an error body read for its excerpt (a page's text is near the top)
REQUEST_ID_CHARS = 200
MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # SPEC §8.37
USER_AGENT = "inferbatch"

_QUOTA_CODE = re.compile(r"insufficient_quota|quota_exceeded|billing_\w*|credit\w*", re.IGNORECASE)
_QUOTA_STATUSES = frozenset({402, 403, 429})


@dataclass(slots=True)
class Response:
    status: int
    data: dict[str, Any]
    headers: Mapping[str, str]
    latency_ms: float
    raw: bytes
    request_id: str | None = None  # x-request-id, else the body's id; redacted


class Client:
    def __init__(
        self,
        url: str,
        api_key: str | None,
        *,
        timeout: float,
        concurrency: int,
        max_wait: float | None = DEFAULT_MAX_WAIT,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        """``max_wait``: the longest wait a server may ask for (``--max-wait``); longer is QuotaRejected."""
        self.url = url
        self.redactor = Redactor(api_key)
        self._headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._concurrency = concurrency
        self._max_wait = max_wait
        self._max_bytes = max_response_bytes
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(limit=self._concurrency)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, headers=self._headers)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            # Give the connector's transports a moment to close (aiohttp docs, "graceful shutdown").
            await asyncio.sleep(0.05)

    async def send(self, body: bytes) -> Response:
        assert self._session is not None, "use Client as an async context manager"
        started = time.perf_counter()
        status: int | None = None  # known once the status line and headers have arrived
        try:
            async with self._session.post(self.url, data=body, allow_redirects=False) as resp:
                status = resp.status
                headers = self._safe_headers(resp.headers)
                raw = await self._read(resp)
                if raw is None:
                    raise self._too_large(resp, headers, (time.perf_counter() - started) * 1000)
        except TimeoutError:
            elapsed = (time.perf_counter() - started) * 1000
            what = "no response" if status is None else f"HTTP {status} but not its whole body"
            raise Retryable(
                f"timeout: {what} within {self._timeout.total:g} s", status=status, code="timeout", latency_ms=elapsed
            ) from None
        except aiohttp.ClientError as exc:
            elapsed = (time.perf_counter() - started) * 1000
            what = "" if status is None else f"HTTP {status} body cut off: "
            message = self._excerpt(f"connection_error: {what}{type(exc).__name__}: {exc}")
            raise Retryable(message, status=status, code="connection_error", latency_ms=elapsed) from None
        latency_ms = (time.perf_counter() - started) * 1000

        if status == 200:
            data = _completion(raw)
            if data is None:
                excerpt = self._excerpt(raw[:ERROR_SOURCE_BYTES].decode("utf-8", "replace"), 200) or "empty body"
                raise Retryable(
                    f"malformed_response: 200 without a completion ({excerpt})",
                    status=200,
                    code="malformed_response",
                    headers=headers,
                    latency_ms=latency_ms,
                    request_id=self._request_id(headers, None),
                )
            if self._leaks(raw, data):
                data = self.redactor.scrub_data(data)
                raw = orjson.dumps(data)
            return Response(status, data, headers, latency_ms, raw, self._request_id(headers, data))
        raise self._failure(status, raw, headers, latency_ms)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes | None:
        """The body, or None when it is over the size limit (the connection is then closed, unread)."""
        length = resp.content_length
        if length is not None and length > self._max_bytes:
            resp.close()
            return None
        if length is not None and resp.headers.get("Content-Encoding", "identity").lower() == "identity":
            return await resp.read()  # the parser reads exactly Content-Length bytes
        chunks: list[bytes] = []  # chunked, close-delimited, or compressed: count what is decoded
        total = 0
        while chunk := await resp.content.readany():
            total += len(chunk)
            if total > self._max_bytes:
                resp.close()
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, resp: aiohttp.ClientResponse, headers: Mapping[str, str], latency_ms: float) -> Fatal:
        length = resp.content_length
        size = f" (Content-Length {length})" if length is not None and length > self._max_bytes else ""
        return Fatal(
            f"response_too_large: HTTP {resp.status} body over {self._max_bytes / (1024 * 1024):g} MiB{size}; "
            "not read further",
            status=resp.status,
            code="response_too_large",
            headers=headers,
            latency_ms=latency_ms,
            request_id=self._request_id(headers, None),
        )

    def _leaks(self, raw: bytes, data: Any) -> bool:
        """Whether a piece of the key is in the body: its raw bytes, or their canonical form when escaped."""
        if not self.redactor:
            return False
        if self.redactor.found_in(raw):
            return True
        # A JSON escape (\u0041, \/) could hide key characters from the byte search.
        return (b"\\u" in raw or b"\\/" in raw) and self.redactor.found_in(orjson.dumps(data))

    def _safe_headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """The headers as they are, or, when ``x-request-id`` carries a piece of the key, a scrubbed copy."""
        value = headers.get("x-request-id")
        if not value or not self.redactor or self.redactor.scrub(value) == value:
            return headers
        return CIMultiDictProxy(CIMultiDict((k, self.redactor.scrub(v)) for k, v in headers.items()))

    def _request_id(self, headers: Mapping[str, str], data: Any) -> str | None:
        """x-request-id, else the body's id: from scrubbed headers and data, made one short line."""
        value = headers.get("x-request-id")
        if not value and isinstance(data, dict) and isinstance(data.get("id"), str):
            value = data["id"]
        if not value:
            return None
        return _one_line(value, REQUEST_ID_CHARS) or None

    def _excerpt(self, text: str, limit: int = ERROR_EXCERPT_CHARS) -> str:
        """Scrubbed first, then made one short line: a key cut by the excerpt cannot leak its first half."""
        return _one_line(self.redactor.scrub(text), limit)

    def _failure(self, status: int, raw: bytes, headers: Mapping[str, str], latency_ms: float) -> Exception:
        parsed = _json_object(raw)
        code, message = error_code_and_message(status, parsed, raw)
        code = self._excerpt(code, 100)
        text = self._excerpt(f"{code}: {message}" if message else code)
        body = parsed
        if parsed is not None and self._leaks(raw, parsed):
            body = self.redactor.scrub_data(parsed)
        retry_after = parse_retry_after(headers)
        kwargs: dict[str, Any] = dict(
            status=status,
            code=code,
            body=body,
            headers=headers,
            latency_ms=latency_ms,
            request_id=self._request_id(headers, body),
        )
        if status in _QUOTA_STATUSES and _quota_code(parsed):
            return QuotaRejected(self._quota_message(_one_line(text, 160), headers), retry_after=retry_after, **kwargs)
        if status == 401 or (status == 403 and parsed is not None):
            return AuthRejected(text, **kwargs)
        if status in RETRYABLE_STATUSES or status == 403:
            too_long = self._too_long_a_wait(status, retry_after, headers)
            if too_long is not None:
                return QuotaRejected(f"{too_long} ({_one_line(text, 120)})", retry_after=retry_after, **kwargs)
            return Retryable(text, retry_after=retry_after, **kwargs)
        return Fatal(text, **kwargs)

    def _too_long_a_wait(self, status: int, retry_after: float | None, headers: Mapping[str, str]) -> str | None:
        """SPEC §4: a server's wait longer than ``max_wait`` is a stop; the message says which and until when."""
        if self._max_wait is None:
            return None
        limit = human_duration(self._max_wait)
        if retry_after is not None:
            if retry_after > self._max_wait:
                return (
                    f"quota_exhausted: HTTP {status} says to retry {describe_reset(retry_after)} (Retry-After), "
                    f"longer than --max-wait {limit}"
                )
            return None
        if status != 429:
            return None
        for kind, reset in _exhausted(headers):
            if reset > self._max_wait:
                return (
                    f"quota_exhausted: HTTP 429 with no {kind} left (x-ratelimit-remaining-{kind}: 0); it resets "
                    f"{describe_reset(reset)}, longer than --max-wait {limit}"
                )
        return None

    def _quota_message(self, text: str, headers: Mapping[str, str]) -> str:
        """The server's own words, plus when it resets if the headers say."""
        resets = [(reset, f"x-ratelimit-reset-{kind}") for kind, reset in _exhausted(headers)]
        retry_after = parse_retry_after(headers)
        if retry_after is not None:
            resets.append((retry_after, "Retry-After"))
        if not resets:
            return f"{text}; the server gave no reset time"
        reset, source = max(resets)
        return f"{text}; it resets {describe_reset(reset)} ({source})"


def _exhausted(headers: Mapping[str, str]) -> list[tuple[str, float]]:
    """``(kind, seconds to reset)`` for each of requests/tokens the headers say are at 0 with a readable reset."""
    found = []
    for kind in ("requests", "tokens"):
        if header_int(headers, f"x-ratelimit-remaining-{kind}") == 0:
            reset = parse_reset(headers.get(f"x-ratelimit-reset-{kind}"))
            if reset is not None:
                found.append((kind, reset))
    return found


def _quota_code(parsed: dict[str, Any] | None) -> bool:
    """Whether the error's ``code`` or ``type`` says the quota, credit or billing is exhausted."""
    if parsed is None:
        return False
    err = parsed.get("error", parsed)
    if not isinstance(err, dict):
        return False
    return any(isinstance(err.get(k), str) and _QUOTA_CODE.fullmatch(err[k].strip()) for k in ("code", "type"))


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _completion(raw: bytes) -> dict[str, Any] | None:
    data = _json_object(raw)
    if data is None:
        return None
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    if not isinstance(choices[0].get("message"), dict):
        return None
    return data


def error_code_and_message(status: int, parsed: dict[str, Any] | None, raw: bytes) -> tuple[str, str]:
    """Heroku's ``{"error": {"code", "message", "type"}}``, other JSON shapes, or text/HTML (not yet redacted)."""
    if parsed is not None:
        err = parsed.get("error", parsed)
        if isinstance(err, str):
            return f"http_{status}", err
        if isinstance(err, dict):
            code = err.get("code") or err.get("type") or f"http_{status}"
            message = err.get("message") or err.get("detail") or parsed.get("message") or parsed.get("detail") or ""
            if not message and err is parsed:  # a shape we do not know: show it as it came, not nothing
                message = raw[:ERROR_SOURCE_BYTES].decode("utf-8", "replace")
            return str(code), message if isinstance(message, str) else str(message)
        detail = parsed.get("detail") or parsed.get("message")
        if detail:
            return f"http_{status}", str(detail)
        return f"http_{status}", raw[:ERROR_SOURCE_BYTES].decode("utf-8", "replace")
    text = raw[:ERROR_SOURCE_BYTES].decode("utf-8", "replace")
    if "<" in text:
        text = re.sub(r"(?is)<(script|style).*?</\1>", " ", text)
        text = re.sub(r"<[^>]+>", " ", text)
    return f"http_{status}", text


def _one_line(text: str, limit: int = ERROR_EXCERPT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
