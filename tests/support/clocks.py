"""A clock the test moves by hand, for every ``clock=`` seam of gateway_app.

The gateway takes its clocks as callables (``time.time`` for token times and cache deadlines,
``time.monotonic`` for JWKS pacing and Redis back-off, microseconds for the rate limiter), so a
test passes a :class:`FakeClock` instead and moves it past an expiry without sleeping.
"""

from __future__ import annotations

EPOCH = 1_700_000_000.0      # 2023-11-14T22:13:20Z: a plausible "now" for token times


class FakeClock:
    """``clock() -> now``; only :meth:`advance` (or assigning ``now``) moves it.

    The unit is the one the code under test reads: seconds for ``time.time``/``time.monotonic``
    stand-ins, microseconds for the rate limiter's clock.
    """

    def __init__(self, now: float = EPOCH) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, amount: float) -> None:
        """Move the clock forward by ``amount`` (in the clock's unit)."""
        self.now += amount
