"""The limiter: in-flight cap, RPM/TPM sliding windows, server headers, 429 pauses and AIMD, with a fake clock.

``poll(cost, now)`` is the pure decision and is driven by hand; ``acquire()`` gets a few real-clock tests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import tracemalloc
from bisect import bisect_left
from collections.abc import Callable, Iterator

import pytest
from multidict import CIMultiDict

from inferbatch.errors import QuotaRejected
from inferbatch.limits import Limiter, Stopped, Ticket, human_duration, parse_reset

WALL = 1_763_158_400.0  # 2025-11-14T22:13:20Z: the wall clock messages date resets from


class FakeClock:
    """A mutable float: ``clock()`` reads it, ``clock.now = ...`` / ``advance()`` move it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def admit(limiter: Limiter, cost: int = 1, now: float | None = None) -> Ticket:
    decision = limiter.poll(cost, limiter.clock() if now is None else now)
    assert isinstance(decision, Ticket), f"expected admission, got a wait of {decision}"
    return decision


def wait_of(limiter: Limiter, cost: int = 1, now: float | None = None) -> float:
    decision = limiter.poll(cost, limiter.clock() if now is None else now)
    assert not isinstance(decision, Ticket), "expected a wait, got an admission"
    return decision


def greedy(limiter: Limiter, clock: FakeClock, costs: list[int], until: float) -> list[tuple[float, int]]:
    """Poll for each cost in turn, jumping the clock to every returned wait; release at once. Returns admissions."""
    admitted: list[tuple[float, int]] = []
    i = 0
    while clock.now < until and i < len(costs):
        decision = limiter.poll(costs[i], clock.now)
        if isinstance(decision, Ticket):
            admitted.append((clock.now, costs[i]))
            limiter.release(decision, status=200)
            i += 1
        else:
            assert 0 < decision < math.inf, decision
            clock.advance(decision)
    return admitted


async def loop_turns(done: Callable[[], bool], turns: int = 50) -> None:
    """Let the event loop run until ``done()``, failing after ``turns`` turns: promptness without a stopwatch."""
    for _ in range(turns):
        if done():
            return
        await asyncio.sleep(0)
    assert done(), f"not done after {turns} event-loop turns"


def max_in_any_window(admitted: list[tuple[float, int]], window: float = 60.0) -> float:
    """The largest total in any half-open window [t, t + window); the busiest one starts at an admission."""
    times = [t for t, _ in admitted]
    best = 0.0
    for i, (start, _) in enumerate(admitted):
        end = bisect_left(times, start + window - 1e-9)
        best = max(best, sum(amount for _, amount in admitted[i:end]))
    return best


# ---- in flight -------------------------------------------------------------------


def test_in_flight_cap() -> None:
    clock = FakeClock()
    limiter = Limiter(3, clock=clock)
    tickets = [admit(limiter) for _ in range(3)]
    assert limiter.in_flight == 3
    assert limiter.poll(1, clock.now) == math.inf
    limiter.release(tickets[0], status=200)
    assert limiter.in_flight == 2
    admit(limiter)
    assert limiter.poll(1, clock.now) == math.inf


def test_every_outcome_frees_the_slot() -> None:
    clock = FakeClock()
    limiter = Limiter(1, clock=clock)
    for status in (200, 500, 400, None, 401, 200):
        ticket = admit(limiter)
        assert limiter.poll(1, clock.now) == math.inf
        limiter.release(ticket, status=status)
        assert limiter.in_flight == 0


# ---- RPM -------------------------------------------------------------------------


def test_rpm_never_exceeds_the_sliding_window_and_is_paced() -> None:
    clock = FakeClock()
    limiter = Limiter(100, rpm=60, clock=clock)
    admitted = greedy(limiter, clock, [1] * 10_000, until=300.0)
    assert max_in_any_window(admitted) <= 60
    times = [t for t, _ in admitted]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 1.0 - 1e-6  # spread 60/rpm apart (SPEC §8.1), not 60 at once then a minute of nothing
    assert max(gaps) <= 1.0 + 1e-6
    assert len(admitted) >= 299  # and no slower than the limit allows


def test_rpm_first_requests_are_not_a_burst() -> None:
    clock = FakeClock()
    limiter = Limiter(100, rpm=120, clock=clock)
    admit(limiter)
    assert wait_of(limiter) == pytest.approx(0.5)


def test_rpm_stays_paced_after_an_idle_period() -> None:
    """Pacing holds after a pause too (and from a monotonic clock that does not start at zero)."""
    clock = FakeClock(12_345.0)
    limiter = Limiter(100, rpm=60, clock=clock)
    admitted = greedy(limiter, clock, [1] * 3, until=math.inf)
    clock.advance(300.0)
    admitted += greedy(limiter, clock, [1] * 3, until=math.inf)
    times = [t for t, _ in admitted]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g >= 1.0 - 1e-6 for g in gaps), f"gaps between admissions: {gaps}"


