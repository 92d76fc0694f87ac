"""Rate-limit arithmetic and where the counters live: per worker in memory, or shared in Redis.

A usage plan has a **rate limit** (``limit`` requests per ``period``) and an optional **quota**
(``limit`` requests per longer ``period``). One request is one :meth:`Limiter.hit` on a key
(plan, partition, consumer hash); it is admitted only when both allow it, and only an admitted
request is counted.

* The rate limit is a **GCRA** (generic cell rate algorithm, the virtual-scheduling form of a
  token bucket holding ``limit`` tokens that refill at ``limit / period``: Traefik Hub's
  documented semantics). One number per key, the theoretical arrival time (TAT); a burst of
  ``limit`` requests passes at once, then one per ``period / limit``. Unlike a fixed window
  it never admits ``2 x limit`` across a window edge; unlike a sliding log it costs one key of
  constant size whatever the limit (a DAY plan of 100,000 requests is still one number).
* The quota is a **fixed window** aligned to multiples of its period since the Unix epoch (as
  Envoy's rate-limit service aligns ``requestsPerUnit`` to the unit): a counter that resets.

Times are integer **microseconds** since the epoch, so Python and the Redis Lua script do the
same integer arithmetic (both exact below 2**53).

:class:`MemoryLimiter` keeps the numbers in this process (so limits are per worker; ``divisor``
divides every limit, "limit / workers", which is not exact). :class:`RedisLimiter` runs one Lua
script per request: read, decide and write happen inside Redis atomically, so any number of
workers and replicas share one exact budget. When Redis fails it either falls back to its
in-process limiter (``failure_mode="open"``) or raises :class:`RateLimitUnavailableError`
(``"closed"``), after at most the socket timeout (100 ms), and leaves Redis alone for
``retry_after`` seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import typing as t

from .cache_redis import REDIS_FAILURES
from .cache_redis import RedisBackoff
from .cache_redis import connect
from .errors import RateLimitUnavailableError

log = logging.getLogger("gateway_app.ratelimit")

MICROS = 1_000_000
KEY_PREFIX = "gateway:rl:"
MAX_MEMORY_KEYS = 100_000
FAILURE_MODES = ("open", "closed")


@dataclasses.dataclass(frozen=True)
class Rate:
    """``limit`` requests per ``period_us`` microseconds (``limit <= period_us``)."""

    limit: int
    period_us: int

    @property
    def interval_us(self) -> int:
        """The emission interval: one request's share of the period (rounded down)."""
        return self.period_us // self.limit

    def divided(self, divisor: int) -> Rate:
        return Rate(max(1, self.limit // divisor), self.period_us) if divisor > 1 else self


@dataclasses.dataclass(frozen=True)
class Usage:
    """What one hit decided, for the answer's headers.

    ``remaining`` requests are left in the binding window; ``reset_us`` is when it is full
    again (rate) or starts over (quota), from now; ``retry_after_us`` is when the next request
    can pass (0 when this one passed). ``binding`` is ``"rate"`` or ``"quota"``: the one with
    fewer remaining (or the one that refused).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_us: int
    retry_after_us: int
    binding: str


def gcra(state: tuple[int, int] | None, now_us: int, rate: Rate) -> tuple[bool, int, int, int]:
    """One GCRA step: ``(allowed, new_tat_us, remaining, wait_us)``.

    ``state`` is the stored ``(tat_us, interval_us)``: the theoretical arrival time and the
    emission interval it was counted in (None: never seen). A plan changed by a reload keeps
    the requests already counted: the backlog ``tat - now`` is rescaled to the new interval.
    Allowed when ``now >= tat' - period`` with ``tat' = max(tat, now) + interval``; then
    ``new_tat`` is ``tat'``, ``remaining`` how many more would pass right now, and ``wait_us``
    the time until the bucket is full again. Refused: ``new_tat`` is the old one and ``wait_us``
    the time until a request passes.
    """
    interval = rate.interval_us
    tat = now_us
    if state is not None and state[0] > now_us:
        tat = state[0]
        if state[1] != interval and state[1] > 0:
            tat = now_us + (state[0] - now_us) * interval // state[1]
    candidate = tat + interval
    allow_at = candidate - rate.period_us
    if now_us < allow_at:
        return False, tat, 0, allow_at - now_us
    remaining = (rate.period_us - (candidate - now_us)) // interval
    return True, candidate, min(remaining, rate.limit - 1), candidate - now_us


def fixed_window(count: int, now_us: int, quota: Rate) -> tuple[bool, int, int]:
    """One quota step on the window containing ``now``: ``(allowed, remaining_after, reset_us)``."""
    reset = quota.period_us - now_us % quota.period_us
    if count >= quota.limit:
        return False, 0, reset
    return True, quota.limit - count - 1, reset


def combine(rate: Rate, rate_step: tuple[bool, int, int, int], quota: Rate | None,
            quota_step: tuple[bool, int, int] | None) -> Usage:
    """The :class:`Usage` of a hit from its two steps (the request passes only if both allow)."""
    rate_ok, _, rate_remaining, rate_wait = rate_step
    if quota is None or quota_step is None:
        return Usage(rate_ok, rate.limit, rate_remaining, rate_wait, 0 if rate_ok else rate_wait, "rate")
    quota_ok, quota_remaining, quota_reset = quota_step
    allowed = rate_ok and quota_ok
    if not quota_ok or (rate_ok and quota_remaining < rate_remaining):
        retry = quota_reset if not quota_ok else 0
        if not quota_ok and not rate_ok:
            retry = max(quota_reset, rate_wait)
        return Usage(allowed, quota.limit, quota_remaining, quota_reset, retry, "quota")
    retry = 0 if allowed else rate_wait
    return Usage(allowed, rate.limit, rate_remaining, rate_wait, retry, "rate")


class Limiter(t.Protocol):
    def hit(self, key: str, rate: Rate, quota: Rate | None) -> Usage: ...


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class MemoryLimiter:
    """Counters in this process, one lock around each decision. Limits are per worker.

    ``divisor`` (``GATEWAY_RATE_LIMIT_WORKERS``) divides every limit: N workers then admit
    about the plan's limit in total when a load balancer spreads a consumer evenly (not exact).
    At most ``max_keys`` keys are kept; when full, entries whose windows have passed are dropped
    first, then the oldest.
    """

    def __init__(self, *, divisor: int = 1, clock: t.Callable[[], int] = wall_clock_us,
                 max_keys: int = MAX_MEMORY_KEYS) -> None:
        self.divisor = max(1, divisor)
        self._clock = clock
        self._max_keys = max_keys
        self._tats: dict[str, tuple[int, int, int]] = {}     # key -> (tat, interval, expires_at)
        self._counts: dict[str, tuple[int, int]] = {}        # quota key -> (count, window end)
        self._lock = threading.Lock()

    def hit(self, key: str, rate: Rate, quota: Rate | None) -> Usage:
        rate = rate.divided(self.divisor)
        quota = quota.divided(self.divisor) if quota is not None else None
        with self._lock:
            now = self._clock()
            stored = self._tats.get(key)
            rate_step = gcra(stored[:2] if stored else None, now, rate)
            quota_step = None
            quota_key = ""
            count = 0
            if quota is not None:
                quota_key = f"{key}:q:{now // quota.period_us}"
                entry = self._counts.get(quota_key)
                count = entry[0] if entry else 0
                quota_step = fixed_window(count, now, quota)
            usage = combine(rate, rate_step, quota, quota_step)
            if usage.allowed:
                self._store(self._tats, key, (rate_step[1], rate.interval_us, rate_step[1]), now)
                if quota is not None:
                    window_end = (now // quota.period_us + 1) * quota.period_us
                    self._store(self._counts, quota_key, (count + 1, window_end), now)
            return usage

    def _store(self, table: dict[str, t.Any], key: str, value: tuple[int, ...], now: int) -> None:
        """``value[-1]`` is when the entry stops mattering."""
        if key not in table and len(table) >= self._max_keys:
            for stale in [k for k, entry in table.items() if entry[-1] <= now]:
                del table[stale]
            if len(table) >= self._max_keys:
                del table[next(iter(table))]
        table[key] = value


# KEYS[1] the rate key ("<tat>:<interval>"), KEYS[2] the quota key prefix (the window index is appended).
# ARGV: now_us ("" = Redis's own clock), limit, period_us, quota limit (0 = none), quota period_us.
# Returns {allowed, rate allowed, rate wait_us, rate remaining, quota count before (-1 = none), quota reset_us}.
# The arithmetic is gcra() and fixed_window() above, in integers.
GCRA_SCRIPT = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local limit = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local interval = math.floor(period / limit)
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  local old_tat, old_interval = string.match(stored, '^(%d+):(%d+)$')
  old_tat = tonumber(old_tat)
  old_interval = tonumber(old_interval)
  if old_tat and old_tat > now then
    tat = old_tat
    if old_interval ~= interval and old_interval > 0 then
      tat = now + math.floor((old_tat - now) * interval / old_interval)
    end
  end
end
local candidate = tat + interval
local allow_at = candidate - period
local rate_ok = now >= allow_at
local quota_limit = tonumber(ARGV[4])
local count = -1
local quota_ok = true
local quota_key = nil
local quota_reset = 0
if quota_limit > 0 then
  local quota_period = tonumber(ARGV[5])
  local window = math.floor(now / quota_period)
  quota_key = KEYS[2] .. window
  count = tonumber(redis.call('GET', quota_key)) or 0
  quota_ok = count < quota_limit
  quota_reset = (window + 1) * quota_period - now
end
if not (rate_ok and quota_ok) then
  local wait = 0
  if not rate_ok then wait = allow_at - now end
  return {0, rate_ok and 1 or 0, wait, 0, count, quota_reset}
end
redis.call('SET', KEYS[1], string.format('%d:%d', candidate, interval), 'PX', math.ceil((candidate - now) / 1000) + 1)
if quota_key then
  redis.call('INCR', quota_key)
  redis.call('PEXPIRE', quota_key, math.ceil(quota_reset / 1000) + 1000)
end
local remaining = math.floor((period - (candidate - now)) / interval)
if remaining > limit - 1 then remaining = limit - 1 end
return {1, 1, candidate - now, remaining, count, quota_reset}
"""


class RedisLimiter:
    """Counters in Redis shared by every worker and replica: one atomic script per request.

    ``clock`` (microseconds) is for tests; by default the script reads Redis's clock, so
    replicas with skewed clocks still agree. ``fallback`` serves while Redis is down when
    ``failure_mode`` is ``"open"``.

    :raises RateLimitUnavailableError: from :meth:`hit`, Redis failed and ``failure_mode`` is ``"closed"``.
    """

    def __init__(self, url: str, *, failure_mode: str = "open", fallback: MemoryLimiter | None = None,
                 clock: t.Callable[[], int] | None = None, retry_after: float | None = None) -> None:
        if failure_mode not in FAILURE_MODES:
            raise ValueError(f"rate-limit failure mode must be open or closed, got {failure_mode!r}")
        self.failure_mode = failure_mode
        self.fallback = fallback or MemoryLimiter()
        self._clock = clock
        self._client = connect(url)
        self._script = self._client.register_script(GCRA_SCRIPT)
        self.backoff = RedisBackoff(url, "rate limits", "per-worker limits" if failure_mode == "open"
                                    else "refusing limited requests with 503", retry_after=retry_after)

    def hit(self, key: str, rate: Rate, quota: Rate | None) -> Usage:
        if self.backoff.usable():
            try:
                usage = self._hit(key, rate, quota)
            except REDIS_FAILURES as error:
                self.backoff.mark_down(error)
            else:
                self.backoff.mark_up()
                return usage
        if self.failure_mode == "closed":
            raise RateLimitUnavailableError()
        return self.fallback.hit(key, rate, quota)

    def _hit(self, key: str, rate: Rate, quota: Rate | None) -> Usage:
        now = "" if self._clock is None else str(self._clock())
        args = [now, rate.limit, rate.period_us, quota.limit if quota else 0, quota.period_us if quota else 0]
        tagged = f"{KEY_PREFIX}{{{key}}}"               # one hash tag: both keys in one Redis Cluster slot
        keys = [tagged, tagged + ":q:"]
        _, rate_ok, wait, remaining, count, quota_reset = self._script(keys=keys, args=args)
        rate_step = (bool(rate_ok), 0, int(remaining), int(wait))
        quota_step = None
        if quota is not None:
            count = int(count)
            quota_step = (count < quota.limit, max(0, quota.limit - count - 1), int(quota_reset))
        return combine(rate, rate_step, quota, quota_step)

    def close(self) -> None:
        self._client.close()
