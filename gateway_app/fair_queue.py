"""Fair queuing of the work waiting for a worker's threads: round robin between clients.

A worker has a few threads (gunicorn's ``threads``) and many connections. gunicorn's gthread
worker hands each request to a :class:`concurrent.futures.ThreadPoolExecutor`, whose queue is
first come, first served: one address that keeps hundreds of whole requests in flight (a flood
of bogus tokens, red team 7 ``stall7w``) puts every other client's request behind all of its
own. Here the waiting work is queued per client and served in turns, one item per client with
work waiting, as fair queuing does (Nagle, RFC 970; Demers, Keshav and Shenker's fair queuing,
the round robin of Linux's ``fq`` and ``fq_codel`` qdiscs): a client with one request waits for
at most one request of each other waiting client, however many the flooder queued.
:class:`FairPool` runs the queue on a thread pool, with a reserve of threads that only clients
with nothing running may take, so one client holding every regular thread does not keep the
others waiting.

The key is chosen by the caller (the worker uses :func:`gateway_app.overload.peer_key`: the
IPv4 address or the IPv6 /64). Behind a load balancer every request has the balancer's key,
and the queue is first come, first served again, as before. At its connection limit the worker
takes back the newest work of the key with most waiting (:meth:`FairQueue.shed`), as fq drops
from its longest flow when the queue is full.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import typing as t

K = t.TypeVar("K", bound=t.Hashable)
T = t.TypeVar("T")


class FairQueue(t.Generic[K, T]):
    """Items queued per key, taken in turns: one of each key with items waiting, keys in the order
    they got work, each key's items in the order they came.

    ``push`` and ``pop`` are O(1). Not thread-safe: the caller holds its own lock.
    """

    def __init__(self) -> None:
        self._queues: dict[K, collections.deque[T]] = {}
        self._turns: collections.deque[K] = collections.deque()   # keys with items, next turn first
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, key: K, item: T) -> None:
        """Queue ``item`` after ``key``'s other items; a key with none joins the end of the turns."""
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = collections.deque()
            self._turns.append(key)
        queue.append(item)
        self._size += 1

    def pop(self, eligible: t.Callable[[K], bool] | None = None) -> T:
        """The next key's oldest item; the key goes to the end of the turns if it has more. With
        ``eligible``, the next key for which it is true: the keys passed over go to the end of the
        turns (O(keys) then).

        :raises IndexError: nothing is queued, or no key is eligible.
        """
        if eligible is not None:
            for _ in range(len(self._turns)):
                if eligible(self._turns[0]):
                    break
                self._turns.rotate(-1)
            else:
                raise IndexError("no eligible key")
        key = self._turns.popleft()
        queue = self._queues[key]
        item = queue.popleft()
        if queue:
            self._turns.append(key)
        else:
            del self._queues[key]
        self._size -= 1
        return item

    def shed(self, count: int, floor: int) -> list[T]:
        """Take up to ``count`` items back, each the newest of the key with most items, while that key
        has more than ``floor`` (so no key is emptied, and keys at or under the floor keep all).

        O(``count`` x keys): for a worker at its connection limit, a few dozen per run.
        """
        taken: list[T] = []
        while len(taken) < count and self._queues:
            key, queue = max(self._queues.items(), key=lambda entry: len(entry[1]))
            if len(queue) <= floor:
                break
            taken.append(queue.pop())
            self._size -= 1
        return taken

    def counts(self) -> t.Iterator[tuple[K, int]]:
        """``(key, items waiting)`` for each key with items waiting."""
        return ((key, len(queue)) for key, queue in self._queues.items())

    def queued(self, key: K) -> int:
        """How many items ``key`` has waiting."""
        queue = self._queues.get(key)
        return len(queue) if queue is not None else 0


class Outcome:
    """What one item's ``run`` returned or raised, read as a finished :class:`concurrent.futures.Future`
    is (``result``, ``exception``, ``cancelled``, ``done``: what gthread's ``finish_request``
    reads), without the lock and condition a future makes for waiters, which nobody is here
    (a few microseconds per request)."""

    __slots__ = ("_result", "_exception")

    def __init__(self, result: t.Any = None, exception: BaseException | None = None) -> None:
        self._result = result
        self._exception = exception

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._exception

    def result(self, timeout: float | None = None) -> t.Any:
        """What ``run`` returned. :raises BaseException: what it raised."""
        if self._exception is not None:
            raise self._exception
        return self._result