def test_rpm_window_holds_with_irregular_traffic() -> None:
    """Random idle gaps between requests: the window rule holds whatever the pattern."""
    rng = random.Random(7)
    clock = FakeClock()
    limiter = Limiter(8, rpm=30, clock=clock)
    admitted: list[tuple[float, int]] = []
    while clock.now < 600:
        decision = limiter.poll(1, clock.now)
        if isinstance(decision, Ticket):
            admitted.append((clock.now, 1))
            limiter.release(decision, status=200)
            clock.advance(rng.choice([0.0, 0.0, 0.5, 3.0, 20.0]))
        else:
            clock.advance(decision)
    assert max_in_any_window(admitted) <= 30


# ---- TPM -------------------------------------------------------------------------


def test_tpm_never_exceeds_the_sliding_window() -> None:
    rng = random.Random(3)
    clock = FakeClock()
    limiter = Limiter(100, tpm=1_000, clock=clock)
    admitted = greedy(limiter, clock, [rng.randint(50, 400) for _ in range(10_000)], until=300.0)
    assert max_in_any_window(admitted) <= 1_000
    assert sum(cost for t, cost in admitted if t < 300) >= 3_000  # it keeps going, window after window


def test_request_larger_than_tpm_is_admitted_when_the_window_is_empty() -> None:
    clock = FakeClock()
    limiter = Limiter(4, tpm=1_000, clock=clock)
    big = admit(limiter, 5_000)  # empty window: admitted, or it could never run
    limiter.release(big, status=200)
    assert wait_of(limiter, 10) == pytest.approx(60.0)
    clock.now = 60.0
    admit(limiter, 10)


def test_request_larger_than_tpm_waits_for_an_empty_window_then_runs() -> None:
    clock = FakeClock()
    limiter = Limiter(4, tpm=1_000, clock=clock)
    limiter.release(admit(limiter, 100), status=200)
    clock.now = 10.0
    wait = wait_of(limiter, 5_000)
    assert wait == pytest.approx(50.0)
    clock.advance(wait)
    admit(limiter, 5_000)


def test_settled_usage_frees_tokens_sooner() -> None:
    clock = FakeClock()
    limiter = Limiter(4, tpm=1_000, clock=clock, tpm_burst=1.0)  # the window alone (pacing: tests below)
    first = admit(limiter, 600)  # an estimate: prompt + max_tokens
    clock.now = 1.0
    assert wait_of(limiter, 600) == pytest.approx(59.0)
    limiter.release(first, status=200, total_tokens=100, completion_tokens=20)
    admit(limiter, 600)  # 100 + 600 fit now


def test_settled_usage_larger_than_the_estimate_counts() -> None:
    clock = FakeClock()
    limiter = Limiter(4, tpm=1_000, clock=clock)
    first = admit(limiter, 100)
    limiter.release(first, status=200, total_tokens=900)
    clock.now = 1.0
    assert wait_of(limiter, 200) == pytest.approx(59.0)
    assert limiter.tokens_used == 900


def test_acquisition_is_atomic_when_tokens_are_short() -> None:
    clock = FakeClock()
    limiter = Limiter(4, rpm=2, tpm=1_000, clock=clock, tpm_burst=1.0)  # the window alone
    admit(limiter, 900)
    clock.now = 30.0  # rpm pacing allows the second request now
    assert wait_of(limiter, 500) == pytest.approx(30.0)  # tokens are short: not admitted...
    assert limiter.in_flight == 1  # ...no slot taken...
    assert limiter.admitted == 1
    admit(limiter, 100)  # ...and no request slot or token spent: a request that fits still goes
    assert limiter.in_flight == 2


def test_acquisition_is_atomic_when_in_flight_is_full() -> None:
    clock = FakeClock()
    limiter = Limiter(1, tpm=1_000, clock=clock, tpm_burst=1.0)  # the window alone
    ticket = admit(limiter, 500)
    for _ in range(5):
        assert limiter.poll(400, clock.now) == math.inf
    limiter.release(ticket, status=200)
    admit(limiter, 500)  # the refused polls spent none of the 500 tokens left


def test_estimate_uses_max_tokens_then_the_mean_completion_seen() -> None:
    limiter = Limiter(4)
    assert limiter.estimate(100, 50) == 150
    ticket = admit(limiter, 10, now=0.0)
    limiter.release(ticket, status=200, total_tokens=110, completion_tokens=80)
    assert limiter.estimate(100, None) == 180


