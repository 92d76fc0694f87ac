"""The pool's queue takes work in turns between clients (gateway_app.fair_queue)."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
import typing as t

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from gateway_app.fair_queue import FairPool
from gateway_app.fair_queue import FairQueue


def test_one_key_is_first_come_first_served():
    queue: FairQueue[str, int] = FairQueue()
    for item in range(5):
        queue.push("a", item)
    assert [queue.pop() for _ in range(5)] == [0, 1, 2, 3, 4]


def test_a_key_with_one_item_waits_for_at_most_one_item_of_each_other_key():
    queue: FairQueue[str, str] = FairQueue()
    for n in range(100):
        queue.push("flood", f"f{n}")
    queue.push("other", "o")
    assert [queue.pop() for _ in range(2)] == ["f0", "o"]
    assert len(queue) == 99 and queue.queued("flood") == 99 and queue.queued("other") == 0


def test_keys_take_turns_in_the_order_they_got_work():
    queue: FairQueue[str, str] = FairQueue()
    for item in ["a1", "a2", "a3"]:
        queue.push("a", item)
    for item in ["b1", "b2"]:
        queue.push("b", item)
    queue.push("c", "c1")
    assert [queue.pop() for _ in range(6)] == ["a1", "b1", "c1", "a2", "b2", "a3"]


def test_pop_passes_over_keys_that_are_not_eligible_to_the_end_of_the_turns():
    queue: FairQueue[str, str] = FairQueue()
    for key in "abc":
        queue.push(key, key + "1")
        queue.push(key, key + "2")
    assert queue.pop(lambda key: key != "a") == "b1"
    assert queue.pop() == "c1"                              # a was passed over: it goes after b
    assert queue.pop() == "a1"
    with pytest.raises(IndexError):
        queue.pop(lambda key: False)
    assert len(queue) == 3


def test_an_empty_queue_raises_index_error():
    queue: FairQueue[str, int] = FairQueue()
    with pytest.raises(IndexError):
        queue.pop()
    queue.push("a", 1)
    queue.pop()
    with pytest.raises(IndexError):
        queue.pop()


@given(st.lists(st.one_of(st.tuples(st.sampled_from("abcd"), st.integers()), st.none()), max_size=200))
def test_every_item_comes_out_once_each_keys_in_order_and_no_key_waits_more_than_a_round(operations):
    """Pushes (key, item) and pops (None) in any order: nothing lost or duplicated, each key's items
    in their order, and between two items of a key with work waiting, at most one item of each
    other key."""
    queue: FairQueue[str, tuple[str, int, int]] = FairQueue()
    pushed: list[tuple[str, int, int]] = []
    popped: list[tuple[str, int, int]] = []
    since: dict[str, collections.Counter] = {}      # per waiting key: pops of other keys since its turn

    def pop() -> None:
        item = queue.pop()
        popped.append(item)
        for key, others in since.items():
            if key != item[0] and queue.queued(key):
                assert others[item[0]] == 0, f"{item[0]} served twice while {key} waited"
                others[item[0]] += 1
        since[item[0]] = collections.Counter()

    for number, operation in enumerate(operations):
        if operation is None:
            if len(queue):
                pop()
            continue
        key, value = operation
        item = (key, value, number)
        pushed.append(item)
        if not queue.queued(key):
            since[key] = collections.Counter()
        queue.push(key, item)
    while len(queue):
        pop()
    assert sorted(popped, key=lambda item: item[2]) == pushed
    for key in "abcd":
        assert [item for item in popped if item[0] == key] == [item for item in pushed if item[0] == key]


def test_shed_takes_the_newest_items_of_the_key_with_most_and_keeps_its_floor():
    queue: FairQueue[str, str] = FairQueue()
    for n in range(12):
        queue.push("flood", f"f{n}")
    for n in range(3):
        queue.push("other", f"o{n}")
    assert queue.shed(10, floor=8) == ["f11", "f10", "f9", "f8"]       # down to the floor, no further
    assert queue.queued("flood") == 8 and queue.queued("other") == 3 and len(queue) == 11
    assert queue.shed(5, floor=2) == ["f7", "f6", "f5", "f4", "f3"]     # the longest first, one at a time
    assert queue.shed(3, floor=2) == ["f2", "o2"]                        # both at the floor: stop
    assert [queue.pop() for _ in range(len(queue))] == ["f0", "o0", "f1", "o1"]


def test_shed_takes_nothing_when_no_key_has_more_than_the_floor():
    queue: FairQueue[str, int] = FairQueue()
    for key in "abc":
        queue.push(key, 1)
    assert queue.shed(5, floor=1) == [] and len(queue) == 3


# -- FairPool: the queue on a thread pool ------------------------------------------------------------

class Outcomes:
    """``deliver`` for a FairPool: each outcome, at once, in the pool's thread."""

    def __init__(self) -> None:
        self.results: list[object] = []
        self.lock = threading.Lock()

    def __call__(self, done, future) -> None:
        with self.lock:
            self.results.append(future.exception() or future.result())
        done(future)


@pytest.fixture
def executor():
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        yield pool


def blocked(gate: threading.Event, started: threading.Semaphore, value: object):
    def run():
        started.release()
        assert gate.wait(5)
        return value
    return run


