"""The limiter's exact rules, where the mutation run (benchmarks/mutation, issue 16) found them unpinned.

Each test names the behaviour it holds; the mutants it kills are listed in benchmarks/mutation/README.md.
A fake clock drives ``poll()`` by hand; ``acquire()`` runs on the real event loop with the fake clock, and
promptness is judged in event-loop turns, never with a stopwatch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable, Iterator

import pytest

from inferbatch.errors import QuotaRejected
from inferbatch.limits import Limiter, Stopped, Ticket, describe_reset, human_duration, parse_reset

WALL = 1_763_158_400.0  # 2025-11-14T22:13:20Z: the wall clock messages date resets from


class FakeClock:
    """A mutable float: ``clock()`` reads it, ``clock.now = ...`` moves it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def admit(limiter: Limiter, cost: int = 1) -> Ticket:
    decision = limiter.poll(cost, limiter.clock())
    assert isinstance(decision, Ticket), f"expected admission, got a wait of {decision}"
    return decision


def wait_of(limiter: Limiter, cost: int = 1) -> float:
    decision = limiter.poll(cost, limiter.clock())
    assert not isinstance(decision, Ticket), "expected a wait, got an admission"
    return decision


async def loop_turns(done: Callable[[], bool], turns: int = 50) -> None:
    """Let the event loop run until ``done()``, failing after ``turns`` turns."""
    for _ in range(turns):
        if done():
            return
        await asyncio.sleep(0)
    assert done(), f"not done after {turns} event-loop turns"


