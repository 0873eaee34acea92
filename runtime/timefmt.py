"""Durations for people: "38 min 16 s" reads at a glance where "2296.4 s" needs arithmetic."""

from __future__ import annotations

import math


def format_duration(seconds: float) -> str:
    """Under a minute with a tenth of a second ("4.2 s"); then whole minutes and seconds ("38 min 16 s"); from an
    hour on, hours and minutes ("2 h 5 min"): the finer digits stop mattering as the total grows."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {seconds!r} s")
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min"
