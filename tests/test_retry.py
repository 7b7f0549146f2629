"""The retry policy: which statuses retry, Retry-After parsing, the wait formula, and the tenacity controller."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import pytest
from multidict import CIMultiDict
from tenacity import RetryCallState

from inferbatch import retry
from inferbatch.errors import AuthRejected, Fatal, Retryable
from inferbatch.retry import RETRYABLE_STATUSES, make_retrying, parse_retry_after, wait_for

NOW = 1_700_000_000.0  # a whole second, so HTTP dates (second resolution) round-trip exactly


def state(attempt: int, exc: BaseException) -> RetryCallState:
    """The retry state tenacity hands to ``wait_for`` after ``attempt`` attempts ended with ``exc``."""
    rs = RetryCallState(retry_object=make_retrying(10, sleep=no_sleep), fn=None, args=(), kwargs={})
    rs.attempt_number = attempt
    rs.set_exception((type(exc), exc, None))
    return rs


async def no_sleep(seconds: float) -> None:
    return None


def samples(attempt: int, exc: BaseException | None = None, n: int = 2000) -> list[float]:
    rs = state(attempt, exc if exc is not None else Retryable("http_500", status=500))
    return [wait_for(rs) for _ in range(n)]


# ---- which failures retry ---------------------------------------------------


def test_retryable_statuses_are_exactly_the_documented_set() -> None:
    assert {408, 409, 425, 429, 500, 502, 503, 504, 529} == RETRYABLE_STATUSES


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 418, 200, 301, 307])
def test_statuses_never_retried_are_not_in_the_set(status: int) -> None:
    assert status not in RETRYABLE_STATUSES


# ---- Retry-After --------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "5"}, 5.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": " 7 "}, 7.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "10"}, 0.25),
        ({"retry-after": "10", "retry-after-ms": "250"}, 0.25),
    ],
)
def test_retry_after_in_seconds_and_milliseconds(headers: dict[str, str], expected: float) -> None:
    assert parse_retry_after(headers, now=NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (CIMultiDict({"Retry-After": "5"}), 5.0),
        (CIMultiDict({"RETRY-AFTER": "2.5"}), 2.5),
        (CIMultiDict({"Retry-After-Ms": "750", "Retry-After": "9"}), 0.75),
        (CIMultiDict({"Content-Type": "application/json"}), None),
    ],
)
def test_retry_after_from_case_insensitive_headers(headers: CIMultiDict[str], expected: float | None) -> None:
    """aiohttp hands over a CIMultiDictProxy whose keys keep the server's capitalisation."""
    assert parse_retry_after(headers, now=NOW) == (None if expected is None else pytest.approx(expected))


def test_retry_after_http_date_in_the_future_is_relative_to_now() -> None:
    headers = {"retry-after": email.utils.formatdate(NOW + 30, usegmt=True)}
    assert parse_retry_after(headers, now=NOW) == pytest.approx(30.0)
    assert parse_retry_after(headers, now=NOW + 10) == pytest.approx(20.0)


def test_retry_after_http_date_mixed_case_header() -> None:
    headers = CIMultiDict({"Retry-After": email.utils.formatdate(NOW + 90, usegmt=True)})
    assert parse_retry_after(headers, now=NOW) == pytest.approx(90.0)


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    headers = {"retry-after": email.utils.formatdate(NOW - 3600, usegmt=True)}
    assert parse_retry_after(headers, now=NOW) == 0.0


def test_retry_after_http_date_defaults_to_the_wall_clock() -> None:
    headers = {"retry-after": email.utils.formatdate(time.time() + 120, usegmt=True)}
    wait = parse_retry_after(headers)
    assert wait is not None
    assert 115.0 <= wait <= 121.0


@pytest.mark.parametrize("value", ["soon", "tomorrow at noon", "5 seconds", "<html>", "1,5"])
def test_retry_after_garbage_is_none(value: str) -> None:
    assert parse_retry_after({"retry-after": value}, now=NOW) is None


