"""Fair queuing of the work waiting for a worker's threads: round robin between clients.

A worker has a few threads (gunicorn's ``threads``) and many connections. gunicorn's gthread
worker hands each request to a :class:`concurrent.futures.ThreadPoolExecutor`, whose queue is
first come, first served: one address that keeps hundreds of whole requests in flight (a flood
of bogus tokens, red team 7 ``stall7w``) puts every other client's request behind all of its
own. Here the waiting work is queued per client and served in turns, one item per client with
work waiting, as fair queuing does (Nagle, RFC 970; Demers, Keshav and Shenker's fair queuing,
the round robin of Linux's ``fq`` and ``fq_codel`` qdiscs): a client with one request waits for
at most one request of each other waiting client, however many the flooder queued.

The key is chosen by the caller (the worker uses :func:`gateway_app.worker.peer_key`: the
IPv4 address or the IPv6 /64). Behind a load balancer every request has the balancer's key,
and the queue is first come, first served again, as before. At its connection limit the worker
takes back the newest work of the key with most waiting (:meth:`FairQueue.shed`), as fq drops
from its longest flow when the queue is full.
"""

from __future__ import annotations

import collections
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

    def queued(self, key: K) -> int:
        """How many items ``key`` has waiting."""
        queue = self._queues.get(key)
        return len(queue) if queue is not None else 0