# ---- reset durations ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("51s", 51.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1.5", 1.5),
        ("1.5s", 1.5),
        ("1h2m3s", 3723.0),
        ("2m30.5s", 150.5),
        ("0s", 0.0),
        (" 10s ", 10.0),
        ("1d", 86_400.0),  # the one duration language (inferbatch.durations), as --max-wait reads it
    ],
)
def test_parse_reset(text: str, seconds: float) -> None:
    assert parse_reset(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "10 seconds", "5x", "s", "1h 30m", "10s later", "m5"])
def test_parse_reset_garbage_is_none(text: str | None) -> None:
    assert parse_reset(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "inf",
        "-inf",
        "nan",
        "1e400",
        "-5",
        "-0.5s",
        "2026-01-01T00:00:00",
        "2026-13-45T99:00:00Z",
        "Infinity",
        "9" * 400 + "s",
    ],
)
def test_parse_reset_ignores_values_that_are_no_time(text: str) -> None:
    """Garbage resets are ignored (None), never an infinite or negative wait: an `inf` reset must not hang the run."""
    assert parse_reset(text, now=WALL) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (str(int(WALL) + 42), 42.0),  # Unix seconds: 42 s from now, not 56 years
        (str(int(WALL * 1000) + 1500), 1.5),  # Unix milliseconds
        (str(int(WALL) - 3600), 0.0),  # already past
        ("2025-11-14T22:14:00Z", 40.0),  # ISO 8601 with a zone (Anthropic-style reset headers)
        ("2025-11-14T23:13:20+01:00", 0.0),
        ("999999999", 999_999_999.0),  # below 1e9 it is still a duration
    ],
)
def test_parse_reset_reads_epoch_and_timestamps_as_absolute_times(text: str, seconds: float) -> None:
    """SPEC §4 reset headers: `x-ratelimit-reset-requests: 1767225600` is a moment, not a 56-year wait."""
    assert parse_reset(text, now=WALL) == pytest.approx(seconds)


def test_epoch_reset_header_waits_until_that_moment() -> None:
    clock = FakeClock(100.0)
    limiter = Limiter(4, clock=clock, wall_clock=lambda: WALL)
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": str(int(WALL) + 30)}
    limiter.release(admit(limiter), status=200, headers=headers)
    assert wait_of(limiter) == pytest.approx(30.0)
    clock.advance(30.0)
    admit(limiter)


@pytest.mark.parametrize("value", ["inf", "nan", "-3", "soon", "1e400"])
def test_garbage_reset_or_remaining_headers_are_ignored(value: str) -> None:
    """A server's nonsense never becomes an endless wait or a crash: the limiter goes on as if it said nothing."""
    clock = FakeClock()
    limiter = Limiter(4, clock=clock)
    limiter.release(
        admit(limiter), status=200, headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": value}
    )
    admit(limiter)
    limiter.release(
        admit(limiter),
        status=200,
        headers={
            "x-ratelimit-remaining-requests": value,
            "x-ratelimit-reset-requests": "10s",
            "x-ratelimit-limit-requests": value,
        },
    )
    admit(limiter)
    limiter.release(
        admit(limiter), status=429, headers={"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": value}
    )
    assert limiter.paused_until - clock.now <= 1.0  # the short backoff of a 429 that named no wait


# ---- limits announced by the server ---------------------------------------------------


def test_server_limit_headers_set_the_limits_in_force() -> None:
    clock = FakeClock()
    limiter = Limiter(4, clock=clock)
    assert limiter.rpm is None and limiter.tpm is None
    headers = {"x-ratelimit-limit-requests": "120", "x-ratelimit-limit-tokens": "800000"}
    limiter.release(admit(limiter), status=200, headers=headers)
    assert limiter.rpm == 120
    assert limiter.tpm == 800_000


def test_server_limit_headers_are_read_case_insensitively() -> None:
    clock = FakeClock()
    limiter = Limiter(4, clock=clock)
    headers = CIMultiDict({"X-RateLimit-Limit-Requests": "150", "X-RateLimit-Limit-Tokens": "800000"})
    limiter.release(admit(limiter), status=200, headers=headers)
    assert (limiter.rpm, limiter.tpm) == (150, 800_000)


def test_server_limits_pace_admissions() -> None:
    clock = FakeClock()
    limiter = Limiter(100, clock=clock)
    limiter.release(admit(limiter), status=200, headers={"x-ratelimit-limit-requests": "120"})
    clock.advance(10.0)
    admitted = greedy(limiter, clock, [1] * 1_000, until=130.0)
    assert max_in_any_window(admitted) <= 120