class _Work(t.NamedTuple):
    key: t.Hashable
    run: t.Callable[[], t.Any]                 # in a pool thread
    done: t.Callable[[Outcome], None]          # given to ``deliver`` with the outcome
    shed: t.Callable[[], None]                 # instead of both, when taken back before it ran


class FairPool:
    """Work run on the threads of ``executor`` in turns between clients (:class:`FairQueue`): up to
    ``threads`` items at once whoever's they are, and ``reserve`` more, each for a client that
    has nothing running.

    ``deliver(done, outcome)`` hands each :class:`Outcome` back (the worker: to its event loop). At most
    ``threads + reserve`` runners take from the queue (``executor`` must have that many
    threads); a runner takes the next item as soon as it is done with one, so a busy pool costs
    no extra hand-off per item, and a runner that ends a client's work looks again, so work
    held back runs as soon as it may. One client may use every regular thread, so a single
    address (or a load balancer) saturating the gateway gets all of it; when the regular
    threads are all taken, the reserve serves other clients at once, one request each: a
    client's requests to a slow upstream that hold every regular thread (red team 9 F2: 8 of 8
    on the demo, for 10 s) do not keep anyone else waiting for them. As a pool cannot take a
    thread back, the reserve is how a thread is kept free for the next client without leaving
    it idle while one client has work (Linux's ``min_free_kbytes`` keeps pages the same way).
    Thread-safe.
    """

    def __init__(self, executor: concurrent.futures.Executor, threads: int, reserve: int,
                 deliver: t.Callable[[t.Callable[[Outcome], None], Outcome], None]) -> None:
        self._executor = executor
        self.threads = threads
        self.reserve = reserve
        self._deliver = deliver
        self._queue: FairQueue[t.Hashable, _Work] = FairQueue()
        self._running: collections.Counter[t.Hashable] = collections.Counter()
        self._total = 0
        self._runners = 0
        self._lock = threading.Lock()

    def submit(self, key: t.Hashable, run: t.Callable[[], t.Any],
               done: t.Callable[[Outcome], None], shed: t.Callable[[], None]) -> None:
        """Queue ``run`` for ``key``; its :class:`Outcome` goes to ``deliver(done, outcome)``."""
        with self._lock:
            self._queue.push(key, _Work(key, run, done, shed))
            if not self._needs_runner(key):
                return
            self._runners += 1
        self._executor.submit(self._run_queued)

    def shed(self, count: int, floor: int) -> int:
        """Take back up to ``count`` items not started, each the newest of the key with most waiting,
        while it has more than ``floor`` (:meth:`FairQueue.shed`), and call their ``shed``; how many."""
        with self._lock:
            taken = self._queue.shed(count, floor)
        for work in taken:
            work.shed()
        return len(taken)

    def running(self, key: t.Hashable) -> int:
        """Threads ``key``'s work holds now."""
        with self._lock:
            return self._running[key]

    def load(self) -> collections.Counter[t.Hashable]:
        """Items per key, waiting or running."""
        with self._lock:
            load = collections.Counter(self._running)
            for key, count in self._queue.counts():
                load[key] += count
            return load

    def waiting(self) -> int:
        """Items not started."""
        with self._lock:
            return len(self._queue)

    def _needs_runner(self, key: t.Hashable) -> bool:
        """Whether work just queued for ``key`` wants another runner: a regular one is not running,
        or a reserve one is not and ``key`` has nothing running (else a runner would start only to
        find nothing it may run, at each request of a client that holds every regular thread)."""
        if self._runners < self.threads:
            return True
        return self._runners < self.threads + self.reserve and not self._running[key]

    def _may_run(self, key: t.Hashable) -> bool:
        """A regular thread is free, or a reserve one is and ``key`` has nothing running."""
        if self._total < self.threads:
            return True
        return self._total < self.threads + self.reserve and not self._running[key]

    def _run_queued(self) -> None:
        """In a pool thread: run queued work until none is left that may run."""
        while True:
            with self._lock:
                try:
                    work = self._queue.pop(self._may_run)
                except IndexError:
                    self._runners -= 1
                    return
                self._running[work.key] += 1
                self._total += 1
            try:
                outcome = Outcome(work.run())
            except BaseException as exc:     # as the executor's work item does: the caller sees it
                outcome = Outcome(exception=exc)
            finally:
                with self._lock:
                    self._running[work.key] -= 1
                    self._total -= 1
                    if not self._running[work.key]:
                        del self._running[work.key]
            self._deliver(work.done, outcome)