@pytest.mark.parametrize("value", ["inf", "Infinity", "nan", "1e400", "-5"])
def test_retry_after_that_is_no_wait_is_ignored(value: str) -> None:
    """A Retry-After of `inf` must not become an endless sleep or a crash: it is garbage, as if absent."""
    assert parse_retry_after({"retry-after": value}, now=NOW) is None
    assert parse_retry_after({"retry-after-ms": value, "retry-after": "3"}, now=NOW) == pytest.approx(3.0)


@pytest.mark.parametrize("headers", [{}, {"content-type": "application/json"}, {"retry-after": ""}])
def test_retry_after_absent_is_none(headers: dict[str, str]) -> None:
    assert parse_retry_after(headers, now=NOW) is None


def test_unreadable_retry_after_ms_falls_back_to_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "soon", "retry-after": "4"}, now=NOW) == pytest.approx(4.0)


# ---- the wait formula ---------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 6])
def test_server_retry_after_sets_the_wait_plus_a_little_jitter(attempt: int) -> None:
    waits = samples(attempt, Retryable("rate_limit_exceeded", status=429, retry_after=5))
    assert all(5.0 <= w <= 5.6 for w in waits)
    assert max(waits) - min(waits) > 0.3  # jittered, not a constant


def test_server_retry_after_zero_waits_at_most_the_base_jitter() -> None:
    waits = samples(4, Retryable("x", status=503, retry_after=0.0))
    assert all(0.0 <= w <= 0.1 for w in waits)


def test_server_retry_after_is_honoured_whole_with_a_little_jitter() -> None:
    """SPEC §8.13: the server's wait plus a little jitter; no silent 10-minute cap (a wait over --max-wait is a
    quota stop raised by the client, so it never reaches the policy)."""
    waits = samples(2, Retryable("x", status=429, retry_after=900.0))
    assert all(900.0 <= w <= 990.1 for w in waits)
    assert min(waits) < 950.0 < max(waits)


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6])
def test_backoff_is_full_jitter_exponential(attempt: int) -> None:
    cap = min(60.0, 2.0 ** (attempt - 1))
    waits = samples(attempt)
    assert all(0.0 <= w <= cap for w in waits)
    assert max(waits) > 0.95 * cap  # reaches up to the cap
    assert min(waits) < 0.05 * cap  # full jitter: down to zero, not "cap/2 + jitter"


@pytest.mark.parametrize("attempt", [7, 8, 10, 20, 100])
def test_backoff_caps_at_sixty_seconds(attempt: int) -> None:
    waits = samples(attempt)
    assert max(waits) <= 60.0
    assert max(waits) > 59.0
    assert min(waits) >= 0.0


def test_backoff_applies_to_failures_without_a_status() -> None:
    waits = samples(3, Retryable("timeout: no response within 300 s"))
    assert all(0.0 <= w <= 4.0 for w in waits)


# ---- test mode ---------------------------------------------------------------


def test_set_testing_zeroes_the_wait_scale_and_restores_it() -> None:
    retry.set_testing(False)
    assert retry.wait_scale() == 1.0
    retry.set_testing(True)
    assert retry.wait_scale() == 0.0
    retry.set_testing(False)
    assert retry.wait_scale() == 1.0
    retry.set_testing()
    assert retry.wait_scale() == 0.0


def test_the_suite_runs_with_zero_waits() -> None:
    """The autouse ``fast_retries`` fixture is on for every test."""
    assert retry.wait_scale() == 0.0


# ---- the controller ---------------------------------------------------------


