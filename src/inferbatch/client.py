"""Send one chat-completion request and classify what came back.

``Client`` owns the run's single ``aiohttp.ClientSession``: a connection
limit equal to the concurrency, a ``ClientTimeout`` per attempt, and
redirects never followed, so the key cannot travel to another host.
``send()`` returns a ``Response`` for a usable 200 and raises otherwise:

    Retryable      no response, timeout, 408/409/425/429/5xx, malformed 200, HTML 403
    AuthRejected   401, or a JSON 403 (the key may not use this model)
    Fatal          every other 4xx, and 3xx (a redirect is not followed)
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

from inferbatch.errors import AuthRejected, Fatal, Retryable
from inferbatch.retry import RETRYABLE_STATUSES, parse_retry_after

ERROR_EXCERPT_CHARS = 300
USER_AGENT = "inferbatch"


@dataclass(slots=True)
class Response:
    status: int
    data: dict[str, Any]
    headers: Mapping[str, str]
    latency_ms: float
    raw: bytes


class Client:
    def __init__(self, url: str, api_key: str | None, *, timeout: float, concurrency: int) -> None:
        self.url = url
        self._secret = api_key or ""
        self._headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(limit=self._concurrency)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers=self._headers
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            # Give the connector's transports a moment to close (aiohttp docs, "graceful shutdown").
            await asyncio.sleep(0.05)

    async def send(self, body: bytes) -> Response:
        assert self._session is not None, "use Client as an async context manager"
        started = time.perf_counter()
        try:
            async with self._session.post(self.url, data=body, allow_redirects=False) as resp:
                raw = await resp.read()
                status = resp.status
                headers = resp.headers
        except asyncio.TimeoutError:
            elapsed = (time.perf_counter() - started) * 1000
            raise Retryable(f"timeout: no response within {self._timeout.total:g} s", latency_ms=elapsed) from None
        except aiohttp.ClientError as exc:
            elapsed = (time.perf_counter() - started) * 1000
            message = self.redact(f"connection_error: {type(exc).__name__}: {exc}")
            raise Retryable(_one_line(message), code="connection_error", latency_ms=elapsed) from None
        latency_ms = (time.perf_counter() - started) * 1000

        if status == 200:
            data = _completion(raw)
            if data is None:
                excerpt = _one_line(self.redact(raw[:200].decode("utf-8", "replace"))) or "empty body"
                raise Retryable(
                    f"malformed_response: 200 without a completion ({excerpt})",
                    status=200, code="malformed_response", headers=headers, latency_ms=latency_ms,
                )  # fmt: skip
            return Response(status, data, headers, latency_ms, raw)
        raise self._failure(status, raw, headers, latency_ms)

    def _failure(self, status: int, raw: bytes, headers: Mapping[str, str], latency_ms: float) -> Exception:
        parsed = _json_object(raw)
        code, message = error_code_and_message(status, parsed, raw)
        text = _one_line(self.redact(f"{code}: {message}" if message else code))
        body = _redact_obj(parsed, self._secret) if parsed is not None else None
        kwargs: dict[str, Any] = dict(status=status, code=code, body=body, headers=headers, latency_ms=latency_ms)
        if status == 401 or (status == 403 and parsed is not None):
            return AuthRejected(text, **kwargs)
        if status in RETRYABLE_STATUSES or status == 403:
            return Retryable(text, retry_after=parse_retry_after(headers), **kwargs)
        return Fatal(text, **kwargs)

    def redact(self, text: str) -> str:
        if self._secret and self._secret in text:
            text = text.replace(self._secret, "[REDACTED]")
        return text


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
    """Heroku's ``{"error": {"code", "message", "type"}}``, other JSON shapes, or text/HTML."""
    if parsed is not None:
        err = parsed.get("error", parsed)
        if isinstance(err, str):
            return f"http_{status}", err
        if isinstance(err, dict):
            code = err.get("code") or err.get("type") or f"http_{status}"
            message = err.get("message") or err.get("detail") or parsed.get("message") or parsed.get("detail") or ""
            return str(code), message if isinstance(message, str) else str(message)
        detail = parsed.get("detail") or parsed.get("message")
        if detail:
            return f"http_{status}", str(detail)
        return f"http_{status}", raw[:200].decode("utf-8", "replace")
    text = raw[:2000].decode("utf-8", "replace")
    if "<" in text:
        text = re.sub(r"(?is)<(script|style).*?</\1>", " ", text)
        text = re.sub(r"<[^>]+>", " ", text)
    return f"http_{status}", text


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_EXCERPT_CHARS else text[: ERROR_EXCERPT_CHARS - 1] + "…"


def _redact_obj(value: Any, secret: str) -> Any:
    if not secret:
        return value
    if isinstance(value, str):
        return value.replace(secret, "[REDACTED]")
    if isinstance(value, dict):
        return {k: _redact_obj(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_obj(v, secret) for v in value]
    return value
