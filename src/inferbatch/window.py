"""A sliding time window: the amounts recorded in the last ``length`` seconds, and how long until more fits.

It exists so that both sides of a rate limit count the same way: the client's limiter
(:class:`inferbatch.limits.Limiter`, requests and tokens per minute) and the test server's limit
(:mod:`inferbatch.simulator`, like Heroku's per-model limits) each keep their windows with this class, so
when they disagree about whether there is room, the difference is in their rules, never in two windows
that count differently.

An entry is ``[time, amount]``: count requests by adding 1 each, tokens by adding each request's tokens.
An entry leaves the window ``length`` seconds after it was added (at exactly ``time + length`` it no longer
counts). Every method takes ``now``; without it, the injected ``clock`` (``time.monotonic`` by default) says
what time it is.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["Entry", "SlidingWindow"]

Entry = list[float]  # [time, amount]: a list, so settle() can correct the amount of an entry in place


class SlidingWindow:
    """Amounts added in the last ``length`` seconds; ``wait()`` says how long until an amount fits a limit."""

    __slots__ = ("clock", "entries", "length", "total")

    def __init__(self, length: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.length = length
        self.clock = clock
        self.entries: deque[Entry] = deque()  # oldest first
        self.total = 0.0  # the sum of the amounts in ``entries``

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    def _expire(self, now: float) -> None:
        cutoff = now - self.length
        while self.entries and self.entries[0][0] <= cutoff:
            self.total -= self.entries.popleft()[1]
        if not self.entries:
            self.total = 0.0  # no rounding left over from float amounts

    def wait(self, amount: float, limit: float, now: float | None = None) -> float:
        """Seconds until ``amount`` more stays within ``limit``: 0.0 if it does now.

        An empty window admits any amount, even one over the limit alone (so it cannot wait forever); when
        no expiry makes room for it, the wait is until the window is empty.
        """
        now = self._now(now)
        self._expire(now)
        if not self.entries or self.total + amount <= limit:
            return 0.0
        left = self.total
        for when, entry_amount in self.entries:
            left -= entry_amount
            if left + amount <= limit:
                return when + self.length - now
        return self.entries[-1][0] + self.length - now

    def add(self, amount: float, now: float | None = None) -> Entry:
        """Record ``amount`` at ``now``; returns the entry, for :meth:`settle`."""
        now = self._now(now)
        self._expire(now)  # on every add, so a window nobody asks ``wait()`` of never grows without bound
        entry = [now, float(amount)]
        self.entries.append(entry)
        self.total += amount
        return entry

    def settle(self, entry: Entry, amount: float, now: float | None = None) -> None:
        """Correct an entry's amount (an estimate, once the real figure is known); counted while it is in the window."""
        now = self._now(now)
        self._expire(now)  # first: an entry that aged out must leave with the amount it was counted with
        if entry[0] > now - self.length:  # still counted
            self.total += amount - entry[1]
        entry[1] = float(amount)

    def count(self, now: float | None = None) -> int:
        """How many entries are in the window."""
        self._expire(self._now(now))
        return len(self.entries)

    def used(self, now: float | None = None) -> float:
        """The sum of the amounts in the window."""
        self._expire(self._now(now))
        return self.total

    def oldest_leaves_in(self, now: float | None = None) -> float | None:
        """Seconds until the oldest entry leaves the window; None when it is empty."""
        now = self._now(now)
        self._expire(now)
        return self.entries[0][0] + self.length - now if self.entries else None
