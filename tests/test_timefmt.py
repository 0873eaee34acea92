"""Durations read as minutes and seconds; the parts always add back up to the rounded total."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.timefmt import format_duration


@pytest.mark.parametrize("seconds, expected", [
    (0, "0.0 s"), (4.24, "4.2 s"), (59.94, "59.9 s"), (59.96, "1 min 0 s"), (60, "1 min 0 s"),
    (2296.4, "38 min 16 s"), (3599.4, "59 min 59 s"), (3599.6, "1 h 0 min"), (7325, "2 h 2 min"),
    (90061, "25 h 1 min"),
])
def test_examples(seconds, expected):
    assert format_duration(seconds) == expected


@given(st.floats(min_value=59.95, max_value=3599.49))
def test_minutes_and_seconds_add_up(seconds):
    m = re.fullmatch(r"(\d+) min (\d+) s", format_duration(seconds))
    assert m is not None and int(m[2]) < 60
    assert int(m[1]) * 60 + int(m[2]) == round(seconds)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_refuses_what_is_not_a_duration(bad):
    with pytest.raises(ValueError, match="not a duration"):
        format_duration(bad)