@pytest.mark.parametrize(("flag", "header", "expected"), [(100, 120, 100), (200, 120, 120), (120, 120, 120)])
def test_flag_and_header_take_the_minimum(flag: int, header: int, expected: int) -> None:
    clock = FakeClock()
    limiter = Limiter(4, rpm=flag, tpm=flag * 1000, clock=clock)
    headers = {"x-ratelimit-limit-requests": str(header), "x-ratelimit-limit-tokens": str(header * 1000)}
    limiter.release(admit(limiter), status=200, headers=headers)
    assert limiter.rpm == expected
    assert limiter.tpm == expected * 1000


def test_exhausted_requests_wait_for_the_reset() -> None:
    clock = FakeClock(100.0)
    limiter = Limiter(4, clock=clock)
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "10s"}
    limiter.release(admit(limiter), status=200, headers=headers)
    assert wait_of(limiter) == pytest.approx(10.0)
    clock.advance(4.0)
    assert wait_of(limiter) == pytest.approx(6.0)
    clock.advance(6.0)
    admit(limiter)


def test_exhausted_tokens_wait_for_the_reset() -> None:
    clock = FakeClock(100.0)
    limiter = Limiter(4, clock=clock)
    headers = CIMultiDict({"X-RateLimit-Remaining-Tokens": "0", "X-RateLimit-Reset-Tokens": "6m0s"})
    limiter.release(admit(limiter), status=200, headers=headers)
    assert wait_of(limiter, 500) == pytest.approx(360.0)
    clock.advance(360.0)
    admit(limiter, 500)


def test_remaining_requests_are_spent_before_waiting() -> None:
    clock = FakeClock()
    limiter = Limiter(10, clock=clock)
    headers = {"x-ratelimit-remaining-requests": "2", "x-ratelimit-reset-requests": "20s"}
    limiter.release(admit(limiter), status=200, headers=headers)
    admit(limiter)
    admit(limiter)
    assert wait_of(limiter) == pytest.approx(20.0)


def test_requests_sent_after_the_reported_one_count_against_remaining() -> None:
    """The server's remaining count did not include requests admitted after the one it answered."""
    clock = FakeClock()
    limiter = Limiter(10, clock=clock)
    answered, _, _ = admit(limiter), admit(limiter), admit(limiter)
    headers = {"x-ratelimit-remaining-requests": "2", "x-ratelimit-reset-requests": "20s"}
    limiter.release(answered, status=200, headers=headers)
    assert wait_of(limiter) == pytest.approx(20.0)


# ---- 429 --------------------------------------------------------------------------------


def test_429_with_retry_after_pauses_everything_and_halves_concurrency() -> None:
    clock = FakeClock()
    limiter = Limiter(16, clock=clock)
    ticket = admit(limiter)
    limiter.release(ticket, status=429, retry_after=7.0)
    assert limiter.paused_until == pytest.approx(7.0)
    assert limiter.effective_concurrency == 8
    assert wait_of(limiter) == pytest.approx(7.0)
    assert wait_of(limiter, 10_000) == pytest.approx(7.0)
    clock.now = 3.0
    assert wait_of(limiter) == pytest.approx(4.0)
    clock.now = 7.0
    admit(limiter)


def test_halved_concurrency_caps_in_flight() -> None:
    clock = FakeClock()
    limiter = Limiter(16, clock=clock)
    limiter.release(admit(limiter), status=429, retry_after=0.0)
    tickets = [admit(limiter) for _ in range(8)]
    assert limiter.poll(1, clock.now) == math.inf
    assert len(tickets) == 8


def test_a_burst_of_429s_from_requests_in_flight_halves_once() -> None:
    clock = FakeClock()
    limiter = Limiter(16, clock=clock)
    in_flight = [admit(limiter) for _ in range(16)]
    for ticket in in_flight:
        limiter.release(ticket, status=429, retry_after=1.0)
    assert limiter.effective_concurrency == 8  # SPEC §8.24: once, not 16 → 8 → 4 → 2 → 1
    assert limiter.rate_limited == 16
    clock.now = 2.0
    later = admit(limiter)  # admitted after the decrease
    limiter.release(later, status=429, retry_after=1.0)
    assert limiter.effective_concurrency == 4


def test_429s_interleaved_with_new_admissions_halve_only_for_new_requests() -> None:
    clock = FakeClock()
    limiter = Limiter(16, clock=clock)
    old = [admit(limiter) for _ in range(6)]
    limiter.release(old[0], status=429, retry_after=0.0)
    assert limiter.effective_concurrency == 8
    new = admit(limiter)  # 6 in flight under 8
    limiter.release(old[1], status=429, retry_after=0.0)  # still from before the decrease
    assert limiter.effective_concurrency == 8
    limiter.release(new, status=429, retry_after=0.0)
    assert limiter.effective_concurrency == 4


