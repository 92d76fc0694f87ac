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
divides every limit, "limit / workers", which is not exact). :class:`RedisLimiter` changes the
counters only in one Lua script (read, decide and write atomic inside Redis), so any number of
workers and replicas share one budget that is never exceeded; far from the limit one call leases
a few requests to the worker (:class:`Lease`), near it every request is one call. When Redis fails it either falls back to its
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

    def refused(self, key: str, rate: Rate, quota: Rate | None) -> Usage | None:
        """The refusal a hit on ``key`` would get now, when it is known without counting anything;
        None when it would pass or is not known (a request's head is decided on before it is
        counted whole: :meth:`gateway_app.usage_plans.UsagePlanEnforcer.check`)."""


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
        with self._lock:
            usage, count = self._step(key, rate, quota, self._clock())
            if usage.allowed:
                count()
            return usage

    def refused(self, key: str, rate: Rate, quota: Rate | None) -> Usage | None:
        """What :meth:`hit` would refuse now, counting nothing (exact: the counters are here)."""
        with self._lock:
            usage, _ = self._step(key, rate, quota, self._clock())
        return None if usage.allowed else usage

    def _step(self, key: str, rate: Rate, quota: Rate | None, now: int) -> tuple[Usage, t.Callable[[], None]]:
        """The decision of a hit at ``now``, and what counts it. Under the lock."""
        rate = rate.divided(self.divisor)
        quota = quota.divided(self.divisor) if quota is not None else None
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

        def count_it() -> None:
            store_expiring(self._tats, key, (rate_step[1], rate.interval_us, rate_step[1]), now, self._max_keys)
            if quota is not None:
                window_end = (now // quota.period_us + 1) * quota.period_us
                store_expiring(self._counts, quota_key, (count + 1, window_end), now, self._max_keys)

        return combine(rate, rate_step, quota, quota_step), count_it


def store_expiring(table: dict[str, t.Any], key: str, value: tuple[t.Any, ...], now: int, max_keys: int) -> None:
    """``table[key] = value``, where ``value[-1]`` is when the entry stops mattering (us); with
    ``max_keys`` entries already, the expired ones are dropped first, then the oldest."""
    if key not in table and len(table) >= max_keys:
        for stale in [k for k, entry in table.items() if entry[-1] <= now]:
            del table[stale]
        if len(table) >= max_keys:
            del table[next(iter(table))]
    table[key] = value


# KEYS[1] the rate key ("<tat>:<interval>"), KEYS[2] the quota key prefix (the window index is appended).
# ARGV: now_us ("" = Redis's own clock), limit, period_us, quota limit (0 = none), quota period_us,
#       wanted (requests to admit at once, >= 1), returned (leased requests given back unused),
#       the quota window they were counted in (-1: none), share (a grant takes at most 1/share of
#       what is left, and at least 1).
# Returns {allowed, rate allowed, rate wait_us, rate remaining after the grant, quota count before
#          the grant (-1 = none), quota reset_us, granted, quota window}.
# With wanted = 1 and nothing returned the arithmetic is gcra() and fixed_window() above, in integers.
GCRA_SCRIPT = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local limit = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local wanted = tonumber(ARGV[6])
local returned = tonumber(ARGV[7])
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
if returned > 0 then tat = math.max(now, tat - returned * interval) end
local rate_left = math.min(math.floor((now + period - tat) / interval), limit)
local quota_limit = tonumber(ARGV[4])
local count = -1
local quota_key = nil
local quota_reset = 0
local window = -1
local available = rate_left
if quota_limit > 0 then
  local quota_period = tonumber(ARGV[5])
  window = math.floor(now / quota_period)
  quota_key = KEYS[2] .. window
  count = tonumber(redis.call('GET', quota_key)) or 0
  if returned > 0 and tonumber(ARGV[8]) == window then count = math.max(0, count - returned) end
  quota_reset = (window + 1) * quota_period - now
  available = math.min(available, quota_limit - count)
end
local granted = 0
if available > 0 then
  granted = math.min(wanted, math.max(1, math.floor(available / tonumber(ARGV[9]))))
end
if granted > 0 or returned > 0 then
  local until_us = tat + granted * interval
  if until_us > now then
    redis.call('SET', KEYS[1], string.format('%d:%d', until_us, interval), 'PX', math.ceil((until_us - now) / 1000) + 1)
  end
  if quota_key then
    redis.call('SET', quota_key, count + granted, 'PX', math.ceil(quota_reset / 1000) + 1000)
  end
end
if granted == 0 then
  local wait = 0
  if rate_left < 1 then wait = tat + interval - period - now end
  return {0, rate_left >= 1 and 1 or 0, wait, 0, count, quota_reset, 0, window}
end
tat = tat + granted * interval
local remaining = math.min(rate_left - granted, limit - 1)
return {1, 1, tat - now, remaining, count, quota_reset, granted, window}
"""

LEASE_MAX = 64              # requests one lease covers at most
LEASE_SHARE = 64            # a lease takes at most 1/64 of the budget left (so the last 127 are per request)
LEASE_LIFE_US = 100_000     # a lease unused for this long is given back on the key's next hit


@dataclasses.dataclass
class Lease:
    """Requests a worker took from the shared budget at once and admits locally, one per hit.

    ``last`` is the :class:`Usage` of the lease's last request; the one before it has one more
    remaining, and so on. ``window`` is the quota window the lease was counted in (-1: no quota).
    ``size`` is how many it asked for: the next lease asks for twice as many when this one is
    used up before ``expires_us``, else for half as many.
    """

    rate: Rate
    quota: Rate | None
    left: int
    expires_us: int
    window: int
    last: Usage
    size: int

    def take(self) -> Usage:
        """Admit one request from the lease (``left`` must be positive)."""
        self.left -= 1
        return dataclasses.replace(self.last, remaining=self.last.remaining + self.left)

    def fits(self, rate: Rate, quota: Rate | None) -> bool:
        return self.rate == rate and self.quota == quota


class RedisLimiter:
    """Counters in Redis shared by every worker and replica, changed only by one atomic script.

    Far from the limit, one script call takes a small :class:`Lease` (up to :data:`LEASE_MAX`
    requests, at most ``1/LEASE_SHARE`` of what is left) that this process then admits one per
    hit without a round trip: a Redis call per request costs a Python worker about a third of
    its throughput (GIL hand-offs around the socket wait, ``make bench``). Leases start at one
    request and double while each is used up within :data:`LEASE_LIFE_US`, so a consumer that
    sends little takes one at a time; unused leased requests are given back on the key's next
    hit. Near the limit (fewer than ``2 x LEASE_SHARE`` left) every request is one script call,
    so the last requests of a budget are exact across workers and replicas. The shared count
    is never exceeded: a leased request was counted when it was leased. What a lease costs: a
    worker that stops sending holds at most one lease (counted, unused) until its next hit or
    the window's end; this is the quota-assignment design of Envoy's rate-limit quota service
    and Google's Doorman. ``lease_max=1`` turns leases off (one script call per request).

    ``clock`` (microseconds) is for tests; by default the script reads Redis's clock, so
    replicas with skewed clocks still agree. ``fallback`` serves while Redis is down when
    ``failure_mode`` is ``"open"``.

    :raises RateLimitUnavailableError: from :meth:`hit`, Redis failed and ``failure_mode`` is ``"closed"``.
    """

    def __init__(self, url: str, *, failure_mode: str = "open", fallback: MemoryLimiter | None = None,
                 clock: t.Callable[[], int] | None = None, retry_after: float | None = None,
                 lease_max: int = LEASE_MAX, monotonic_us: t.Callable[[], int] | None = None) -> None:
        if failure_mode not in FAILURE_MODES:
            raise ValueError(f"rate-limit failure mode must be open or closed, got {failure_mode!r}")
        self.failure_mode = failure_mode
        self.fallback = fallback or MemoryLimiter()
        self._clock = clock
        self._monotonic_us = monotonic_us or clock or (lambda: time.monotonic_ns() // 1000)
        self._lease_max = max(1, lease_max)
        self._leases: dict[str, Lease] = {}
        self._refusals: dict[str, tuple[Usage, int]] = {}    # key -> (the last refusal, until: monotonic us)
        self._lock = threading.Lock()
        self._client = connect(url)
        self._script = self._client.register_script(GCRA_SCRIPT)
        self.backoff = RedisBackoff(url, "rate limits", "per-worker limits" if failure_mode == "open"
                                    else "refusing limited requests with 503", retry_after=retry_after)

    def hit(self, key: str, rate: Rate, quota: Rate | None) -> Usage:
        """Admit or refuse one request on ``key``: from this process's lease, else one script call."""
        now = self._monotonic_us()
        returned, window, wanted = 0, -1, 1
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None and lease.fits(rate, quota):
                if lease.left > 0 and now < lease.expires_us:
                    return lease.take()
                returned, window, lease.left = lease.left, lease.window, 0
                used_up_in_time = not returned and now < lease.expires_us
                wanted = min(self._lease_max, lease.size * 2) if used_up_in_time else max(1, lease.size // 2)
        if self.backoff.usable():
            try:
                usage = self._hit(key, rate, quota, (wanted, returned, window), now)
            except REDIS_FAILURES as error:
                self.backoff.mark_down(error)
            else:
                self.backoff.mark_up()
                self._remember(key, usage, now)
                return usage
        if self.failure_mode == "closed":
            raise RateLimitUnavailableError()
        return self.fallback.hit(key, rate, quota)

    def refused(self, key: str, rate: Rate, quota: Rate | None) -> Usage | None:
        """This process's last refusal on ``key`` while its ``Retry-After`` has not passed (no round
        trip: the shared count is only read by counting); the fallback's while Redis is down."""
        if not self.backoff.usable():
            return self.fallback.refused(key, rate, quota) if self.failure_mode == "open" else None
        now = self._monotonic_us()
        with self._lock:
            known = self._refusals.get(key)
        if known is None or now >= known[1]:
            return None
        usage, until = known
        return dataclasses.replace(usage, retry_after_us=until - now)

    def _remember(self, key: str, usage: Usage, now: int) -> None:
        with self._lock:
            if usage.allowed:
                self._refusals.pop(key, None)
                return
            store_expiring(self._refusals, key, (usage, now + usage.retry_after_us), now, MAX_MEMORY_KEYS)

    def _hit(self, key: str, rate: Rate, quota: Rate | None, lease: tuple[int, int, int], now: int) -> Usage:
        """One script call asking for ``lease = (wanted, returned, window)``; keeps what it grants."""
        wanted, returned, window = lease
        stamp = "" if self._clock is None else str(self._clock())
        args = [stamp, rate.limit, rate.period_us, quota.limit if quota else 0, quota.period_us if quota else 0,
                wanted, returned, window, LEASE_SHARE]
        tagged = f"{KEY_PREFIX}{{{key}}}"               # one hash tag: both keys in one Redis Cluster slot
        _, rate_ok, wait, remaining, count, quota_reset, granted, window = self._script(
            keys=[tagged, tagged + ":q:"], args=args)
        granted = int(granted)
        rate_step = (bool(rate_ok), 0, int(remaining), int(wait))
        quota_step = None
        if quota is not None:
            count = int(count)
            quota_step = (count < quota.limit, max(0, quota.limit - count - max(1, granted)), int(quota_reset))
        usage = combine(rate, rate_step, quota, quota_step)
        if not granted:
            return usage
        kept = Lease(rate, quota, granted, now + LEASE_LIFE_US, int(window), usage, wanted)
        first = kept.take()
        self._keep(key, kept, now)
        return first

    def _keep(self, key: str, lease: Lease, now: int) -> None:
        """Remember ``key``'s lease (its leftovers and the size of the next one); bounded in number."""
        with self._lock:
            if key not in self._leases and len(self._leases) >= MAX_MEMORY_KEYS:
                for stale in [k for k, held in self._leases.items() if held.expires_us <= now and not held.left]:
                    del self._leases[stale]
                if len(self._leases) >= MAX_MEMORY_KEYS:
                    del self._leases[next(iter(self._leases))]
            held = self._leases.get(key)
            if held is not None and held.left and held.fits(lease.rate, lease.quota) and now < held.expires_us:
                lease.left += held.left                 # another thread's lease, taken meanwhile
            self._leases[key] = lease

    def close(self) -> None:
        self._client.close()
