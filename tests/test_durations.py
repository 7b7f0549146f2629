"""The one duration language (inferbatch.durations): --deadline, --max-wait and x-ratelimit-reset-* read alike."""

from __future__ import annotations

import math

import pytest

from inferbatch.config import parse_duration
from inferbatch.durations import duration_seconds
from inferbatch.errors import ConfigError
from inferbatch.limits import parse_reset


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("9m", 540.0),
        ("23h", 82_800.0),
        ("1h30m", 5_400.0),
        ("90s", 90.0),
        ("20ms", 0.02),
        ("6m0s", 360.0),
        ("1m30s", 90.0),
        ("2m30.5s", 150.5),
        ("1.5s", 1.5),
        ("2d", 172_800.0),
        ("45", 45.0),
        ("2.5", 2.5),
        (" 10s ", 10.0),
        (30, 30.0),
        (2.5, 2.5),
    ],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "9 minutes", "1h 30m", "m", "9x", "1h30", "h1", "9m junk", "-5s", "s"])
def test_what_is_no_duration_is_none(text: str) -> None:
    assert duration_seconds(text) is None


def test_values_are_not_judged_here() -> None:
    """Callers refuse what they cannot use: config refuses inf and nan, parse_reset also negative numbers."""
    assert duration_seconds("-5") == -5.0
    assert duration_seconds("inf") == math.inf
    assert math.isnan(duration_seconds("nan") or 0.0)
    assert duration_seconds("9" * 400 + "s") == math.inf


@pytest.mark.parametrize(
    "text", ["90s", "1m30s", "6m0s", "20ms", "1h2m3s", "2d", "2.5", "0s", " 10s ", "soon", "1h 30m", "9x", "m5", "1.5h"]
)
def test_config_and_reset_headers_read_durations_alike(text: str) -> None:
    """A duration in a job file and in a server's reset header means the same number of seconds."""
    seconds = duration_seconds(text)
    assert parse_reset(text) == seconds
    if seconds is None:
        with pytest.raises(ConfigError):
            parse_duration(text)
    else:
        assert parse_duration(text) == seconds