class Recorder:
    """An injected sleep that records what it was asked to wait, and never waits."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


async def drive(max_attempts: int, outcomes: list[BaseException | None], sleep: Recorder) -> tuple[int, Any]:
    """Run the controller; attempt k raises outcomes[k] (None: succeeds). Returns (attempts, result)."""
    attempts = 0
    result = None
    async for attempt in make_retrying(max_attempts, sleep=sleep):
        with attempt:
            outcome = outcomes[min(attempts, len(outcomes) - 1)]
            attempts += 1
            if outcome is not None:
                raise outcome
            result = "ok"
    return attempts, result


@pytest.mark.parametrize("max_attempts", [1, 2, 6])
async def test_retryable_failures_use_every_attempt_then_reraise_the_original(max_attempts: int) -> None:
    sleep = Recorder()
    raised = [Retryable(f"http_503 #{i}", status=503) for i in range(max_attempts)]
    attempts = 0
    with pytest.raises(Retryable) as info:
        async for attempt in make_retrying(max_attempts, sleep=sleep):
            with attempt:
                attempts += 1
                raise raised[attempts - 1]
    assert attempts == max_attempts
    assert len(sleep.waits) == max_attempts - 1
    assert info.value is raised[-1]  # the last failure itself, not tenacity.RetryError
    assert type(info.value) is Retryable


async def test_success_after_failures_stops_retrying() -> None:
    sleep = Recorder()
    attempts, result = await drive(6, [Retryable("x", status=500), Retryable("x", status=502), None], sleep)
    assert (attempts, result) == (3, "ok")
    assert len(sleep.waits) == 2


async def test_first_time_success_never_sleeps() -> None:
    sleep = Recorder()
    assert await drive(6, [None], sleep) == (1, "ok")
    assert sleep.waits == []


@pytest.mark.parametrize(
    "error",
    [
        Fatal("invalid_request: bad", status=400),
        AuthRejected("invalid_api_key: no", status=401),
        ValueError("a bug, not a request failure"),
    ],
)
async def test_non_retryable_failures_are_raised_after_one_attempt(error: BaseException) -> None:
    sleep = Recorder()
    attempts = 0
    with pytest.raises(type(error)) as info:
        async for attempt in make_retrying(6, sleep=sleep):
            with attempt:
                attempts += 1
                raise error
    assert info.value is error
    assert attempts == 1
    assert sleep.waits == []


async def test_fatal_after_retryable_stops_at_once() -> None:
    sleep = Recorder()
    fatal = Fatal("not_found: no such model", status=404)
    with pytest.raises(Fatal) as info:
        await drive(6, [Retryable("x", status=503), fatal], sleep)
    assert info.value is fatal
    assert len(sleep.waits) == 1


async def test_controller_waits_by_the_policy() -> None:
    sleep = Recorder()
    with pytest.raises(Retryable):
        await drive(4, [Retryable("rate_limit_exceeded", status=429, retry_after=5)], sleep)
    assert len(sleep.waits) == 3
    assert all(5.0 <= w <= 5.6 for w in sleep.waits)


async def test_controller_backoff_without_retry_after_grows_within_caps() -> None:
    sleep = Recorder()
    for _ in range(50):
        with pytest.raises(Retryable):
            await drive(5, [Retryable("http_500", status=500)], sleep)
    per_run = [sleep.waits[i : i + 4] for i in range(0, len(sleep.waits), 4)]
    assert len(per_run) == 50
    for waits in per_run:
        assert all(0.0 <= w <= 2.0**k for k, w in enumerate(waits))  # before attempt k+2: up to 1, 2, 4, 8 s
    assert max(run[3] for run in per_run) > 4.0  # the fourth wait really can exceed the first's cap


async def test_before_sleep_hook_is_called_once_per_retry() -> None:
    seen: list[int] = []
    attempts = 0
    with pytest.raises(Retryable):
        async for attempt in make_retrying(3, sleep=Recorder(), before_sleep=lambda rs: seen.append(rs.attempt_number)):
            with attempt:
                attempts += 1
                raise Retryable("x", status=500)
    assert attempts == 3
    assert seen == [1, 2]


async def test_each_row_gets_a_fresh_controller() -> None:
    sleep = Recorder()
    for _ in range(3):
        with pytest.raises(Retryable):
            await drive(2, [Retryable("x", status=500)], sleep)
    assert len(sleep.waits) == 3  # one wait per row: attempts are not shared between rows


# ---- time bound (SPEC §8.41) ---------------------------------------------------


class Clock:
    """A fake monotonic clock that the injected sleep (and each attempt) moves forward."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ClockSleep(Recorder):
    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.now += seconds