def test_one_client_may_hold_every_regular_thread_and_the_reserve_serves_other_clients_one_request_each():
    """Red team 9 F2: one address's slow requests held every thread, and nobody else was answered.
    A single client still gets every regular thread; the reserve is for the others."""
    outcomes, gate, started = Outcomes(), threading.Event(), threading.Semaphore(0)
    executor = concurrent.futures.ThreadPoolExecutor(5)
    pool = FairPool(executor, threads=4, reserve=1, deliver=outcomes)
    try:
        for n in range(6):
            pool.submit("flood", blocked(gate, started, f"f{n}"), lambda future: None, lambda: None)
        for _ in range(4):
            assert started.acquire(timeout=5)
        assert not started.acquire(timeout=0.2) and pool.running("flood") == 4 and pool.waiting() == 2
        assert pool.load() == {"flood": 6}
        pool.submit("other", blocked(gate, started, "o1"), lambda future: None, lambda: None)
        pool.submit("other", blocked(gate, started, "o2"), lambda future: None, lambda: None)
        pool.submit("third", blocked(gate, started, "t"), lambda future: None, lambda: None)
        assert started.acquire(timeout=5) and pool.running("other") == 1
        assert not started.acquire(timeout=0.2)                  # the reserve: one request, one client
        assert pool.running("other") == 1 and pool.running("third") == 0 and pool.running("flood") == 4
    finally:
        gate.set()
    executor.shutdown(wait=True)
    assert sorted(outcomes.results) == ["f0", "f1", "f2", "f3", "f4", "f5", "o1", "o2", "t"]
    assert pool.waiting() == 0 and pool.running("flood") == 0


def test_when_a_regular_thread_frees_up_a_waiting_client_with_nothing_running_goes_first():
    """With every thread taken, an ended request of the flood lets the next client in, not the flood."""
    outcomes, started = Outcomes(), threading.Semaphore(0)
    gates = {name: threading.Event() for name in ("f0", "f1", "f2", "f3", "o", "t")}
    executor = concurrent.futures.ThreadPoolExecutor(5)
    pool = FairPool(executor, threads=4, reserve=1, deliver=outcomes)
    try:
        for n in range(4):
            pool.submit("flood", blocked(gates[f"f{n}"], started, f"f{n}"), lambda future: None, lambda: None)
        pool.submit("other", blocked(gates["o"], started, "o"), lambda future: None, lambda: None)
        for _ in range(5):
            assert started.acquire(timeout=5)
        pool.submit("flood", lambda: "f4", lambda future: None, lambda: None)
        pool.submit("third", blocked(gates["t"], started, "t"), lambda future: None, lambda: None)
        gates["f0"].set()
        assert started.acquire(timeout=5) and pool.running("third") == 1
        assert pool.running("flood") == 3 and pool.waiting() == 1
    finally:
        for gate in gates.values():
            gate.set()
    executor.shutdown(wait=True)
    assert sorted(outcomes.results) == ["f0", "f1", "f2", "f3", "f4", "o", "t"]


def test_work_taken_back_is_shed_and_never_runs_and_failures_reach_done(executor):
    outcomes, gate, started = Outcomes(), threading.Event(), threading.Semaphore(0)
    pool = FairPool(executor, threads=1, reserve=0, deliver=outcomes)
    shed: list[int] = []
    try:
        pool.submit("a", blocked(gate, started, "first"), lambda future: None, lambda: shed.append(-1))
        assert started.acquire(timeout=5)
        for n in range(5):
            pool.submit("a", lambda n=n: n, lambda future: None, lambda n=n: shed.append(n))
        assert pool.shed(10, floor=2) == 3 and shed == [4, 3, 2]
        pool.submit("b", lambda: 1 / 0, lambda future: None, lambda: None)
    finally:
        gate.set()
    executor.shutdown(wait=True)
    assert sorted(str(result) for result in outcomes.results) == sorted(["first", "0", "1", "division by zero"])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 3)), min_size=1, max_size=40),
       st.integers(1, 4), st.integers(0, 2))
def test_every_item_runs_once_within_threads_plus_reserve_and_the_reserve_only_for_keys_with_nothing_running(
        items, threads, reserve):
    """Whatever arrives: every item runs once (no runner missing: a key whose work may run is never
    left waiting), never more than ``threads + reserve`` at once, and beyond ``threads`` only an
    item whose key had nothing else running."""
    outcomes, lock = Outcomes(), threading.Lock()
    running: collections.Counter[str] = collections.Counter()
    violations: list[str] = []

    def work(key: str, ticks: int, number: int) -> t.Callable[[], int]:
        def run() -> int:
            with lock:
                running[key] += 1
                total = sum(running.values())
                if total > threads + reserve or (total > threads and running[key] > 1):
                    violations.append(f"{dict(running)} at {key}")
            time.sleep(ticks * 0.001)
            with lock:
                running[key] -= 1
            return number
        return run

    executor = concurrent.futures.ThreadPoolExecutor(threads + reserve)
    pool = FairPool(executor, threads=threads, reserve=reserve, deliver=outcomes)
    for number, (key, ticks) in enumerate(items):
        pool.submit(key, work(key, ticks, number), lambda outcome: None, lambda: None)
    deadline = time.monotonic() + 10
    while len(outcomes.results) < len(items) and time.monotonic() < deadline:
        time.sleep(0.005)
    executor.shutdown(wait=True)
    assert sorted(outcomes.results) == list(range(len(items)))
    assert violations == [] and pool.waiting() == 0