def test_concurrency_never_drops_below_one() -> None:
    clock = FakeClock()
    limiter = Limiter(4, clock=clock)
    for _ in range(10):
        clock.now = limiter.paused_until
        limiter.release(admit(limiter), status=429, retry_after=0.0)
    assert limiter.effective_concurrency == 1
    admit(limiter)


def test_additive_increase_climbs_back_one_at_a_time_to_the_max() -> None:
    clock = FakeClock()
    limiter = Limiter(16, clock=clock)
    limiter.release(admit(limiter), status=429, retry_after=0.0)
    assert limiter.effective_concurrency == 8
    limiter.release(admit(limiter), status=200)
    assert limiter.effective_concurrency == 8  # one success is not a run of them
    seen = [limiter.effective_concurrency]
    for _ in range(1_000):
        limiter.release(admit(limiter), status=200)
        seen.append(limiter.effective_concurrency)
    steps = [b - a for a, b in zip(seen, seen[1:])]
    assert set(steps) <= {0, 1}
    assert seen[-1] == 16
    assert max(seen) == 16
    assert sorted(set(seen)) == list(range(8, 17))


def test_additive_increase_needs_a_run_of_successes_per_step() -> None:
    clock = FakeClock()
    limiter = Limiter(16, clock=clock)
    limiter.release(admit(limiter), status=429, retry_after=0.0)
    successes = 0
    while limiter.effective_concurrency == 8:
        limiter.release(admit(limiter), status=200)
        successes += 1
    assert successes >= 4  # grows back gradually (SPEC §4): not on the first success
    assert limiter.effective_concurrency == 9


def test_429_without_retry_after_pauses_until_the_exhausted_reset() -> None:
    clock = FakeClock(50.0)
    limiter = Limiter(16, clock=clock)
    headers = CIMultiDict({"X-RateLimit-Remaining-Requests": "0", "X-RateLimit-Reset-Requests": "12s"})
    limiter.release(admit(limiter), status=429, headers=headers)
    assert limiter.paused_until == pytest.approx(62.0)
    assert wait_of(limiter) == pytest.approx(12.0)


def test_429_without_retry_after_pauses_until_the_exhausted_token_reset() -> None:
    clock = FakeClock(50.0)
    limiter = Limiter(16, clock=clock)
    headers = {
        "x-ratelimit-remaining-requests": "40",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "30s",
    }
    limiter.release(admit(limiter), status=429, headers=headers)
    assert limiter.paused_until == pytest.approx(80.0)


def test_429_with_nothing_to_go_on_pauses_a_short_backoff() -> None:
    for _ in range(50):
        clock = FakeClock(10.0)
        limiter = Limiter(16, clock=clock)
        limiter.release(admit(limiter), status=429)
        assert 0.0 < limiter.paused_until - clock.now <= 1.0
        assert 0.0 < wait_of(limiter) <= 1.0


def test_repeated_429s_with_nothing_back_off_but_stay_bounded() -> None:
    clock = FakeClock()
    limiter = Limiter(16, clock=clock)
    pauses = []
    for _ in range(20):
        clock.now = limiter.paused_until
        limiter.release(admit(limiter), status=429)
        pauses.append(limiter.paused_until - clock.now)
    assert pauses[0] <= 1.0
    assert max(pauses) > 1.0  # it backs off
    assert max(pauses) <= 60.0  # but never for long without a server's word


async def test_429_pause_over_max_wait_is_a_quota_stop_not_a_sleep() -> None:
    """SPEC §4/§8.13: a Retry-After longer than --max-wait stops (QuotaRejected naming it), never waited out."""
    clock = FakeClock()
    limiter = Limiter(16, clock=clock, max_wait=600.0, wall_clock=lambda: WALL)
    limiter.release(admit(limiter), status=429, retry_after=86_400.0)
    with pytest.raises(QuotaRejected) as info:
        await asyncio.wait_for(limiter.acquire(1), 10.0)
    assert "Retry-After" in info.value.message
    assert "in 1d (at 2025-11-15T22:13:20Z)" in info.value.message
    assert "--max-wait 10m" in info.value.message
    assert limiter.paused_s == 0.0  # a pause that is never waited out is not reported as paused time
    assert limiter.in_flight == 0


async def test_429_pause_within_max_wait_is_waited_out() -> None:
    """A server's wait at or under --max-wait is honoured: nothing is sent until it ends, then the run goes on."""
    clock = FakeClock()
    limiter = Limiter(16, clock=clock, max_wait=600.0)
    limiter.release(admit(limiter), status=429, retry_after=0.2)
    assert wait_of(limiter) == pytest.approx(0.2)
    clock.now = 0.2
    assert isinstance(await asyncio.wait_for(limiter.acquire(1), 10.0), Ticket)


