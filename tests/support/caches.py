"""A token-cache backend for tests: the ``CacheBackend`` protocol over a plain dict the test can read and edit."""

from __future__ import annotations

import typing as t


class RecordingCache:
    """A cache backend that ignores TTLs (like a coarse external store) and records keys.

    ``entries`` (hashed key -> stored value) and ``ttls`` (hashed key -> seconds asked for) are
    what another worker or replica would find in a shared store such as Redis.
    """

    def __init__(self) -> None:
        self.entries: dict[str, t.Any] = {}
        self.ttls: dict[str, float] = {}

    def get(self, key: str) -> t.Any:
        return self.entries.get(key)

    def peek(self, key: str) -> t.Any:
        return self.entries.get(key)

    def set(self, key: str, value: t.Any, ttl: float) -> None:
        self.entries[key] = value
        self.ttls[key] = ttl

    def release(self, key: str) -> None:
        return None
