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


class WatchedKey(str):
    """A key that counts its lookups once armed: SingleFlight finds a caller's flight by its key,
    so an armed lookup is a caller joining the flight in progress."""

    def __new__(cls, value: str) -> WatchedKey:
        key = super().__new__(cls, value)
        key.armed = False
        key.lookups = threading.Semaphore(0)
        return key

    def __hash__(self) -> int:
        if self.armed:
            self.lookups.release()
        return super().__hash__()


def _run_concurrently(flight: SingleFlight, key: str, gate: Gate) -> list[concurrent.futures.Future]:
    """Start the leader; once every follower has joined its flight, let it finish.

    Followers pass a computation of their own that fails: a follower that ran it instead of
    joining would show ``AssertionError`` instead of the leader's outcome.
    """
    key = WatchedKey(key)

    def not_shared() -> object:
        raise AssertionError("a follower ran its own computation")

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(flight.do, key, gate)]
        assert gate.started.wait(WAIT)
        key.armed = True
        futures += [pool.submit(flight.do, key, not_shared) for _ in range(THREADS - 1)]
        for _ in range(THREADS - 1):
            assert key.lookups.acquire(timeout=WAIT)
        assert not any(future.done() for future in futures)      # everyone waits for the leader
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