def test_rate_limited_and_paused_figures() -> None:
    clock = FakeClock()
    limiter = Limiter(16, clock=clock)
    a, b, c = admit(limiter), admit(limiter), admit(limiter)
    limiter.release(a, status=200)
    assert (limiter.rate_limited, limiter.paused_s) == (0, 0.0)
    limiter.release(b, status=429, retry_after=7.0)  # paused 0 → 7
    clock.now = 2.0
    limiter.release(c, status=429, retry_after=7.0)  # paused until 9: two more seconds, not seven
    assert limiter.rate_limited == 2
    assert limiter.paused_s == pytest.approx(9.0)
    clock.now = 20.0
    limiter.release(admit(limiter), status=429, retry_after=5.0)  # a separate pause 20 → 25
    assert limiter.rate_limited == 3
    assert limiter.paused_s == pytest.approx(14.0)


def test_memory_stays_flat_without_rate_limits() -> None:
    """The runner's memory must not grow with the number of rows (SPEC §6), limits or none."""
    clock = FakeClock()
    limiter = Limiter(4, clock=clock)

    def run(n: int) -> None:
        for _ in range(n):
            clock.advance(1.0)
            limiter.release(admit(limiter, 100), status=200, total_tokens=100)

    run(1_000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run(20_000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 200_000, f"{grown} bytes kept for 20,000 finished requests"


# ---- acquire(): the waiting, with the real clock ------------------------------------------


async def test_acquire_admits_at_once_when_free() -> None:
    limiter = Limiter(2)
    ticket = await asyncio.wait_for(limiter.acquire(10), 10.0)
    assert isinstance(ticket, Ticket)
    assert limiter.in_flight == 1


async def test_waiters_are_served_first_come_first_served() -> None:
    limiter = Limiter(1)
    first = await limiter.acquire(1)
    order: list[int] = []

    async def waiter(n: int, cost: int) -> None:
        ticket = await limiter.acquire(cost)
        order.append(n)
        await asyncio.sleep(0.005)
        limiter.release(ticket, status=200)

    tasks = []
    for n, cost in enumerate([500, 1, 50, 1, 5]):  # a big one first must not be overtaken by small ones
        tasks.append(asyncio.create_task(waiter(n, cost)))
        await asyncio.sleep(0.002)
    limiter.release(first, status=200)
    await asyncio.wait_for(asyncio.gather(*tasks), 10.0)
    assert order == [0, 1, 2, 3, 4]


async def test_a_small_request_does_not_overtake_a_big_one_waiting_for_tokens() -> None:
    limiter = Limiter(10, tpm=100, window=0.15)
    await limiter.acquire(60)
    order: list[str] = []

    async def waiter(name: str, cost: int) -> None:
        await limiter.acquire(cost)
        order.append(name)

    big = asyncio.create_task(waiter("big", 50))  # 60 + 50 > 100: waits for the window
    await asyncio.sleep(0.01)
    small = asyncio.create_task(waiter("small", 10))  # would fit now, but came second
    await asyncio.wait_for(asyncio.gather(big, small), 10.0)
    assert order == ["big", "small"]


async def test_close_makes_waiting_acquirers_raise_stopped() -> None:
    limiter = Limiter(1)
    await limiter.acquire(1)
    waiters = [asyncio.create_task(limiter.acquire(1)) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters)
    limiter.close()
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 10.0)
    assert all(isinstance(r, Stopped) for r in results), results
    with pytest.raises(Stopped):
        await asyncio.wait_for(limiter.acquire(1), 10.0)


async def test_close_wakes_a_waiter_in_a_pause() -> None:
    """Woken by close() itself, not by its 30 s timer: done within a few loop turns (no wall-clock bound)."""
    limiter = Limiter(4)
    limiter.release(await limiter.acquire(1), status=429, retry_after=30.0)
    waiter = asyncio.create_task(limiter.acquire(1))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    limiter.close()
    await loop_turns(lambda: waiter.done())
    with pytest.raises(Stopped):
        waiter.result()


async def test_waiter_on_in_flight_wakes_promptly_on_release() -> None:
    """A waiter for a slot has no timer at all: release() wakes it within a few loop turns."""
    limiter = Limiter(1)
    held = await limiter.acquire(1)
    waiter = asyncio.create_task(limiter.acquire(1))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    limiter.release(held, status=200)
    await loop_turns(lambda: waiter.done())
    assert isinstance(waiter.result(), Ticket)


async def test_waiter_resumes_when_a_pause_ends() -> None:
    """Not before the pause ends on the limiter's clock, however long it really waits; promptly after."""
    clock = FakeClock()
    limiter = Limiter(4, clock=clock)
    limiter.release(await limiter.acquire(1), status=429, retry_after=0.05)
    waiter = asyncio.create_task(limiter.acquire(1))
    await asyncio.sleep(0.3)  # several of its 0.05 s timers fire: the clock says the pause is still on
    assert not waiter.done()
    clock.now = 0.05
    assert isinstance(await asyncio.wait_for(waiter, 10.0), Ticket)


async def test_waiter_follows_a_pause_that_grows_while_it_waits() -> None:
    clock = FakeClock()
    limiter = Limiter(4, clock=clock)
    t1, t2 = await limiter.acquire(1), await limiter.acquire(1)
    limiter.release(t1, status=429, retry_after=0.02)
    waiter = asyncio.create_task(limiter.acquire(1))
    await asyncio.sleep(0.01)
    limiter.release(t2, status=429, retry_after=0.05)  # from before the decrease: no second halving, a longer pause
    clock.now = 0.03  # the first pause is over, the longer one is not
    await asyncio.sleep(0.2)
    assert not waiter.done()
    clock.now = 0.05
    await asyncio.wait_for(waiter, 10.0)
    assert limiter.effective_concurrency == 2


async def test_cancelled_waiter_does_not_block_the_next() -> None:
    limiter = Limiter(1)
    held = await limiter.acquire(1)
    doomed = asyncio.create_task(limiter.acquire(1))
    await asyncio.sleep(0.01)
    nxt = asyncio.create_task(limiter.acquire(1))
    await asyncio.sleep(0.01)
    doomed.cancel()
    await asyncio.sleep(0.01)
    limiter.release(held, status=200)
    assert isinstance(await asyncio.wait_for(nxt, 10.0), Ticket)
    assert limiter.in_flight == 1


# ---- quota: a wait the server asks for beyond --max-wait is a stop (SPEC §4) ----------------------


@pytest.mark.parametrize(
    ("kind", "header_reset"),
    [("requests", "480h0m0s"), ("tokens", str(int(WALL) + 20 * 86_400))],
    ids=["requests-duration", "tokens-epoch"],
)
async def test_exhausted_limit_resetting_beyond_max_wait_raises_quota_rejected(kind: str, header_reset: str) -> None:
    """`x-ratelimit-remaining-* = 0` with a reset 20 days away: acquire() stops, naming the limit and the reset,
    instead of sleeping for 20 days without a word."""
    clock = FakeClock(100.0)
    limiter = Limiter(4, clock=clock, max_wait=600.0, wall_clock=lambda: WALL)
    headers = {f"x-ratelimit-remaining-{kind}": "0", f"x-ratelimit-reset-{kind}": header_reset}
    limiter.release(admit(limiter, 10), status=200, headers=headers)
    with pytest.raises(QuotaRejected) as info:
        await asyncio.wait_for(limiter.acquire(10), 10.0)
    message = info.value.message
    assert f"x-ratelimit-remaining-{kind}" in message
    assert "in 20d (at 2025-12-04T22:13:20Z)" in message
    assert "--max-wait 10m" in message
    assert limiter.in_flight == 0


async def test_exhausted_limit_is_waited_out_when_max_wait_is_none() -> None:
    clock = FakeClock()
    limiter = Limiter(4, clock=clock, max_wait=None)
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "480h"}
    limiter.release(admit(limiter), status=200, headers=headers)
    waiter = asyncio.create_task(limiter.acquire(1))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    waiter.cancel()


