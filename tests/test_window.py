"""The sliding window the limiter and the simulator share (inferbatch.window), on a fake clock."""

from __future__ import annotations

import pytest

from inferbatch.simulator import _Window
from inferbatch.window import SlidingWindow


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def window(length: float = 60.0, now: float = 0.0) -> tuple[SlidingWindow, FakeClock]:
    clock = FakeClock(now)
    return SlidingWindow(length, clock), clock


def test_an_entry_counts_until_exactly_length_seconds_later() -> None:
    w, clock = window(10.0)
    w.add(5)
    clock.now = 9.999
    assert (w.count(), w.used()) == (1, 5.0)
    clock.now = 10.0  # at time + length it has left
    assert (w.count(), w.used()) == (0, 0.0)


def test_counting_requests_waits_for_the_oldest_of_the_last_limit_to_leave() -> None:
    """rpm 3: a fourth request waits until the first leaves; a fifth, until the second does."""
    w, clock = window(60.0)
    for t in (0.0, 10.0, 20.0):
        clock.now = t
        assert w.wait(1, 3) == 0.0
        w.add(1)
    clock.now = 30.0
    assert w.wait(1, 3) == pytest.approx(30.0)  # the entry at 0 leaves at 60
    assert w.wait(1, 2) == pytest.approx(40.0)  # with room for two, the one at 10 must leave too
    clock.now = 60.0
    assert w.wait(1, 3) == 0.0


def test_amounts_wait_until_enough_has_left() -> None:
    w, clock = window(60.0)
    for t, amount in ((0.0, 400), (5.0, 300), (10.0, 200)):
        clock.now = t
        w.add(amount)
    clock.now = 20.0
    assert w.used() == 900.0
    assert w.wait(100, 1_000) == 0.0  # 900 + 100 fits exactly
    assert w.wait(101, 1_000) == pytest.approx(40.0)  # the 400 at 0 must leave (at 60)
    assert w.wait(600, 1_000) == pytest.approx(45.0)  # 400 is not enough: the 300 at 5 too (at 65)
    assert w.wait(1_000, 1_000) == pytest.approx(50.0)  # everything


def test_an_amount_over_the_limit_alone_fits_an_empty_window_and_otherwise_waits_for_it_to_empty() -> None:
    """So the limiter cannot wait forever for a request bigger than a minute's tokens."""
    w, clock = window(60.0)
    assert w.wait(5_000, 1_000) == 0.0
    w.add(5_000)
    w.add(10)
    clock.now = 30.0
    w.add(10)
    assert w.wait(5_000, 1_000) == pytest.approx(60.0)  # until the newest entry (at 30) leaves
    clock.now = 90.0
    assert w.wait(5_000, 1_000) == 0.0


def test_settle_corrects_an_estimate_while_it_counts() -> None:
    w, clock = window(60.0)
    estimate = w.add(500)
    w.add(100)
    clock.now = 30.0
    w.settle(estimate, 120)
    assert w.used() == 220.0
    assert estimate == [0.0, 120.0]
    clock.now = 60.0
    assert w.used() == 0.0


def test_settle_of_an_entry_that_already_left_changes_nothing_counted() -> None:
    w, clock = window(60.0)
    entry = w.add(500)
    clock.now = 61.0
    w.add(7)  # the entry at 0 leaves here
    w.settle(entry, 50)
    assert w.used() == 7.0
    assert entry[1] == 50.0


def test_an_explicit_now_wins_over_the_clock() -> None:
    """The limiter decides for a given ``now`` (``Limiter.poll(cost, now)``), whatever its clock says."""
    w, _ = window(10.0, now=1_000.0)
    w.add(1, now=0.0)
    assert w.count(now=5.0) == 1
    assert w.oldest_leaves_in(now=5.0) == pytest.approx(5.0)
    assert w.count() == 0  # by the clock, long gone
    assert w.oldest_leaves_in() is None


def test_the_window_forgets_what_left_on_every_add() -> None:
    """Memory stays bounded even when nobody asks ``wait()``: a long run adds without limits in force."""
    w, clock = window(100.0)
    for i in range(10_000):
        clock.now = float(i)
        w.add(1)
    assert len(w.entries) == 100
    assert w.total == 100.0


# ---- the simulator's rule on top of it ----------------------------------------------------------------


def test_simulator_admits_within_rpm_and_says_when_the_next_fits() -> None:
    sim = _Window(rpm=2, tpm=100, length=10.0)
    assert sim.admit(30, 0.0) is None
    assert sim.admit(30, 1.0) is None
    assert sim.admit(30, 2.0) == pytest.approx(8.0)  # the request at 0 leaves at 10
    assert sim.admit(30, 10.0) is None
    headers = sim.headers(10.5)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-remaining-tokens"] == "40"
    assert headers["x-ratelimit-reset-requests"] == headers["x-ratelimit-reset-tokens"] == "500ms"  # at 11


def test_simulator_admits_within_tpm_and_says_when_the_next_fits() -> None:
    sim = _Window(rpm=None, tpm=100, length=10.0)
    assert sim.admit(60, 0.0) is None
    assert sim.admit(30, 1.0) is None
    assert sim.admit(50, 2.0) == pytest.approx(8.0)  # 90 + 50 > 100 until the 60 at 0 leaves
    assert sim.admit(10, 2.0) is None  # 100 fits exactly
    assert "x-ratelimit-limit-requests" not in sim.headers(2.0)


def test_simulator_never_admits_a_request_over_a_limit_on_its_own() -> None:
    """The server's rule, unlike the client's: too big for the limit is a 429 even into an empty window."""
    assert _Window(rpm=None, tpm=100, length=10.0).admit(101, 0.0) == pytest.approx(10.0)
    assert _Window(rpm=0, tpm=None, length=10.0).admit(1, 0.0) == pytest.approx(10.0)


def test_simulator_headers_of_an_empty_window() -> None:
    expected = {"x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "5"}
    expected["x-ratelimit-reset-requests"] = "0s"
    assert _Window(rpm=5, tpm=None, length=60.0).headers(0.0) == expected


def test_settling_an_entry_that_aged_out_leaves_the_total_right() -> None:
    """A request slower than the window (60 s under --tpm) is settled after its entry left the window."""
    window = SlidingWindow(60.0, clock=lambda: 0.0)
    first = window.add(100, now=0.0)
    window.add(50, now=30.0)
    window.settle(first, 10, now=61.0)
    window.add(5, now=62.0)
    assert window.used(now=62.0) == 55


def test_wait_and_the_oldest_entry_see_the_window_as_it_is_now_not_as_it_was() -> None:
    """Entries that aged out are gone for ``wait`` and ``oldest_leaves_in`` too, without a call in between."""
    w, clock = window(10.0)
    w.add(8)
    clock.now = 5.0
    w.add(1)
    clock.now = 12.0  # the first entry left at t=10; only the 1 from t=5 counts
    assert w.oldest_leaves_in() == 3.0
    assert w.wait(5, limit=6) == 0.0