async def settle(turns: int = 20) -> None:
    """Give waiting tasks a few event-loop turns to act on what just changed."""
    for _ in range(turns):
        await asyncio.sleep(0)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Messages of the `inferbatch` logger (the CLI turns its propagation off, so caplog may not see them)."""
    logger = logging.getLogger("inferbatch")
    handler = Lines()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def waiting(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("waiting ")]


async def stop(limiter: Limiter, *tasks: asyncio.Task[Ticket]) -> None:
    limiter.close()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10.0)


# ---- reset values and how a wait is written ---------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("0", 0.0), ("0.5", 0.5), ("0.25", 0.25)])
def test_a_bare_reset_of_zero_or_under_a_second_is_a_duration(text: str, seconds: float) -> None:
    """`x-ratelimit-reset-requests: 0` means "now", and 0.5 half a second: neither is garbage."""
    assert parse_reset(text, now=WALL) == seconds


@pytest.mark.parametrize("text", ["1000000000", "1000000000000"])
def test_a_reset_of_exactly_1e9_or_1e12_is_already_a_unix_time(text: str) -> None:
    """The thresholds are inclusive: 1e9 is Unix seconds and 1e12 Unix milliseconds (both 2001-09-09T01:46:40Z),
    42 s after a `now` of 1e9 - 42, not a 31-year (or 31,000-year) duration."""
    assert parse_reset(text, now=1e9 - 42) == pytest.approx(42.0)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (9.94, "9.94s"),
        (9.95, "10s"),  # three digits would say 9.95s; from here on whole seconds
        (59.4, "59s"),
        (59.5, "1m"),  # rounds to 60 s: written as a minute, never "60s"
        (3599.4, "59m59s"),
        (3599.5, "1h"),  # rounds to 60 min: an hour, never "60m"
        (86_369.5, "23h59m"),
        (86_370, "1d"),  # rounds to 24 h: a day, never "24h"
        (86_370.5, "1d"),
        (88_200, "1d"),  # 24.5 h rounds to the even hour
        (88_210, "1d1h"),  # 24.5 h and 10 s: the next hour
    ],
)
def test_human_duration_rounds_up_into_the_next_unit_at_each_boundary(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_a_wait_of_unknown_length_reads_as_such() -> None:
    assert human_duration(math.inf) == "an unknown time"
    assert human_duration(math.nan) == "an unknown time"
    assert describe_reset(math.inf, wall_now=WALL) == "in an unknown time"


def test_a_reset_too_far_to_date_is_still_described() -> None:
    """A reset beyond the calendar (datetime cannot date it) is described by its length alone."""
    far = 1e20
    assert describe_reset(far, wall_now=WALL) == f"in {human_duration(far)}"


# ---- limits in force ---------------------------------------------------------------------------------


def test_a_tpm_share_below_one_token_is_one() -> None:
    """SPEC §8.38: four processes sharing --tpm 3 each take one token a minute, not two (never zero either)."""
    assert Limiter(8, tpm=3, share=4).tpm == 1
    assert Limiter(8, tpm=7, share=4).tpm == 1
    assert Limiter(8, tpm=8, share=4).tpm == 2


def test_a_lower_rpm_announced_mid_run_holds_the_window_not_only_the_spacing() -> None:
    """--rpm 60 for 30 s (30 requests), then the server announces 10: the window of the last minute already holds
    30, so the next request waits until only 9 remain in it (the one admitted at 20 s leaves at 80 s), not the
    6 s spacing of the new limit."""
    clock = FakeClock()
    limiter = Limiter(100, rpm=60, clock=clock)
    for second in range(30):
        clock.now = float(second)
        ticket = admit(limiter)
        headers = {"x-ratelimit-limit-requests": "10"} if second == 29 else None
        limiter.release(ticket, status=200, headers=headers)
    assert limiter.rpm == 10
    assert wait_of(limiter) == pytest.approx(51.0)
    clock.now = 80.0
    admit(limiter)


def test_tokens_admitted_since_the_servers_count_are_spent_from_it() -> None:
    """`x-ratelimit-remaining-tokens: 1000`: a 600-token request leaves 400, so the next 600 waits for the reset."""
    clock = FakeClock(100.0)
    limiter = Limiter(10, clock=clock)
    headers = {"x-ratelimit-remaining-tokens": "1000", "x-ratelimit-reset-tokens": "20s"}
    limiter.release(admit(limiter, 10), status=200, headers=headers)
    admit(limiter, 600)
    assert wait_of(limiter, 600) == pytest.approx(20.0)
    admit(limiter, 400)  # exactly what is left still goes


def test_a_request_needing_exactly_the_tokens_left_is_sent() -> None:
    clock = FakeClock(100.0)
    limiter = Limiter(10, clock=clock)
    headers = {"x-ratelimit-remaining-tokens": "500", "x-ratelimit-reset-tokens": "20s"}
    limiter.release(admit(limiter, 10), status=200, headers=headers)
    assert wait_of(limiter, 501) == pytest.approx(20.0)
    admit(limiter, 500)


def test_only_requests_admitted_after_the_answered_one_count_against_remaining() -> None:
    """The 6th request (after five that are done) is answered with 4 remaining while two more are out: two more
    may go, then nothing until the reset."""
    clock = FakeClock()
    limiter = Limiter(10, clock=clock)
    for _ in range(5):
        limiter.release(admit(limiter), status=200)
    answered = admit(limiter)
    admit(limiter)
    admit(limiter)
    headers = {"x-ratelimit-remaining-requests": "4", "x-ratelimit-reset-requests": "20s"}
    limiter.release(answered, status=200, headers=headers)
    admit(limiter)
    admit(limiter)
    assert wait_of(limiter) == pytest.approx(20.0)


# ---- AIMD: overload halves, a run of successes adds one ----------------------------------------------


@pytest.mark.parametrize("status", [503, 529])
def test_an_overloaded_answer_halves_concurrency_like_a_429(status: int) -> None:
    clock = FakeClock()
    limiter = Limiter(16, clock=clock)
    limiter.release(admit(limiter), status=status)
    assert limiter.effective_concurrency == 8
    limiter.release(admit(limiter), status=status)  # sent after the decrease: halves again
    assert limiter.effective_concurrency == 4
    assert limiter.paused_until == 0.0  # no pause: only a 429 pauses


def test_a_429_at_concurrency_one_stays_at_one() -> None:
    clock = FakeClock()
    limiter = Limiter(1, clock=clock)
    for _ in range(3):
        clock.now = limiter.paused_until
        limiter.release(admit(limiter), status=429, retry_after=0.0)
        assert limiter.effective_concurrency == 1


def test_each_step_up_takes_exactly_as_many_successes_as_the_concurrency() -> None:
    """Raised by one after `limit` successes in a row (8 at 8, 9 at 9, ...), counted afresh after each step."""
    clock = FakeClock()
    limiter = Limiter(16, clock=clock)
    limiter.release(admit(limiter), status=429, retry_after=0.0)
    assert limiter.effective_concurrency == 8
    steps: list[int] = []
    count = 0
    while limiter.effective_concurrency < 16:
        before = limiter.effective_concurrency
        limiter.release(admit(limiter), status=200)
        count += 1
        if limiter.effective_concurrency != before:
            steps.append(count)
            count = 0
    assert steps == [8, 9, 10, 11, 12, 13, 14, 15]


def test_backoff_without_a_server_wait_doubles_from_one_second_up_to_a_minute() -> None:
    """The n-th 429 in a row that names no wait pauses between half and all of 2**(n-1) s, capped at 60 s."""
    for seed in range(5):
        random.seed(seed)
        clock = FakeClock()
        limiter = Limiter(16, clock=clock)
        for n in range(1, 10):
            clock.now = limiter.paused_until
            limiter.release(admit(limiter), status=429)
            ceiling = min(60.0, 2.0 ** (n - 1))
            assert ceiling / 2 <= limiter.paused_until - clock.now <= ceiling, (seed, n)


def test_paused_time_is_counted_on_a_clock_that_does_not_start_at_zero() -> None:
    clock = FakeClock(1_000.0)
    limiter = Limiter(16, clock=clock, max_wait=600.0)
    limiter.release(admit(limiter), status=429, retry_after=7.0)
    assert limiter.paused_s == pytest.approx(7.0)


# ---- acquire(): closing, first come first served, which waits stop the run -----------------------------


async def test_a_closed_limiter_admits_nothing_even_with_free_slots() -> None:
    limiter = Limiter(4)
    limiter.close()
    with pytest.raises(Stopped):
        await asyncio.wait_for(limiter.acquire(1), 10.0)
    assert limiter.in_flight == 0


async def test_reopen_admits_again() -> None:
    limiter = Limiter(4)
    limiter.close()
    limiter.reopen()
    assert isinstance(await asyncio.wait_for(limiter.acquire(1), 10.0), Ticket)


async def test_a_request_that_fits_waits_behind_one_that_came_first() -> None:
    """A big request waits for the token window; a small one that would fit now came second and must not
    overtake it (first come, first served)."""
    clock = FakeClock()
    limiter = Limiter(10, tpm=1_000, clock=clock, tpm_burst=1.0)  # the window alone
    admit(limiter, 600)
    big = asyncio.create_task(limiter.acquire(500))
    await settle()
    assert not big.done()
    small = asyncio.create_task(limiter.acquire(100))
    await settle()
    assert not small.done()  # 600 + 100 fit, but the big one is first in line
    assert limiter.in_flight == 1
    clock.now = 60.0
    limiter.close()
    await asyncio.wait_for(asyncio.gather(big, small, return_exceptions=True), 10.0)


async def test_a_short_pause_is_waited_out_when_max_wait_is_none() -> None:
    clock = FakeClock()
    limiter = Limiter(4, clock=clock, max_wait=None)
    limiter.release(admit(limiter), status=429, retry_after=0.05)
    waiter = asyncio.create_task(limiter.acquire(1))
    await settle()
    assert not waiter.done()  # waiting, not failing
    clock.now = 0.05
    assert isinstance(await asyncio.wait_for(waiter, 10.0), Ticket)


async def test_a_server_wait_over_a_short_max_wait_is_a_stop() -> None:
    """--max-wait 10s and a Retry-After of 20 s: a quota stop, though 20 s is under the long-wait threshold."""
    clock = FakeClock()
    limiter = Limiter(4, clock=clock, max_wait=10.0, wall_clock=lambda: WALL)
    limiter.release(admit(limiter), status=429, retry_after=20.0)
    with pytest.raises(QuotaRejected) as info:
        await asyncio.wait_for(limiter.acquire(1), 10.0)
    assert "Retry-After" in info.value.message
    assert "--max-wait 10s" in info.value.message


async def test_a_server_wait_of_exactly_max_wait_is_waited_out_and_counted(log_lines: list[str]) -> None:
    """ "Longer than --max-wait" stops; exactly --max-wait is waited out, and counts as paused time."""
    clock = FakeClock()
    limiter = Limiter(4, clock=clock, max_wait=60.0, wall_clock=lambda: WALL)
    first, other = admit(limiter), admit(limiter)
    limiter.release(first, status=429, retry_after=60.0)
    assert limiter.paused_s == pytest.approx(60.0)
    waiter = asyncio.create_task(limiter.acquire(1))
    await settle()
    assert not waiter.done()
    assert len(waiting(log_lines)) == 1
    clock.now = 60.0
    limiter.release(other, status=200)  # wakes the waiter: the pause is over
    assert isinstance(await asyncio.wait_for(waiter, 10.0), Ticket)


async def test_the_longest_of_the_servers_waits_decides_a_stop() -> None:
    """A 429 asks for 1,000 s (Retry-After) and says no requests are left for 100 s: the 1,000 s is over
    --max-wait 10m, so the run stops and names the Retry-After."""
    clock = FakeClock()
    limiter = Limiter(4, clock=clock, max_wait=600.0, wall_clock=lambda: WALL)
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "100s"}
    limiter.release(admit(limiter), status=429, headers=headers, retry_after=1_000.0)
    with pytest.raises(QuotaRejected) as info:
        await asyncio.wait_for(limiter.acquire(1), 10.0)
    assert "Retry-After" in info.value.message
    assert "in 16m40s" in info.value.message


async def test_a_server_wait_within_max_wait_is_no_stop_on_a_clock_far_from_zero(log_lines: list[str]) -> None:
    """A monotonic clock at 1,000 s: a Retry-After of 40 s is 40 s, within --max-wait 10m: waited out and logged."""
    clock = FakeClock(1_000.0)
    limiter = Limiter(4, clock=clock, max_wait=600.0, wall_clock=lambda: WALL)
    limiter.release(admit(limiter), status=429, retry_after=40.0)
    assert limiter.paused_s == pytest.approx(40.0)
    waiter = asyncio.create_task(limiter.acquire(1))
    await settle()
    assert not waiter.done()
    lines = waiting(log_lines)
    assert len(lines) == 1, log_lines
    assert "wait_s=40" in lines[0] and "Retry-After" in lines[0]
    await stop(limiter, waiter)


# ---- the "waiting" line: which waits, once, and why -----------------------------------------------------


async def test_a_wait_of_exactly_the_long_wait_threshold_is_logged(log_lines: list[str]) -> None:
    """A wait of LONG_WAIT_S (30 s) or more is logged: 30 s exactly is."""
    clock = FakeClock()
    limiter = Limiter(4, clock=clock, wall_clock=lambda: WALL)
    limiter.release(admit(limiter), status=429, retry_after=30.0)
    waiter = asyncio.create_task(limiter.acquire(1))
    await settle()
    assert not waiter.done()
    lines = waiting(log_lines)
    assert len(lines) == 1, log_lines
    assert "wait_s=30" in lines[0]
    await stop(limiter, waiter)


async def test_waiting_for_a_free_slot_is_not_logged(log_lines: list[str]) -> None:
    """A request waiting for a slot waits for a release, not for a time: nothing to announce."""
    limiter = Limiter(1, wall_clock=lambda: WALL)
    await limiter.acquire(1)
    waiter = asyncio.create_task(limiter.acquire(1))
    await settle()
    assert not waiter.done()
    assert log_lines == []
    await stop(limiter, waiter)


async def test_client_pacing_between_a_short_max_wait_and_the_threshold_is_neither_stop_nor_line(
    log_lines: list[str],
) -> None:
    """--rpm 6 spaces requests 10 s apart; with --max-wait 5s that is still our own pacing (no stop), and 10 s is
    too short to announce."""
    clock = FakeClock()
    limiter = Limiter(4, rpm=6, clock=clock, max_wait=5.0, wall_clock=lambda: WALL)
    limiter.release(admit(limiter), status=200)
    waiter = asyncio.create_task(limiter.acquire(1))
    await settle()
    assert not waiter.done()
    assert log_lines == []
    await stop(limiter, waiter)


async def test_a_waiter_woken_during_a_long_wait_does_not_announce_it_again(log_lines: list[str]) -> None:
    """A 5-minute reset is announced once; a waiter woken 100 s in (another request finished) sees the same
    end and says nothing; one whose end moved by exactly one second is still the same wait."""
    clock = FakeClock()
    limiter = Limiter(4, clock=clock, max_wait=600.0, wall_clock=lambda: WALL)
    held = [admit(limiter) for _ in range(3)]
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "5m"}
    limiter.release(held[0], status=200, headers=headers)
    waiter = asyncio.create_task(limiter.acquire(1))
    await settle()
    assert len(waiting(log_lines)) == 1, log_lines
    clock.now = 100.0
    limiter.release(held[1], status=200)  # wakes the waiter: 200 s left of the same wait
    await settle()
    assert not waiter.done()
    assert len(waiting(log_lines)) == 1, log_lines
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "201s"}  # ends at 301
    limiter.release(held[2], status=200, headers=headers)
    await settle()
    assert not waiter.done()
    assert len(waiting(log_lines)) == 1, log_lines
    await stop(limiter, waiter)


async def test_the_line_names_the_server_when_its_wait_is_within_a_second_of_the_whole(
    log_lines: list[str],
) -> None:
    """--rpm 1 makes the next request wait 60 s; the server says none are left for 59 s: its reset is the reason
    (within a second of the wait)."""
    clock = FakeClock()
    limiter = Limiter(4, rpm=1, clock=clock, max_wait=600.0, wall_clock=lambda: WALL)
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "59s"}
    limiter.release(admit(limiter), status=200, headers=headers)
    waiter = asyncio.create_task(limiter.acquire(1))
    await settle()
    lines = waiting(log_lines)
    assert len(lines) == 1, log_lines
    assert "wait_s=60" in lines[0] and "x-ratelimit-remaining-requests" in lines[0]
    await stop(limiter, waiter)


async def test_the_line_names_our_rate_limits_on_a_clock_far_from_zero(log_lines: list[str]) -> None:
    clock = FakeClock(1_000.0)
    limiter = Limiter(4, rpm=1, clock=clock, max_wait=600.0, wall_clock=lambda: WALL)
    limiter.release(admit(limiter), status=200)
    waiter = asyncio.create_task(limiter.acquire(1))
    await settle()
    lines = waiting(log_lines)
    assert len(lines) == 1, log_lines
    assert "wait_s=60" in lines[0] and "the rate limits in force" in lines[0]
    await stop(limiter, waiter)


async def test_the_line_names_the_backoff_after_429s_that_named_no_wait(log_lines: list[str]) -> None:
    """Seven 429s in a row with no Retry-After and no reset: a backoff of 30 to 60 s, and the line says so."""
    clock = FakeClock()
    limiter = Limiter(16, clock=clock, max_wait=600.0, wall_clock=lambda: WALL)
    tickets = [admit(limiter) for _ in range(7)]
    for ticket in tickets:
        limiter.release(ticket, status=429)
    assert limiter.paused_until >= 30.0
    waiter = asyncio.create_task(limiter.acquire(1))
    await settle()
    lines = waiting(log_lines)
    assert len(lines) == 1, log_lines
    assert "backing off after 429s that named no wait" in lines[0]
    await stop(limiter, waiter)


async def test_the_line_names_a_backoff_within_a_second_of_the_whole_wait(
    log_lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--rpm 1 with six requests out (one a minute); all six get a 429 naming no wait at 327 s: backoffs of
    1, 2, ... 32 s (the top of each range), while the pacing holds the next request until 360 s (33 s): the
    backoff is within a second of the wait, so it is the reason."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    clock = FakeClock()
    limiter = Limiter(8, rpm=1, clock=clock, max_wait=600.0, wall_clock=lambda: WALL)
    tickets = []
    for minute in range(6):
        clock.now = 60.0 * minute
        tickets.append(admit(limiter))
    clock.now = 327.0
    for ticket in tickets:
        limiter.release(ticket, status=429)
    assert limiter.paused_until == pytest.approx(359.0)
    waiter = asyncio.create_task(limiter.acquire(1))
    await settle()
    lines = waiting(log_lines)
    assert len(lines) == 1, log_lines
    assert "wait_s=33" in lines[0] and "backing off after 429s that named no wait" in lines[0]
    await stop(limiter, waiter)
