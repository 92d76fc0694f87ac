"""A bound on log lines that clients can cause: each kind of line at most ``burst`` times per window.

The worker's event loop logs one warning per request it refuses or times out (``server_busy``,
``head_too_slow``, an overload shed). Those are caused by clients, so an attacker who opens
thousands of connections a second writes thousands of lines a second (red team 4 F5: 1,600
``server_busy`` lines/s), filling disks and drowning the lines that matter. As nginx's
``limit_req_log_level`` and Envoy's ``ENVOY_LOG_PERIODIC_MISC`` do, each kind of line is
written at most ``burst`` times per ``window`` seconds; the lines left out are counted, and the
count is logged once the window is over, as one line per kind.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import typing as t

DEFAULT_BURST = 20
DEFAULT_WINDOW = 10.0       # seconds


@dataclasses.dataclass
class _Window:
    start: float
    written: int = 0
    left_out: int = 0


class LogThrottle:
    """Which lines of each kind to write: the first ``burst`` in each ``window`` seconds of ``clock``.

    Thread-safe (a worker's loop and its pool threads share one).

    :param burst: lines of one kind written per window (at least 1).
    :param window: the window's length in seconds.
    :param clock: a monotonic clock in seconds (injected in tests).
    :raises ValueError: ``burst`` below 1 or ``window`` not positive.
    """

    def __init__(self, burst: int = DEFAULT_BURST, window: float = DEFAULT_WINDOW,
                 clock: t.Callable[[], float] = time.monotonic) -> None:
        if burst < 1 or not window > 0:
            raise ValueError("a log throttle needs burst >= 1 and a positive window")
        self.burst = burst
        self.window = window
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._untold: dict[str, tuple[int, float]] = {}     # kind: (lines left out, since)
        self._lock = threading.Lock()

    def admit(self, kind: str) -> bool:
        """Whether to write a line of ``kind`` now; one not written is counted (:meth:`left_out`)."""
        with self._lock:
            now = self._clock()
            window = self._windows.get(kind)
            if window is None or now - window.start >= self.window:
                if window is not None:
                    self._close(kind, window)
                window = self._windows[kind] = _Window(now)
            if window.written < self.burst:
                window.written += 1
                return True
            window.left_out += 1
            return False

    def left_out(self) -> list[tuple[str, int, float]]:
        """``(kind, lines left out, over how many seconds)`` for each kind whose lines were left out
        in windows now over; each count is given once. Call it now and then (the worker: each turn
        of its loop) and log each."""
        with self._lock:
            now = self._clock()
            for kind, window in list(self._windows.items()):
                if now - window.start >= self.window:
                    self._close(kind, window)
                    del self._windows[kind]
            told = [(kind, count, now - since) for kind, (count, since) in self._untold.items()]
            self._untold.clear()
            return told

    def _close(self, kind: str, window: _Window) -> None:
        if window.left_out:
            count, since = self._untold.get(kind, (0, window.start))
            self._untold[kind] = (count + window.left_out, since)