@pytest.fixture
def real_waits() -> Any:
    """The time bound counts waits as they will really be slept: measure them unscaled."""
    retry.set_testing(False)
    yield
    retry.set_testing(True)


async def bounded_run(
    clock: Clock,
    failure: Retryable,
    *,
    max_attempts: int,
    max_elapsed: float,
    attempt_s: float = 0.0,
    started_at: float | None = None,
    sleep: Recorder | None = None,
) -> tuple[int, BaseException]:
    sleep = sleep or ClockSleep(clock)
    attempts = 0
    with pytest.raises(Retryable) as info:
        async for attempt in make_retrying(
            max_attempts, sleep=sleep, max_elapsed=max_elapsed, started_at=started_at, clock=clock
        ):
            with attempt:
                attempts += 1
                clock.now += attempt_s
                raise failure
    return attempts, info.value


async def test_retries_stop_before_a_wait_that_would_end_past_the_time_bound(real_waits: Any) -> None:
    """A row stops retrying when its next wait would take it past max_elapsed from its first attempt."""
    clock = Clock()
    failure = Retryable("rate_limit_exceeded", status=429, retry_after=4.0)  # waits of 4.0-4.5 s
    attempts, raised = await bounded_run(clock, failure, max_attempts=100, max_elapsed=10.0)
    assert attempts == 3  # at 0, ~4.2, ~8.4; a third wait would end past 10 s
    assert raised is failure  # the last failure itself (reraise=True)
    assert clock.now - 1_000.0 < 10.0


async def test_the_first_attempt_before_the_controller_counts(real_waits: Any) -> None:
    """The runner's first attempt runs before the controller exists: `started_at` puts it on the clock."""
    clock = Clock()
    failure = Retryable("x", status=503, retry_after=4.0)
    attempts, _ = await bounded_run(clock, failure, max_attempts=100, max_elapsed=10.0, started_at=clock.now - 8.0)
    assert attempts == 1


async def test_default_limits_end_a_slow_failing_row_within_the_bound(real_waits: Any) -> None:
    """Defaults (6 attempts, --timeout 300): each attempt times out and each 429 asks for 590 s. Unbounded, that
    row takes 6 x 300 + 5 x 590 s, over an hour; bounded, it ends by 6 x 300 s plus at most its last attempt."""
    clock = Clock()
    failure = Retryable("timeout", status=429, retry_after=590.0)
    started = clock.now
    attempts, _ = await bounded_run(
        clock, failure, max_attempts=6, max_elapsed=6 * 300.0, attempt_s=300.0, started_at=started
    )
    assert attempts < 6
    assert clock.now - started <= 6 * 300.0 + 300.0
    assert clock.now - started < 3600.0


async def test_the_time_bound_does_not_cut_ordinary_backoff_short(real_waits: Any) -> None:
    clock = Clock()
    attempts, _ = await bounded_run(
        clock, Retryable("http_500", status=500), max_attempts=6, max_elapsed=6 * 300.0, attempt_s=1.0
    )
    assert attempts == 6


async def test_test_mode_waits_do_not_count_against_the_bound() -> None:
    """Under set_testing() the runner sleeps 0 s, so the bound sees no wait (a suite with --timeout 0.5 keeps its
    attempts)."""
    clock = Clock()
    failure = Retryable("x", status=429, retry_after=60.0)
    attempts, _ = await bounded_run(clock, failure, max_attempts=4, max_elapsed=1.0, sleep=Recorder())
    assert attempts == 4


def test_a_wait_that_would_end_exactly_at_the_bound_is_not_taken(real_waits: Any) -> None:
    """The documented bound: stop when the next wait would end max_elapsed seconds *or more* after the start."""
    from tenacity import RetryCallState

    stop = retry.stop_before_deadline(10.0, started_at=100.0, clock=lambda: 104.0)
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.upcoming_sleep = 6.0  # ends at 110.0, the bound itself
    assert stop(state) is True
    state.upcoming_sleep = 5.999
    assert stop(state) is False
