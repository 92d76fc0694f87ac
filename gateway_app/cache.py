"""Bounded, thread-safe caches for token state, keyed by hashes, never by raw tokens.

An entry lives until the deadline it was stored with; a hit never extends it.
:class:`SingleFlight` makes concurrent misses for one key share one computation.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
import typing as t

V = t.TypeVar("V")


def hash_key(*parts: str | bytes) -> str:
    """A SHA-256 hex digest of the parts, unambiguously joined."""
    if len(parts) == 1 and isinstance(parts[0], str) and parts[0].isascii():
        return hashlib.sha256(b"\x01" + parts[0].encode()).hexdigest()   # one part: no length prefix needed
    digest = hashlib.sha256()
    for part in parts:
        _update(digest, part)
    return digest.hexdigest()


class KeyHasher:
    """``hash_key(*prefix, part)`` for a fixed prefix: the prefix is hashed once, then copied."""

    def __init__(self, *prefix: str | bytes) -> None:
        if not prefix:
            raise ValueError("KeyHasher needs a prefix (hash_key treats a single part differently)")
        self._prefix = hashlib.sha256()
        for part in prefix:
            _update(self._prefix, part)

    def __call__(self, part: str | bytes) -> str:
        digest = self._prefix.copy()
        _update(digest, part)
        return digest.hexdigest()


def _update(digest: t.Any, part: str | bytes) -> None:
    data = part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part
    digest.update(len(data).to_bytes(8, "big"))
    digest.update(data)


class CacheBackend(t.Protocol):
    """Where token state is kept: :class:`TTLCache` in memory, or Redis (``cache_redis``).

    A ``get`` that misses may make the caller the leader of a cross-process flight for the
    key (Redis); the caller ends it with ``set`` or, when it stores nothing, ``release``.
    ``peek`` looks in memory only (no I/O, no flight).
    """

    def get(self, key: str) -> dict[str, t.Any] | None:
        """The live entry for ``key``, or None (and maybe the lead of the key's flight)."""

    def peek(self, key: str) -> dict[str, t.Any] | None:
        """The entry when it is at hand in memory, without I/O or a flight."""

    def set(self, key: str, value: dict[str, t.Any], ttl: float) -> None:
        """Keep ``value`` for ``ttl`` seconds (and end the key's flight)."""

    def release(self, key: str) -> None:
        """End the key's flight without storing anything."""


class TTLCache(t.Generic[V]):
    """An LRU-bounded map whose entries expire at absolute deadlines.

    ``max_entries``: the bound (least recently used entries go first); ``clock``: seconds, the
    time deadlines are read against (monotonic by default). Hits and misses are counted by the
    callers that care, in the metrics (:class:`gateway_app.metrics.IdpMetrics`).

    :raises ValueError: ``max_entries`` below 1.
    """

    def __init__(self, max_entries: int = 10_000, clock: t.Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: collections.OrderedDict[str, tuple[float, V]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> V | None:
        """The value of ``key`` until its deadline (it becomes the most recently used), else None."""
        now = self._clock()
        entry = self._entries.get(key)           # a hit needs no lock: each dict operation is atomic
        if entry is not None and now < entry[0]:
            try:
                self._entries.move_to_end(key)
            except KeyError:                     # evicted by another thread meanwhile: still a hit
                pass
            return entry[1]
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            deadline, value = entry
            if now >= deadline:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return value

    def peek(self, key: str) -> V | None:
        """:meth:`get`: everything is in memory here (:class:`CacheBackend`)."""
        return self.get(key)

    def release(self, key: str) -> None:
        """Nothing to release: flights are per process here (:class:`CacheBackend`)."""

    def set(self, key: str, value: V, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds from now; a ttl <= 0 stores nothing."""
        if ttl <= 0:
            return
        deadline = self._clock() + ttl
        with self._lock:
            self._entries[key] = (deadline, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def remaining(self, key: str) -> float | None:
        """Seconds an entry has left, or None."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        left = entry[0] - self._clock()
        return left if left > 0 else None

    def delete(self, key: str) -> None:
        """Forget ``key`` (nothing happens when it is absent)."""
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class _Call(t.Generic[V]):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: V | None = None
        self.error: BaseException | None = None


class SingleFlight(t.Generic[V]):
    """Concurrent ``do(key, fn)`` calls for the same key run ``fn`` once and share its outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, _Call[V]] = {}

    def do(self, key: str, fn: t.Callable[[], V], timeout: float | None = None) -> V:
        """``fn()``, run once for every concurrent caller with this ``key``: the first caller runs
        it, the others wait and share its value or its exception. A waiter that waited ``timeout``
        seconds (None: no bound) runs ``fn`` itself.

        :raises BaseException: whatever ``fn`` raised, in every caller that shared it.
        """
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if leader:
                call = self._calls[key] = _Call()
        assert call is not None
        if not leader:
            if not call.done.wait(timeout):
                return fn()
            if call.error is not None:
                raise call.error
            return t.cast(V, call.value)
        try:
            call.value = fn()
            return call.value
        except BaseException as e:
            call.error = e
            raise
        finally:
            with self._lock:
                self._calls.pop(key, None)
            call.done.set()
