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

``call(attempt, policy, sleep=...)`` runs a row's attempts. Its first attempt
is a fast path outside tenacity: most rows succeed at once, and tenacity's
per-call machinery cost about a tenth of the client's CPU at 6,000 req/s. A
failed first attempt is replayed into tenacity as its attempt 1, so the
waits, Retry-After and both limits see it exactly as if tenacity had run it.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_random_exponential
from tenacity.stop import stop_base

from inferbatch.errors import Retryable

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})

_backoff = wait_random_exponential(multiplier=1, max=60)


def wait_for(retry_state: RetryCallState) -> float:
    """The policy in the module docstring, as tenacity calls it."""
    outcome = retry_state.outcome
    exc = outcome.exception() if outcome is not None else None
    retry_after: float | None = getattr(exc, "retry_after", None)
    if retry_after is not None:
        wait = max(retry_after, 0.0)
        return wait + random.uniform(0, 0.1 + 0.1 * wait)
    return float(_backoff(retry_state))


_wait_scale = 1.0


def set_testing(enabled: bool = True) -> None:
    """Make the policies made from now on wait zero seconds (stamina's ``set_testing``): for test suites.

    It only sets ``Policy.wait_scale``'s default; code that retries reads its ``Policy``, never this switch.
    """
    global _wait_scale
    _wait_scale = 0.0 if enabled else 1.0


def wait_scale() -> float:
    return _wait_scale


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Policy:
    """How long a row may keep trying: ``max_attempts`` attempts, and no wait ending more than
    ``max_elapsed`` seconds after its first attempt (SPEC §8.41). Every wait is multiplied by ``wait_scale``."""

    max_attempts: int
    max_elapsed: float | None = None
    wait_scale: float = field(default_factory=wait_scale)


async def call(
    attempt: Callable[[int], Awaitable[T]],
    policy: Policy,
    *,
    sleep: Callable[[float], Awaitable[Any]],
    before_sleep: Callable[[RetryCallState], Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``attempt(1)``, ``attempt(2)``, … until one returns, a failure is not ``Retryable``, or the policy gives up;
    the last failure is re-raised. ``sleep`` does the waiting (the runner's is cut short by a stop).

    The fast path (module docstring): attempt 1 runs here, outside tenacity; only a failure builds a controller.
    """
    started = clock()
    try:
        return await attempt(1)
    except Retryable as failure:
        replay: Retryable | None = failure
    number = 1

    async def scaled_sleep(seconds: float) -> None:
        await sleep(seconds * policy.wait_scale)

    retrying = make_retrying(
        policy.max_attempts,
        sleep=scaled_sleep,
        before_sleep=before_sleep,
        max_elapsed=policy.max_elapsed,
        started_at=started,
        clock=clock,
        wait_scale=policy.wait_scale,
    )
    async for state in retrying:
        with state:
            if replay is not None:
                first, replay = replay, None
                raise first
            number += 1
            return await attempt(number)
    raise AssertionError("unreachable: tenacity re-raises the last failure")  # pragma: no cover


class stop_before_deadline(stop_base):
    """Stop when the upcoming wait would end ``max_elapsed`` seconds or more after ``started_at``.

    Like tenacity's ``stop_before_delay``, but counted from a time the caller gives (the row's first
    attempt, which ran before this controller existed) on an injectable clock, and with the wait as it
    will really be slept (times ``wait_scale``).
    """

    def __init__(
        self, max_elapsed: float, started_at: float, clock: Callable[[], float], wait_scale: float = 1.0
    ) -> None:
        self.deadline = started_at + max_elapsed
        self.clock = clock
        self.wait_scale = wait_scale

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock() + retry_state.upcoming_sleep * self.wait_scale >= self.deadline


def make_retrying(
    max_attempts: int,
    *,
    sleep: Callable[[float], Awaitable[Any]],
    before_sleep: Callable[[RetryCallState], Any] | None = None,
    max_elapsed: float | None = None,
    started_at: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    wait_scale: float | None = None,
) -> AsyncRetrying:
    """A fresh tenacity controller for one row; ``sleep`` is injected so tests and shutdown control waiting.

    ``max_elapsed`` (SPEC §8.41: ``max_attempts × timeout``) bounds the row's time: no retry whose wait
    would end that many seconds after ``started_at`` (``clock()`` of the row's first attempt; default now).
    """
    stop: stop_base = stop_after_attempt(max_attempts)
    if max_elapsed is not None:
        scale = _wait_scale if wait_scale is None else wait_scale
        stop = stop | stop_before_deadline(max_elapsed, clock() if started_at is None else started_at, clock, scale)
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
