"""How numbers are written for people: a band of values over seeds, a duration."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def band(mean: float, low: float, high: float, digits: str = ".4f") -> str:
    """``mean [low, high]``, each with ``digits``."""
    return f"{mean:{digits}} [{low:{digits}}, {high:{digits}}]"


def band_of(values: Sequence[float], digits: str = ".4f", collapse: bool = False) -> str:
    """``mean [min, max]`` of ``values``, ``-`` if there are none; with ``collapse``, one
    value when all are equal (one seed, or all alike)."""
    if not values:
        return "-"
    low, high = min(values), max(values)
    if collapse and low == high:
        return f"{low:{digits}}"
    return band(statistics.fmean(values), low, high, digits)


def duration(seconds: float) -> str:
    """``1 h 2 min 3 s``, leading zero units left out (``2 min 5 s``, ``7 s``)."""
    h, rest = divmod(round(seconds), 3600)
    parts = [(h, "h"), (rest // 60, "min"), (rest % 60, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{v} {unit}" for v, unit in parts)
