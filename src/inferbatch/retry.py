"""The retry policy (the only module that imports tenacity).

A row's attempts are retried on ``Retryable`` failures only: connection
errors, timeouts, 408/409/425/429/500/502/503/504/529, a 200 with a body that
is not a completion, and a 403 that is not JSON (a firewall's page about that
prompt). Never on 400/401/403-JSON/404/413/422.

Wait before attempt n+1 (n = attempts made so far):

    server said Retry-After / retry-after-ms:  min(that + uniform(0, 0.1 s + 10 % of it), 600 s)
    otherwise (full jitter):                   uniform(0, min(60 s, 1 s * 2**(n-1)))

Stops after ``max_attempts`` attempts; the time is bounded too, since every
attempt has ``--timeout`` and every wait is at most ten minutes. The last
failure is re-raised (``reraise=True``), never wrapped in ``RetryError``.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from inferbatch.errors import Retryable

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
MAX_SERVER_WAIT = 600.0

_backoff = wait_random_exponential(multiplier=1, max=60)


def wait_for(retry_state: RetryCallState) -> float:
    """The policy in the module docstring, as tenacity calls it."""
    outcome = retry_state.outcome
    exc = outcome.exception() if outcome is not None else None
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        wait = max(retry_after, 0.0)
        return min(wait + random.uniform(0, 0.1 + 0.1 * wait), MAX_SERVER_WAIT)
    return float(_backoff(retry_state))


_wait_scale = 1.0


def set_testing(enabled: bool = True) -> None:
    """Make every retry wait zero seconds (stamina's ``set_testing``): for test suites, never for real runs."""
    global _wait_scale
    _wait_scale = 0.0 if enabled else 1.0


def wait_scale() -> float:
    return _wait_scale


def make_retrying(
    max_attempts: int,
    *,
    sleep: Callable[[float], Awaitable[Any]],
    before_sleep: Callable[[RetryCallState], Any] | None = None,
) -> AsyncRetrying:
    """A fresh tenacity controller for one row; ``sleep`` is injected so tests and shutdown control waiting."""
    return AsyncRetrying(
        stop=stop_after_attempt(max_attempts),
        wait=wait_for,
        retry=retry_if_exception_type(Retryable),
        reraise=True,
        sleep=sleep,
        before_sleep=before_sleep,
    )


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date); None if absent."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
