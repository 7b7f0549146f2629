"""Reading a duration: ``90s``, ``1m30s``, ``6m0s``, ``20ms``, ``1h30m``, ``2d``, or a bare number of seconds.

One language for every duration inferbatch reads, so a value means the same wherever it is written: a
job file's or the command line's ``--deadline`` and ``--max-wait`` (:func:`inferbatch.config.parse_duration`,
which refuses what this cannot read) and a server's ``x-ratelimit-reset-*`` header
(:func:`inferbatch.limits.parse_reset`, which also reads absolute times there).

A duration is one or more ``<number><unit>`` parts written together, summed; units ``ms``, ``s``, ``m``,
``h`` and ``d``. Surrounding whitespace is ignored, any other is not: ``1h 30m`` and ``9 minutes`` are not
durations.
"""

from __future__ import annotations

import re

__all__ = ["UNIT_SECONDS", "duration_seconds"]

UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def duration_seconds(text: str | float) -> float | None:
    """``9m`` → 540.0, ``1h30m`` → 5400.0, ``20ms`` → 0.02, ``2.5`` → 2.5; None if ``text`` is no duration.

    Values are not judged here: a bare ``inf``, ``nan`` or ``-5`` comes back as it is, and a number too large
    for a float makes inf. Each caller refuses what it cannot use.
    """
    if isinstance(text, (int, float)):
        return float(text)
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * UNIT_SECONDS[unit] for number, unit in parts)
