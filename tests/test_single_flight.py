"""SingleFlight: concurrent calls for one key share one computation and its outcome."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from gateway_app.cache import SingleFlight

WAIT = 5.0
THREADS = 8


class Gate:
    """A computation that blocks until released, counting how often it ran."""

    def __init__(self, result: object = "value", error: BaseException | None = None) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.runs = 0
        self._lock = threading.Lock()
        self.result = result
        self.error = error

    def __call__(self) -> object:
        with self._lock:
            self.runs += 1
        self.started.set()
        assert self.release.wait(WAIT)
        if self.error is not None:
            raise self.error
        return self.result


class CountingEvent(threading.Event):
    """The in-flight call's ``done`` event, counting the followers blocked on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Semaphore(0)

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.release()
        return super().wait(timeout)


def _run_concurrently(flight: SingleFlight, key: str, gate: Gate) -> list[concurrent.futures.Future]:
    """Start the leader; once every follower blocks on its call, let it finish."""
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(flight.do, key, gate)]
        assert gate.started.wait(WAIT)
        done = flight._calls[key].done = CountingEvent()     # observe followers joining the flight
        futures += [pool.submit(flight.do, key, gate) for _ in range(THREADS - 1)]
        for _ in range(THREADS - 1):
            assert done.waiting.acquire(timeout=WAIT)
        gate.release.set()
    return futures


def test_concurrent_calls_for_one_key_share_one_computation():
    flight: SingleFlight[str] = SingleFlight()
    gate = Gate(result="shared")
    futures = _run_concurrently(flight, "k", gate)
    assert [f.result() for f in futures] == ["shared"] * THREADS
    assert gate.runs == 1


def test_an_error_reaches_every_waiter():
    flight: SingleFlight[str] = SingleFlight()
    gate = Gate(error=RuntimeError("idp down"))
    futures = _run_concurrently(flight, "k", gate)
    errors = [f.exception() for f in futures]
    assert all(isinstance(e, RuntimeError) and str(e) == "idp down" for e in errors)
    assert gate.runs == 1


def test_a_call_after_completion_computes_again():
    flight: SingleFlight[int] = SingleFlight()
    calls = []
    assert flight.do("k", lambda: calls.append(1) or len(calls)) == 1
    assert flight.do("k", lambda: calls.append(1) or len(calls)) == 2
    assert len(calls) == 2


def test_a_call_after_a_failure_computes_again():
    flight: SingleFlight[str] = SingleFlight()

    def fail() -> str:
        raise ValueError("once")

    with pytest.raises(ValueError):
        flight.do("k", fail)
    assert flight.do("k", lambda: "recovered") == "recovered"


def test_different_keys_do_not_wait_for_each_other():
    flight: SingleFlight[str] = SingleFlight()
    gate = Gate(result="slow")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(flight.do, "a", gate)
        assert gate.started.wait(WAIT)
        assert flight.do("b", lambda: "fast") == "fast"
        gate.release.set()
        assert slow.result(WAIT) == "slow"


def test_a_waiter_past_its_timeout_computes_by_itself():
    flight: SingleFlight[str] = SingleFlight()
    gate = Gate(result="leader")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        leader = pool.submit(flight.do, "k", gate)
        assert gate.started.wait(WAIT)
        assert flight.do("k", lambda: "own", timeout=0.05) == "own"
        gate.release.set()
        assert leader.result(WAIT) == "leader"
