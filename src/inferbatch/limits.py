"""One limiter that admits a request only when every limit allows it, all at once.

Limits, checked together under one lock (a request never holds a partial grant):

* in flight: at most the *effective* concurrency, which starts at ``-c`` and
  follows AIMD: halved by a 429 (once per burst: only a request sent after the
  last decrease can cause another), raised by one after that many successes;
* ``--rpm`` / ``--tpm`` and the limits the server announces in
  ``x-ratelimit-limit-*``: a sliding 60 s window never holds more, and
  admissions are spread out rather than sent in one burst: requests
  ``60/rpm`` s apart; tokens through a bucket that refills at ``tpm/60`` per
  second and holds at most ``tpm/10`` (six seconds' worth), so a fresh run
  sends a modest burst and then a steady flow, never a minute's tokens at once;
* ``x-ratelimit-remaining-*`` / ``-reset-*``: when the server says nothing is
  left, nothing is sent until its reset;
* a 429 pauses every new request until ``Retry-After``, the exhausted reset,
  or a backoff.

A wait the *server* asks for (a 429's ``Retry-After`` or exhausted reset, or
``x-ratelimit-remaining-* = 0`` with a reset) longer than ``max_wait`` is not
waited out: ``acquire()`` raises ``QuotaRejected`` naming the limit and when
it resets (SPEC §4, "quota is a stop, not a wait"). A wait of
``LONG_WAIT_S`` or more within ``max_wait`` is logged once, with its end.

A request larger than the whole token window is admitted when the window is
empty, so it cannot deadlock. Token costs are estimates when admitted and are
settled with the response's ``usage``. The clock is injected; ``poll()`` is
the pure decision, ``acquire()`` the waiting around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from inferbatch.durations import duration_seconds
from inferbatch.errors import QuotaRejected
from inferbatch.window import SlidingWindow

log = logging.getLogger("inferbatch")

WINDOW_S = 60.0
INF = math.inf
DEFAULT_MAX_WAIT = 600.0  # --max-wait's default (config.RunConfig.max_wait)
TPM_BURST = 0.1  # the token bucket holds this share of --tpm: six seconds' worth of a minute's tokens
LONG_WAIT_S = 30.0  # a wait this long gets one log line saying until when
EPOCH_S = 1e9  # a bare reset number this large is a Unix time (2001-09-09), not a 31-year duration
EPOCH_MS = 1e12  # ...and this large, a Unix time in milliseconds


class Stopped(Exception):
    """The limiter was closed: the run is stopping and admits nothing more."""


@dataclass(slots=True, eq=False)
class Ticket:
    seq: int
    tokens: int
    admitted_at: float
    token_entry: list[float] | None = field(default=None, repr=False)


def parse_reset(text: str | None, now: float | None = None) -> float | None:
    """Seconds until a ``x-ratelimit-reset-*`` value; None if unreadable.

    Durations, as :mod:`inferbatch.durations` reads them: ``51s`` → 51.0, ``6m0s`` → 360.0, ``20ms`` → 0.02,
    ``1.5`` → 1.5. Absolute times, counted from ``now`` (the wall clock by default; a time already past is 0):
    a bare number of at least 1e9 is Unix seconds (``1767225600``), of at least 1e12 Unix milliseconds, and an
    ISO 8601 timestamp with a zone (``2026-01-01T00:00:00Z``) is that instant. Negative, infinite or NaN values
    are garbage.
    """
    if not text:
        return None
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        if not math.isfinite(value) or value < 0:
            return None
        if value >= EPOCH_MS:
            value /= 1000.0
        if value >= EPOCH_S:
            return max(0.0, value - (time.time() if now is None else now))
        return value
    seconds = duration_seconds(text)  # with units: 51s, 6m0s (a bare number was read above)
    if seconds is not None:
        return seconds if math.isfinite(seconds) else None
    if "T" in text and text[:4].isdigit():
        try:
            when = datetime.datetime.fromisoformat(text)
        except ValueError:
            return None
        if when.tzinfo is None:
            return None  # a wall time in no known zone: not a reset we can trust
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    return None


def human_duration(seconds: float) -> str:
    """``45s``, ``5m30s``, ``3h12m``, ``20d4h``: a wait as a person reads it."""
    if not math.isfinite(seconds):
        return "an unknown time"
    seconds = max(0.0, seconds)
    if seconds < 59.5:
        return f"{seconds:.3g}s" if seconds < 9.95 else f"{seconds:.0f}s"
    if seconds < 3600 - 0.5:  # rounded to the second
        minutes, secs = divmod(int(round(seconds)), 60)
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    if seconds < 86_400 - 30:  # rounded to the minute
        hours, minutes = divmod(int(round(seconds / 60)), 60)
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(int(round(seconds / 3600)), 24)  # rounded to the hour
    return f"{days}d{hours}h" if hours else f"{days}d"


def describe_reset(seconds: float, wall_now: float | None = None) -> str:
    """``in 20d (at 2026-01-01T00:00:00Z)``: when a wait of ``seconds`` from now ends."""
    at = (time.time() if wall_now is None else wall_now) + max(0.0, seconds)
    try:
        stamp = datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"in {human_duration(seconds)}"
    return f"in {human_duration(seconds)} (at {stamp})"


def header_int(headers: Mapping[str, str], name: str) -> int | None:
    """A count header as an int; None if absent, negative, or not a finite number (garbage is ignored)."""
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return int(number)


class Limiter:
    def __init__(
        self,
        concurrency: int,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        window: float = WINDOW_S,
        max_wait: float | None = DEFAULT_MAX_WAIT,
        tpm_burst: float = TPM_BURST,
        wall_clock: Callable[[], float] = time.time,
        share: int = 1,
    ) -> None:
        """``max_wait``: the longest wait a server may ask for (``--max-wait``); None waits out any.
        ``share``: how many processes split the limits (SPEC §8.38: the server counts the add-on, not the
        dyno): this one takes ``1/share`` of ``--rpm``/``--tpm``, of the announced limits and of what
        the server says remains.
        ``tpm_burst``: the token bucket's size as a share of the tpm (1.0: no pacing beyond the window).
        ``clock`` paces (monotonic); ``wall_clock`` only dates the reset in messages."""
        self.max_concurrency = concurrency
        self.share = max(1, share)
        self.limit = float(concurrency)  # effective concurrency (AIMD)
        self.in_flight = 0
        self.rpm_flag = rpm
        self.tpm_flag = tpm
        self.rpm_server: int | None = None
        self.tpm_server: int | None = None
        self.clock = clock
        self.wall_clock = wall_clock
        self.window = window
        self.max_wait = max_wait
        self.tpm_burst = tpm_burst
        self._requests = SlidingWindow(window, clock)
        self._tokens = SlidingWindow(window, clock)
        self._next_request_at = 0.0
        self._bucket = 0.0  # tokens the pacing bucket holds; refilled at tpm/window per second up to the burst
        self._bucket_at = 0.0
        self._bucket_tpm: int | None = None  # the tpm the bucket was last refilled for
        self.paused_until = 0.0
        self._server_pause_until = 0.0  # the part of the pause a server asked for (Retry-After, a reset)
        self._server_pause_why = ""
        self._announced_until = -INF  # the end of the last long wait logged
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
        return max(1, min(values) // self.share) if values else None

    @property
    def tpm(self) -> int | None:
        values = [v for v in (self.tpm_flag, self.tpm_server) if v]
        return max(1, min(values) // self.share) if values else None

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
            waits.append(self._bucket_wait(cost, tpm, now))
        if self._no_requests_left(now):
            waits.append(self._server_requests_reset_at - now)
        if self._no_tokens_left(cost, tpm, now):
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
        tpm = self.tpm
        entry = None
        if tpm:
            entry = self._tokens.add(cost, now)
            self._bucket_take(cost, tpm, now)
        ticket = Ticket(self._seq, cost, now, entry)
        self._seq += 1
        return ticket

    # ---- token pacing ----------------------------------------------------
    def _bucket_refill(self, tpm: int, now: float) -> float:
        """Bring the bucket up to ``now``; returns its burst (capacity). A bucket starts full."""
        burst = tpm * self.tpm_burst
        if self._bucket_tpm is None:
            self._bucket = burst
        elif now > self._bucket_at:
            self._bucket = min(burst, self._bucket + (now - self._bucket_at) * tpm / self.window)
        else:
            self._bucket = min(burst, self._bucket)
        self._bucket_tpm = tpm
        self._bucket_at = max(now, self._bucket_at)
        return burst

    def _bucket_wait(self, cost: int, tpm: int, now: float) -> float:
        """Seconds until the bucket holds ``cost`` (a request bigger than the burst waits for a full bucket)."""
        burst = self._bucket_refill(tpm, now)
        need = min(cost, burst)
        if self._bucket >= need - 1e-9:
            return 0.0
        return (need - self._bucket) * self.window / tpm

    def _bucket_take(self, amount: float, tpm: int, now: float) -> None:
        # The debt is bounded by one window's worth: a request bigger than the window, admitted into an
        # empty one, waits about a window for the next (which the sliding window enforces anyway).
        burst = self._bucket_refill(tpm, now)
        self._bucket = min(burst, max(self._bucket - amount, burst - tpm))

    # ---- waiting ---------------------------------------------------------
    async def acquire(self, cost: int) -> Ticket:
        """Wait, first come first served, until every limit admits ``cost`` tokens.

        Raises Stopped when closed, and QuotaRejected when a wait the server asked for is longer than
        ``max_wait`` (nothing is admitted; the run should stop, not sleep).
        """
        if not self._lock.locked() and not self._closed:
            # Nobody is waiting: admit without the lock's hand-off (the common case below the limits).
            decision = self.poll(cost, self.clock())
            if isinstance(decision, Ticket):
                return decision
        async with self._lock:
            while True:
                if self._closed:
                    raise Stopped
                now = self.clock()
                decision = self.poll(cost, now)
                if isinstance(decision, Ticket):
                    return decision
                if decision != INF and (
                    decision >= LONG_WAIT_S or self.max_wait is not None and decision > self.max_wait
                ):
                    self._long_wait(cost, now, decision)
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), None if decision == INF else decision)

    def server_wait(self, cost: int, now: float) -> tuple[float, str]:
        """The longest wait the server asked for that holds ``cost`` back now, and what it is (0 and "" if none)."""
        found: list[tuple[float, str]] = [(0.0, "")]
        if self._server_pause_until > now:
            found.append((self._server_pause_until - now, self._server_pause_why))
        if self._no_requests_left(now):
            found.append(
                (
                    self._server_requests_reset_at - now,
                    "the server reports no requests left (x-ratelimit-remaining-requests: 0)",
                )
            )
        if self._no_tokens_left(cost, self.tpm, now):
            found.append(
                (self._server_tokens_reset_at - now, "the server reports no tokens left (x-ratelimit-remaining-tokens)")
            )
        return max(found, key=lambda pair: pair[0])

    def _no_requests_left(self, now: float) -> bool:
        """The server's x-ratelimit-remaining-requests said 0, and its reset is still ahead."""
        left = self._server_requests_left
        return left is not None and now < self._server_requests_reset_at and left < 1

    def _no_tokens_left(self, cost: int, tpm: int | None, now: float) -> bool:
        """The server's x-ratelimit-remaining-tokens is short of this request, and its reset is still ahead."""
        left = self._server_tokens_left
        return left is not None and now < self._server_tokens_reset_at and left < min(cost, tpm or cost)

    def _long_wait(self, cost: int, now: float, wait: float) -> None:
        """Stop on a server's wait over ``max_wait``; log a long wait within it once."""
        server, why = self.server_wait(cost, now)
        if self.max_wait is not None and server > self.max_wait:
            raise QuotaRejected(
                f"quota_exhausted: {why}; it resets {describe_reset(server, self.wall_clock())}, "
                f"longer than --max-wait {human_duration(self.max_wait)}"
            )
        until = now + wait
        if wait >= LONG_WAIT_S and until > self._announced_until + 1.0:
            from inferbatch.progress import logfmt

            self._announced_until = until
            if server >= wait - 1.0:
                reason = why
            elif self.paused_until - now >= wait - 1.0:
                reason = "backing off after 429s that named no wait"
            else:
                reason = "the rate limits in force (--rpm/--tpm, or announced by the server)"
            log.warning(
                logfmt("waiting", wait_s=round(wait, 1), until=describe_reset(wait, self.wall_clock()), reason=reason)
            )

    def reopen(self) -> None:
        """Admit again after ``close()``: a worker keeps one limiter, windows and all, across its inputs."""
        self._closed = False

    def close(self) -> None:
        """Admit nothing more; waiting acquirers raise Stopped."""
        self._closed = True
        self._changed.set()

    # ---- outcomes --------------------------------------------------------
    def release(
        self,
        ticket: Ticket,
        *,
        status: int | None,
        headers: Mapping[str, str] | None = None,
        total_tokens: int | None = None,
        completion_tokens: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Record how an admitted request ended and free its slot."""
        now = self.clock()
        self.in_flight -= 1
        if total_tokens is not None:
            self.tokens_used += total_tokens
            if ticket.token_entry is not None:
                self._tokens.settle(ticket.token_entry, total_tokens, now)
                if self._bucket_tpm is not None:
                    self._bucket_take(total_tokens - ticket.tokens, self._bucket_tpm, now)
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
        why = f"a 429 asked to wait {human_duration(pause)} (Retry-After)" if pause is not None else ""
        if pause is None:
            resets = []
            for kind in ("requests", "tokens"):
                if header_int(headers, f"x-ratelimit-remaining-{kind}") == 0:
                    reset = parse_reset(headers.get(f"x-ratelimit-reset-{kind}"), self.wall_clock())
                    if reset is not None:
                        resets.append((reset, f"a 429 says no {kind} are left (x-ratelimit-remaining-{kind}: 0)"))
            if resets:
                pause, why = max(resets)
        if pause is not None:
            if now + pause > self._server_pause_until:
                self._server_pause_until = now + pause
                self._server_pause_why = why
        else:
            self._consecutive_429 += 1
            pause = random.uniform(0.5, 1.0) * min(60.0, 2.0 ** (self._consecutive_429 - 1))
        self._pause(now + pause, now)

    def _pause(self, until: float, now: float) -> None:
        if until > self.paused_until:
            if self.max_wait is None or until - now <= self.max_wait:
                # A pause over --max-wait is never waited out (acquire stops the run): not counted as paused.
                self.paused_s += until - max(self.paused_until, now)
            self.paused_until = until

    def _reseed(self, ticket: Ticket, headers: Mapping[str, str], now: float) -> None:
        limit_requests = header_int(headers, "x-ratelimit-limit-requests")
        if limit_requests:
            self.rpm_server = limit_requests
        limit_tokens = header_int(headers, "x-ratelimit-limit-tokens")
        if limit_tokens:
            self.tpm_server = limit_tokens
        if ticket.seq < self._newest_seen_seq:
            return  # an older request's view of the server; a newer one was applied already
        self._newest_seen_seq = ticket.seq
        sent_since = self._seq - 1 - ticket.seq  # admitted after this request, unknown to the server's count
        left = header_int(headers, "x-ratelimit-remaining-requests")
        reset = parse_reset(headers.get("x-ratelimit-reset-requests"), self.wall_clock())
        if left is not None and reset is not None:
            self._server_requests_left = left // self.share - sent_since
            self._server_requests_reset_at = now + reset
        left = header_int(headers, "x-ratelimit-remaining-tokens")
        reset = parse_reset(headers.get("x-ratelimit-reset-tokens"), self.wall_clock())
        if left is not None and reset is not None:
            self._server_tokens_left = float(left // self.share)
            self._server_tokens_reset_at = now + reset

    # ---- figures ---------------------------------------------------------
    @property
    def effective_concurrency(self) -> int:
        return max(1, int(self.limit))
