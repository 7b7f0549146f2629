"""The retry policy (the only module that imports tenacity).

A row's attempts are retried on ``Retryable`` failures only: connection
errors, timeouts, 408/409/425/429/500/502/503/504/529, a 200 with a body that
is not a completion, and a 403 that is not JSON (a firewall's page about that
prompt). Never on 400/401/403-JSON/404/413/422.

Wait before attempt n+1 (n = attempts made so far):

    server said Retry-After / retry-after-ms:  that + uniform(0, 0.1 s + 10 % of it)
    otherwise (full jitter):                   uniform(0, min(60 s, 1 s * 2**(n-1)))

A server's wait longer than ``--max-wait`` never gets here: the client raises
``QuotaRejected`` for it (a stop, not a wait; SPEC §4), so no cap applies.

Stops after ``max_attempts`` attempts, or before a wait that would end past
``max_elapsed`` seconds (``--max-attempts × --timeout``, SPEC §8.41) from the
row's first attempt, whichever comes first. The last failure is re-raised
(``reraise=True``), never wrapped in ``RetryError``.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_random_exponential
from tenacity.stop import stop_base

from inferbatch.errors import Retryable

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})

_backoff = wait_random_exponential(multiplier=1, max=60)


def wait_for(retry_state: RetryCallState) -> float:
    """The policy in the module docstring, as tenacity calls it."""
    outcome = retry_state.outcome
    exc = outcome.exception() if outcome is not None else None
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        wait = max(retry_after, 0.0)
        return wait + random.uniform(0, 0.1 + 0.1 * wait)
    return float(_backoff(retry_state))


_wait_scale = 1.0


def set_testing(enabled: bool = True) -> None:
    """Make every retry wait zero seconds (stamina's ``set_testing``): for test suites, never for real runs."""
    global _wait_scale
    _wait_scale = 0.0 if enabled else 1.0


def wait_scale() -> float:
    return _wait_scale


class stop_before_deadline(stop_base):
    """Stop when the upcoming wait would end ``max_elapsed`` seconds or more after ``started_at``.

    Like tenacity's ``stop_before_delay``, but counted from a time the caller gives (the row's first
    attempt, which may have run before this controller existed) on an injectable clock, and with the
    wait as it will really be slept (``wait_scale()``).
    """

    def __init__(self, max_elapsed: float, started_at: float, clock: Callable[[], float]) -> None:
        self.deadline = started_at + max_elapsed
        self.clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock() + retry_state.upcoming_sleep * _wait_scale >= self.deadline


def make_retrying(
    max_attempts: int,
    *,
    sleep: Callable[[float], Awaitable[Any]],
    before_sleep: Callable[[RetryCallState], Any] | None = None,
    max_elapsed: float | None = None,
    started_at: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncRetrying:
    """A fresh tenacity controller for one row; ``sleep`` is injected so tests and shutdown control waiting.

    ``max_elapsed`` (SPEC §8.41: ``max_attempts × timeout``) bounds the row's time: no retry whose wait
    would end that many seconds after ``started_at`` (``clock()`` of the row's first attempt; default now).
    """
    stop = stop_after_attempt(max_attempts)
    if max_elapsed is not None:
        stop = stop | stop_before_deadline(max_elapsed, clock() if started_at is None else started_at, clock)
    return AsyncRetrying(
        stop=stop,
        wait=wait_for,
        retry=retry_if_exception_type(Retryable),
        reraise=True,
        sleep=sleep,
        before_sleep=before_sleep,
    )


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date); None if absent.

    Garbage (unreadable, negative, infinite or NaN) counts as absent.
    """
    ms = _seconds(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        float(value)
        return None  # a number, but no wait (negative, inf, nan)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _seconds(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
