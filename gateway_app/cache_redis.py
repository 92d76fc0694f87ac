"""A token cache shared through Redis, so workers and replicas ask the IdP once per token.

:class:`RedisTokenCache` satisfies the ``CacheBackend`` protocol of
:mod:`gateway_app.auth.introspection` (``get(key)`` / ``set(key, value, ttl)``). Keys come
already hashed (never a raw token) and get a prefix; values are JSON; each entry is written
with ``SET ... PX`` for its remaining life and a read never extends it.

An in-process :class:`~gateway_app.cache.TTLCache` sits in front of Redis ("near cache"):
a hit there costs no round trip. Near entries live at most ``near_ttl`` seconds and never
beyond the Redis entry's own deadline. The same in-process cache is the fallback: when Redis
is unreachable or slow (short socket timeouts), the cache logs once, keeps serving from memory,
and tries Redis again after ``retry_after`` seconds. A Redis failure never fails a request.

Misses are single-flight across processes (unless ``single_flight=False``, for entries that are
cheaper to compute than to wait for, such as verified JWT claims): the first process to miss a
key takes a short Redis lock (``SET NX PX`` with a token unique to this flight) and gets
``None``; its caller asks the IdP, then calls ``set`` (stores the entry and ends the flight) or
:meth:`RedisTokenCache.release` (the IdP call failed, or the answer is not cached). The lock is
deleted only by its owner: a Lua compare-and-delete on the token, so a leader whose lock expired
never deletes the next leader's. The miss itself is one atomic round trip (:data:`GET_OR_LEAD`:
the entry, or the lock taken). A process that misses while another holds the lock polls Redis
for the entry for up to ``flight_wait`` seconds and stops as soon as the lock is gone (entry
stored, or flight abandoned), then lets its caller ask the IdP itself. Within a process, the
validator's own single-flight already makes threads wait for one leader, and re-checks with
:meth:`RedisTokenCache.peek` (memory only): a miss costs one Redis read.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import typing as t

import redis
import redis.backoff
import redis.connection
import redis.retry

from .cache import TTLCache

log = logging.getLogger("gateway_app.cache_redis")

KEY_PREFIX = "gateway:token:"
JWT_KEY_PREFIX = "gateway:jwt:"          # verified JWT claims (gateway_app.auth.jwt_validation)
SOCKET_TIMEOUT = 0.1
RETRY_AFTER = 5.0
NEAR_TTL = 5.0
FLIGHT_LOCK_TTL = 5.0
FLIGHT_WAIT = 2.0
FLIGHT_POLL = 0.005
LOCK_PREFIX = "gateway:flight:"
# A miss in one round trip, atomically: the entry and its PTTL, or the flight lock taken (SET NX PX)
# with this flight's token, or the token of the flight that holds it. Atomic, so a leader that
# stores its entry and drops its lock between our look and our SET NX cannot make us lead again.
GET_OR_LEAD = """
local value = redis.call("get", KEYS[1])
if value then
    return {1, value, redis.call("pttl", KEYS[1])}
end
if redis.call("set", KEYS[2], ARGV[1], "NX", "PX", ARGV[2]) then
    return {0, "", 1}
end
return {0, redis.call("get", KEYS[2]) or "", 0}
"""
# Delete the flight lock only if it still holds this flight's token (Redis "distributed locks" pattern).
RELEASE_LOCK = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
end
return 0
"""
REDIS_FAILURES = (redis.RedisError, OSError)


def connect(url: str, socket_timeout: float = SOCKET_TIMEOUT) -> redis.Redis:
    """A client for ``url`` that never waits longer than ``socket_timeout`` and never retries.

    Shared by the token cache and the rate limiter: a Redis failure costs one request at most
    ``socket_timeout`` seconds, then :class:`RedisBackoff` keeps requests away from Redis.
    """
    return redis.Redis.from_url(
        url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0), health_check_interval=0,
    )


