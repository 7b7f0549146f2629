"""One limiter that admits a request only when every limit allows it, all at once.

Limits, checked together under one lock (a request never holds a partial grant):

* in flight: at most the *effective* concurrency, which starts at ``-c`` and
  follows AIMD: halved by a 429 (once per burst: only a request sent after the
  last decrease can cause another), raised by one after that many successes;
* ``--rpm`` / ``--tpm`` and the limits the server announces in
  ``x-ratelimit-limit-*``: a sliding 60 s window never holds more, and
  admissions are paced ``60/rpm`` s apart rather than sent in one burst;
* ``x-ratelimit-remaining-*`` / ``-reset-*``: when the server says nothing is
  left, nothing is sent until its reset;
* a 429 pauses every new request until ``Retry-After``, the exhausted reset,
  or a backoff.

A request larger than the whole token window is admitted when the window is
empty, so it cannot deadlock. Token costs are estimates when admitted and are
settled with the response's ``usage``. The clock is injected; ``poll()`` is
the pure decision, ``acquire()`` the waiting around it.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

WINDOW_S = 60.0
INF = math.inf


class Stopped(Exception):
    """The limiter was closed: the run is stopping and admits nothing more."""


@dataclass(slots=True, eq=False)
class Ticket:
    seq: int
    tokens: int
    admitted_at: float
    token_entry: list[float] | None = field(default=None, repr=False)


_RESET = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_RESET_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(text: str | None) -> float | None:
    """``51s`` → 51.0, ``6m0s`` → 360.0, ``20ms`` → 0.02, ``1.5`` → 1.5 seconds; None if unreadable."""
    if not text:
        return None
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _RESET.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _RESET_UNITS[u] for n, u in parts)


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


class SlidingWindow:
    """Amounts admitted in the last ``window`` seconds; ``wait()`` says how long until ``cost`` fits."""

    def __init__(self, window: float = WINDOW_S) -> None:
        self.window = window
        self.entries: deque[list[float]] = deque()  # [time, amount], oldest first
        self.total = 0.0

    def _expire(self, now: float) -> None:
        cutoff = now - self.window
        while self.entries and self.entries[0][0] <= cutoff:
            self.total -= self.entries.popleft()[1]
        if not self.entries:
            self.total = 0.0

    def wait(self, cost: float, limit: float, now: float) -> float:
        self._expire(now)
        if not self.entries or self.total + cost <= limit:
            return 0.0
        freed = self.total
        for when, amount in self.entries:
            freed -= amount
            if freed + cost <= limit:
                return when + self.window - now
        return self.entries[-1][0] + self.window - now

    def add(self, amount: float, now: float) -> list[float]:
        self._expire(now)  # also when no limit is in force, so the window never grows without bound
        entry = [now, float(amount)]
        self.entries.append(entry)
        self.total += amount
        return entry

    def settle(self, entry: list[float], amount: float, now: float) -> None:
        if entry[0] > now - self.window:  # still counted
            self.total += amount - entry[1]
        entry[1] = float(amount)


class Limiter:
    def __init__(
        self,
        concurrency: int,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        window: float = WINDOW_S,
    ) -> None:
        self.max_concurrency = concurrency
        self.limit = float(concurrency)  # effective concurrency (AIMD)
        self.in_flight = 0
        self.rpm_flag = rpm
        self.tpm_flag = tpm
        self.rpm_server: int | None = None
        self.tpm_server: int | None = None
        self.clock = clock
        self.window = window
        self._requests = SlidingWindow(window)
        self._tokens = SlidingWindow(window)
        self._next_request_at = 0.0
        self.paused_until = 0.0
        self._server_requests_left: float | None = None
        self._server_requests_reset_at = 0.0
        self._server_tokens_left: float | None = None
        self._server_tokens_reset_at = 0.0
        self._newest_seen_seq = -1
        self._seq = 0
        self._last_decrease_seq = -1
        self._successes = 0
        self._consecutive_429 = 0
        self._closed = False
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._completion_mean = 256.0
        self._completion_seen = 0
        # figures for the summary
        self.rate_limited = 0
        self.paused_s = 0.0
        self.admitted = 0
        self.tokens_used = 0

    # ---- limits in force -------------------------------------------------
    @property
    def rpm(self) -> int | None:
        values = [v for v in (self.rpm_flag, self.rpm_server) if v]
        return min(values) if values else None

    @property
    def tpm(self) -> int | None:
        values = [v for v in (self.tpm_flag, self.tpm_server) if v]
        return min(values) if values else None

    def estimate(self, prompt_tokens: int, max_tokens: int | None) -> int:
        """Prompt estimate plus the request's max tokens, else the mean completion seen so far."""
        completion = max_tokens if max_tokens else int(self._completion_mean)
        return prompt_tokens + completion

    # ---- the decision ----------------------------------------------------
    def poll(self, cost: int, now: float) -> Ticket | float:
        """Admit now (a Ticket) or say how many seconds to wait (``INF``: until something is released)."""
        if self.in_flight >= max(1, int(self.limit)):
            return INF
        waits = [self.paused_until - now]
        rpm = self.rpm
        if rpm:
            waits.append(self._requests.wait(1, rpm, now))
            waits.append(self._next_request_at - now)
        tpm = self.tpm
        if tpm:
            waits.append(self._tokens.wait(cost, tpm, now))
        if self._server_requests_left is not None and now < self._server_requests_reset_at:
            if self._server_requests_left < 1:
                waits.append(self._server_requests_reset_at - now)
        if self._server_tokens_left is not None and now < self._server_tokens_reset_at:
            if self._server_tokens_left < min(cost, tpm or cost):
                waits.append(self._server_tokens_reset_at - now)
        wait = max(waits)
        if wait > 0:
            return wait
        return self._admit(cost, now, rpm)

    def _admit(self, cost: int, now: float, rpm: int | None) -> Ticket:
        self.in_flight += 1
        self.admitted += 1
        # The windows only remember while a limit is in force: a minute of admissions at thousands a
        # second would otherwise be memory that grows with the run. A limit learned later from the
        # server's headers starts with an empty window; its remaining/reset headers cover the gap.
        if rpm:
            self._requests.add(1, now)
            self._next_request_at = max(self._next_request_at, now) + self.window / rpm
        if self._server_requests_left is not None:
            self._server_requests_left -= 1
        if self._server_tokens_left is not None:
            self._server_tokens_left -= cost
        ticket = Ticket(self._seq, cost, now, self._tokens.add(cost, now) if self.tpm else None)
        self._seq += 1
        return ticket

    # ---- waiting ---------------------------------------------------------
    async def acquire(self, cost: int) -> Ticket:
        """Wait, first come first served, until every limit admits ``cost`` tokens; raises Stopped."""
        if not self._lock.locked() and not self._closed:
            # Nobody is waiting: admit without the lock's hand-off (the common case below the limits).
            decision = self.poll(cost, self.clock())
            if isinstance(decision, Ticket):
                return decision
        async with self._lock:
            while True:
                if self._closed:
                    raise Stopped
                decision = self.poll(cost, self.clock())
                if isinstance(decision, Ticket):
                    return decision
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), None if decision == INF else decision)
                except TimeoutError:
                    pass

    def close(self) -> None:
        """Admit nothing more; waiting acquirers raise Stopped."""
        self._closed = True
        self._changed.set()

    # ---- outcomes --------------------------------------------------------
    def release(self, ticket: Ticket, *, status: int | None, headers: Mapping[str, str] | None = None,
                total_tokens: int | None = None, completion_tokens: int | None = None,
                retry_after: float | None = None) -> None:  # fmt: skip
        """Record how an admitted request ended and free its slot."""
        now = self.clock()
        self.in_flight -= 1
        if total_tokens is not None:
            self.tokens_used += total_tokens
            if ticket.token_entry is not None:
                self._tokens.settle(ticket.token_entry, total_tokens, now)
        if completion_tokens is not None:
            self._completion_seen += 1
            weight = 1.0 / min(self._completion_seen, 100)
            self._completion_mean += (completion_tokens - self._completion_mean) * weight
        if headers:
            self._reseed(ticket, headers, now)
        if status == 429:
            self._rate_limited(ticket, retry_after, headers or {}, now)
        elif status in (503, 529):
            self._decrease(ticket)
        elif status == 200:
            self._consecutive_429 = 0
            self._successes += 1
            if self.limit < self.max_concurrency and self._successes >= self.limit:
                self.limit = min(self.max_concurrency, int(self.limit) + 1)
                self._successes = 0
        if self._lock.locked():
            self._changed.set()

    def _decrease(self, ticket: Ticket) -> None:
        if ticket.seq > self._last_decrease_seq:
            self.limit = max(1.0, float(int(self.limit) // 2 or 1))
            self._last_decrease_seq = self._seq - 1
            self._successes = 0

    def _rate_limited(self, ticket: Ticket, retry_after: float | None, headers: Mapping[str, str], now: float) -> None:
        self.rate_limited += 1
        self._decrease(ticket)
        pause = retry_after
        if pause is None:
            resets = []
            if _header_int(headers, "x-ratelimit-remaining-requests") == 0:
                resets.append(parse_reset(headers.get("x-ratelimit-reset-requests")))
            if _header_int(headers, "x-ratelimit-remaining-tokens") == 0:
                resets.append(parse_reset(headers.get("x-ratelimit-reset-tokens")))
            known = [r for r in resets if r is not None]
            pause = max(known) if known else None
        if pause is None:
            self._consecutive_429 += 1
            pause = random.uniform(0.5, 1.0) * min(60.0, 2.0 ** (self._consecutive_429 - 1))
        self._pause(now + min(pause, 600.0), now)

    def _pause(self, until: float, now: float) -> None:
        if until > self.paused_until:
            self.paused_s += until - max(self.paused_until, now)
            self.paused_until = until

    def _reseed(self, ticket: Ticket, headers: Mapping[str, str], now: float) -> None:
        limit_requests = _header_int(headers, "x-ratelimit-limit-requests")
        if limit_requests:
            self.rpm_server = limit_requests
        limit_tokens = _header_int(headers, "x-ratelimit-limit-tokens")
        if limit_tokens:
            self.tpm_server = limit_tokens
        if ticket.seq < self._newest_seen_seq:
            return  # an older request's view of the server; a newer one was applied already
        self._newest_seen_seq = ticket.seq
        sent_since = self._seq - 1 - ticket.seq  # admitted after this request, unknown to the server's count
        left = _header_int(headers, "x-ratelimit-remaining-requests")
        reset = parse_reset(headers.get("x-ratelimit-reset-requests"))
        if left is not None and reset is not None:
            self._server_requests_left = left - sent_since
            self._server_requests_reset_at = now + reset
        left = _header_int(headers, "x-ratelimit-remaining-tokens")
        reset = parse_reset(headers.get("x-ratelimit-reset-tokens"))
        if left is not None and reset is not None:
            self._server_tokens_left = float(left)
            self._server_tokens_reset_at = now + reset

    # ---- figures ---------------------------------------------------------
    @property
    def effective_concurrency(self) -> int:
        return max(1, int(self.limit))