async def test_client_side_pacing_is_never_a_quota_stop() -> None:
    """--rpm 1 waits 60 s between requests: that is our own pacing, not a server's wait, even with --max-wait 10s."""
    clock = FakeClock()
    limiter = Limiter(4, rpm=1, clock=clock, max_wait=10.0)
    limiter.release(admit(limiter), status=200)
    waiter = asyncio.create_task(limiter.acquire(1))
    await asyncio.sleep(0.05)
    assert not waiter.done()  # waiting, not raising
    waiter.cancel()


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


async def test_a_long_wait_within_max_wait_is_logged_once_with_its_end(log_lines: list[str]) -> None:
    """A 5-minute server reset is waited out, and says so in one line naming the reason and until when."""
    clock = FakeClock()
    limiter = Limiter(4, clock=clock, max_wait=600.0, wall_clock=lambda: WALL)
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "5m"}
    limiter.release(admit(limiter), status=200, headers=headers)
    waiters = [asyncio.create_task(limiter.acquire(1)) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    waiting = [line for line in log_lines if line.startswith("waiting ")]
    assert len(waiting) == 1, log_lines  # one line for the pause, not one per waiter or per wake-up
    assert "wait_s=300" in waiting[0]
    assert "in 5m (at 2025-11-14T22:18:20Z)" in waiting[0]
    assert "x-ratelimit-remaining-requests" in waiting[0]
    clock.now = 300.0
    limiter.close()
    await asyncio.gather(*waiters, return_exceptions=True)


async def test_a_short_wait_is_not_logged(log_lines: list[str]) -> None:
    clock = FakeClock()
    limiter = Limiter(4, clock=clock)
    limiter.release(admit(limiter), status=429, retry_after=5.0)
    waiter = asyncio.create_task(limiter.acquire(1))
    await asyncio.sleep(0.05)
    waiter.cancel()
    assert not [line for line in log_lines if line.startswith("waiting ")]


def test_human_duration() -> None:
    assert [human_duration(s) for s in (0.25, 45, 600, 330, 3600, 11_520, 86_400, 20 * 86_400 + 4 * 3600)] == [
        "0.25s",
        "45s",
        "10m",
        "5m30s",
        "1h",
        "3h12m",
        "1d",
        "20d4h",
    ]


# ---- TPM is paced, not a minute's tokens at once (SPEC §8.1) --------------------------------------


def test_tpm_first_seconds_are_not_a_burst() -> None:
    """A fresh run with --tpm 60000 and 1,000-token requests: a modest burst (a tenth of the minute), then one
    request a second; before, all 60 went out at once and the next minute waited."""
    clock = FakeClock()
    limiter = Limiter(100, tpm=60_000, clock=clock)
    admitted = greedy(limiter, clock, [1_000] * 1_000, until=300.0)
    first_ten = sum(cost for t, cost in admitted if t < 10.0)
    assert first_ten <= 6_000 + 10 * 1_000  # the burst plus ten seconds at 1,000 tokens a second
    times = [t for t, _ in admitted if t < 60.0]
    assert times[:7] == [0.0] * 6 + [1.0]
    gaps = [b - a for a, b in zip(times[6:], times[7:])]
    assert min(gaps) >= 1.0 - 1e-6  # after the burst: 60/tpm s per token, i.e. 1 s per 1,000-token request
    assert max_in_any_window(admitted) <= 60_000
    assert sum(cost for _, cost in admitted) >= 0.95 * 60_000 * 5  # and no slower than the limit allows


def test_tpm_any_stretch_holds_at_most_the_burst_plus_the_rate() -> None:
    """Random request sizes: any interval of d seconds admits at most tpm/10 + d * tpm/60 tokens."""
    rng = random.Random(11)
    clock = FakeClock()
    limiter = Limiter(100, tpm=30_000, clock=clock)
    admitted = greedy(limiter, clock, [rng.randint(50, 3_000) for _ in range(5_000)], until=600.0)
    assert max_in_any_window(admitted) <= 30_000
    times = [t for t, _ in admitted]
    for span in (1.0, 5.0, 20.0):
        busiest = max(
            sum(cost for _, cost in admitted[i : bisect_left(times, start + span - 1e-9)])
            for i, (start, _) in enumerate(admitted)
        )
        assert busiest <= 3_000 + span * 500 + 1e-6, (span, busiest)


def test_tpm_unused_estimate_goes_back_to_the_bucket() -> None:
    """Admission spends the estimate (prompt + max_tokens); usage settles it, so a generous max_tokens does not
    slow the run down for good."""
    clock = FakeClock()
    limiter = Limiter(100, tpm=60_000, clock=clock)
    ticket = admit(limiter, 6_000)  # the whole burst
    assert wait_of(limiter, 1_000) == pytest.approx(1.0)
    limiter.release(ticket, status=200, total_tokens=1_000, completion_tokens=200)
    admit(limiter, 1_000)  # 5,000 unused tokens came back


def test_tpm_announced_by_the_server_is_paced_too() -> None:
    clock = FakeClock()
    limiter = Limiter(100, clock=clock)
    limiter.release(admit(limiter), status=200, headers={"x-ratelimit-limit-tokens": "60000"})
    admitted = greedy(limiter, clock, [1_000] * 100, until=30.0)
    assert sum(cost for t, cost in admitted if t < 10.0) <= 6_000 + 10 * 1_000


def test_n_processes_sharing_one_limit_each_take_a_share_of_it() -> None:
    """SPEC §8.38: with --shard auto and INFERBATCH_SHARDS=N each process takes 1/N of --rpm/--tpm, of the
    limits the server announces and of what it says remains: together they stay under the one limit."""
    limiter = Limiter(8, rpm=100, tpm=90_000, share=4)
    assert (limiter.rpm, limiter.tpm) == (25, 22_500)
    ticket = limiter.poll(10, 0.0)
    assert not isinstance(ticket, float)
    limiter.release(
        ticket,
        status=200,
        headers={
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "8",
            "x-ratelimit-reset-requests": "30s",
        },
    )
    assert limiter.rpm == 15  # 60 announced, a quarter of it
    assert limiter._server_requests_left == 2  # 8 left for all four: this one counts on two
    assert Limiter(8, rpm=3, share=4).rpm == 1  # never zero
