"""The bound on client-caused log lines (gateway_app.log_throttle)."""

from __future__ import annotations

import pytest

from gateway_app.log_throttle import LogThrottle
from tests.support.clocks import FakeClock


def admitted(throttle: LogThrottle, kind: str, lines: int) -> int:
    return sum(throttle.admit(kind) for _ in range(lines))


def test_each_kind_is_written_at_most_burst_times_per_window():
    clock = FakeClock(0.0)
    throttle = LogThrottle(burst=3, window=10.0, clock=clock)
    assert admitted(throttle, "server_busy", 1000) == 3
    assert admitted(throttle, "head_too_slow", 5) == 3          # kinds are counted apart
    clock.advance(9.9)
    assert admitted(throttle, "server_busy", 10) == 0
    clock.advance(0.1)
    assert admitted(throttle, "server_busy", 10) == 3


def test_the_lines_left_out_are_told_once_when_their_window_is_over():
    clock = FakeClock(0.0)
    throttle = LogThrottle(burst=2, window=10.0, clock=clock)
    admitted(throttle, "server_busy", 1602)
    admitted(throttle, "overload", 2)
    assert throttle.left_out() == []                             # the window is not over
    clock.advance(10.0)
    assert throttle.left_out() == [("server_busy", 1600, 10.0)]
    assert throttle.left_out() == []


def test_lines_left_out_in_windows_ended_by_a_new_line_are_still_told():
    clock = FakeClock(0.0)
    throttle = LogThrottle(burst=1, window=1.0, clock=clock)
    admitted(throttle, "server_busy", 5)
    clock.advance(1.5)
    assert throttle.admit("server_busy")                         # a new window; 4 left out before
    admitted(throttle, "server_busy", 2)
    clock.advance(1.0)
    assert throttle.left_out() == [("server_busy", 6, 2.5)]


@pytest.mark.parametrize("burst,window", [(0, 10.0), (5, 0.0), (5, float("nan"))])
def test_a_throttle_without_room_or_window_is_refused(burst, window):
    with pytest.raises(ValueError):
        LogThrottle(burst=burst, window=window)