class RedisBackoff:
    """After a Redis failure, skip Redis for ``retry_after`` seconds; log the outage once.

    ``what`` names the user ("token cache"), ``instead`` what happens meanwhile.
    """

    def __init__(self, url: str, what: str, instead: str, *, retry_after: float | None = None,
                 clock: t.Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.instead = instead
        self.retry_after = RETRY_AFTER if retry_after is None else retry_after
        self.failures = 0
        self._where = _describe(url)
        self._clock = clock
        self._lock = threading.Lock()
        self._down_until: float | None = None

    def usable(self) -> bool:
        """False while a back-off after a failure runs; the call after it tries Redis again."""
        down_until = self._down_until
        return down_until is None or self._clock() >= down_until

    def mark_down(self, error: BaseException) -> None:
        with self._lock:
            first = self._down_until is None
            self._down_until = self._clock() + self.retry_after
            self.failures += 1
        if first:
            log.warning("%s: Redis at %s failed (%s); %s, retrying every %g s",
                        self.what, self._where, type(error).__name__, self.instead, self.retry_after)

    def mark_up(self) -> None:
        if self._down_until is None:
            return
        with self._lock:
            was_down = self._down_until is not None
            self._down_until = None
        if was_down:
            log.info("%s: Redis at %s answers again", self.what, self._where)


class RedisTokenCache:
    """Token-cache entries in Redis, with an in-process near cache that is also the fallback.

    ``clock`` (monotonic seconds) times near entries, the back-off and a follower's wait for a
    flight; ``sleep`` paces that wait's polls.
    """

    def __init__(self, url: str, fallback_max_entries: int = 10_000, *, prefix: str = KEY_PREFIX,
                 socket_timeout: float = SOCKET_TIMEOUT, retry_after: float = RETRY_AFTER,
                 near_ttl: float = NEAR_TTL, flight_wait: float = FLIGHT_WAIT, single_flight: bool = True,
                 clock: t.Callable[[], float] = time.monotonic,
                 sleep: t.Callable[[float], None] = time.sleep) -> None:
        self.prefix = prefix
        self.single_flight = single_flight
        self.flight_wait = flight_wait
        self.near_ttl = near_ttl
        self.local: TTLCache[dict[str, t.Any]] = TTLCache(fallback_max_entries, clock=clock)
        self._client = connect(url, socket_timeout)
        self._backoff = RedisBackoff(url, "token cache", "using the in-process cache", retry_after=retry_after,
                                     clock=clock)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._flights: dict[str, bytes] = {}          # key -> token of the flight this process leads
        self._release_lock = self._client.register_script(RELEASE_LOCK)
        self._get_or_lead = self._client.register_script(GET_OR_LEAD)

    @property
    def failures(self) -> int:
        return self._backoff.failures

    def get(self, key: str) -> dict[str, t.Any] | None:
        """The entry, from memory or Redis; None when absent, expired or unreadable.

        On a miss, either this process leads the flight for ``key`` (None: go and ask the IdP)
        or it waits for the leader's entry, as described in the module docstring.
        """
        value = self.local.get(key)
        if value is not None or not self._backoff.usable():
            return value
        try:
            if not self.single_flight:
                value = self._fetch(key)
            else:
                value, leading = self._fetch_or_lead(key)
                if value is None and not leading:
                    value = self._wait_for_leader(key)
        except REDIS_FAILURES as error:
            self._backoff.mark_down(error)
            return None
        self._backoff.mark_up()
        return value

    def _fetch(self, key: str) -> dict[str, t.Any] | None:
        """The Redis entry, copied into the near cache for no longer than it has left."""
        pipe = self._client.pipeline(transaction=False)
        pipe.get(self.prefix + key)
        pipe.pttl(self.prefix + key)
        raw, pttl = pipe.execute()
        value = _decode(raw) if raw is not None else None
        if value is not None:
            self.local.set(key, value, self._near_ttl(pttl / 1000 if pttl > 0 else self.near_ttl))
        return value

    def _fetch_or_lead(self, key: str) -> tuple[dict[str, t.Any] | None, bool]:
        """One round trip (:data:`GET_OR_LEAD`): the entry, or whether this process leads the
        flight for ``key`` (it took the lock now, or one of its flights still holds it)."""
        token = secrets.token_hex(16).encode()
        found, raw, extra = self._get_or_lead(keys=[self.prefix + key, LOCK_PREFIX + key],
                                              args=[token, int(FLIGHT_LOCK_TTL * 1000)])
        if found:
            value = _decode(raw)
            if value is None:                       # garbage under the key: a miss
                return None, self._lead_flight(key)
            self.local.set(key, value, self._near_ttl(extra / 1000 if extra > 0 else self.near_ttl))
            return value, False
        if extra:
            with self._lock:
                self._flights[key] = token
            return None, True
        ours = self._flights.get(key)
        return None, ours is not None and raw == ours

    def peek(self, key: str) -> dict[str, t.Any] | None:
        """The entry if this process has it in memory; no Redis round trip, no flight."""
        return self.local.get(key)

    def _lead_flight(self, key: str) -> bool:
        """Take the flight lock with a token unique to this flight, or find this process's
        flight still holding it; False when another process's flight holds it."""
        token = secrets.token_hex(16).encode()
        lock = LOCK_PREFIX + key
        if self._client.set(lock, token, nx=True, px=int(FLIGHT_LOCK_TTL * 1000)):
            with self._lock:
                self._flights[key] = token
            return True
        ours = self._flights.get(key)
        return ours is not None and self._client.get(lock) == ours

    def _wait_for_leader(self, key: str) -> dict[str, t.Any] | None:
        """Poll for the entry another process is fetching; None once it gives up or the lock is gone."""
        deadline = self._clock() + self.flight_wait
        while self._clock() < deadline:
            self._sleep(FLIGHT_POLL)
            value = self._fetch(key)
            if value is not None:
                return value
            if not self._client.exists(LOCK_PREFIX + key):
                # The leader stores its entry and drops the lock in one pipeline: the entry may
                # have arrived between the look above and this one.
                return self._fetch(key)
        return None

    def set(self, key: str, value: dict[str, t.Any], ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds (its remaining life); ttl <= 0 stores nothing."""
        milliseconds = int(ttl * 1000)
        data = None
        if milliseconds > 0:
            self.local.set(key, value, self._near_ttl(ttl))
            data = _encode(value)
        if not self._backoff.usable():
            return
        token = self._end_flight(key)
        try:
            pipe = self._client.pipeline(transaction=False)
            if data is not None:
                pipe.set(self.prefix + key, data, px=milliseconds)
            if token is not None:
                self._release_lock(keys=[LOCK_PREFIX + key], args=[token], client=pipe)
            if len(pipe):
                pipe.execute()
        except REDIS_FAILURES as error:
            self._backoff.mark_down(error)
            return
        self._backoff.mark_up()

    def release(self, key: str) -> None:
        """End this process's flight for ``key`` without an entry (the IdP call failed, or the
        answer is not cached), so other processes stop waiting and ask for themselves."""
        token = self._end_flight(key)
        if token is None or not self._backoff.usable():
            return
        try:
            self._release_lock(keys=[LOCK_PREFIX + key], args=[token])
        except REDIS_FAILURES as error:
            self._backoff.mark_down(error)

    def _end_flight(self, key: str) -> bytes | None:
        with self._lock:
            return self._flights.pop(key, None)

    def close(self) -> None:
        self._client.close()

    def _near_ttl(self, ttl: float) -> float:
        return min(ttl, self.near_ttl)


def _encode(value: dict[str, t.Any]) -> str | None:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        log.debug("token cache entry is not JSON; kept in memory only")
        return None


def _decode(raw: bytes) -> dict[str, t.Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _describe(url: str) -> str:
    """``host:port/db`` of a Redis URL, never its password."""
    kwargs = redis.connection.parse_url(url)
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
