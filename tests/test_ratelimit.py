"""Limiter arithmetic at window edges, with an injected clock, for both stores.

Every case runs against :class:`MemoryLimiter` and against :class:`RedisLimiter` on a real
redis-server (the Lua script must do the same integer arithmetic as :func:`gcra`).
"""

from __future__ import annotations

import concurrent.futures
import random
import typing as t

import pytest
import redis

from gateway_app.errors import RateLimitUnavailableError
from gateway_app.ratelimit import MICROS
from gateway_app.ratelimit import MemoryLimiter
from gateway_app.ratelimit import Rate
from gateway_app.ratelimit import RedisLimiter
from gateway_app.ratelimit import LEASE_LIFE_US
from gateway_app.ratelimit import LEASE_SHARE
from tests.support.clocks import FakeClock
from gateway_app.ratelimit import gcra
from tests.support.servers import free_port
from tests.test_cache_redis import redis_url  # noqa: F401  (the module's redis-server)

START = 1_700_000_040 * MICROS          # a multiple of a minute, so quota windows start here
FIVE_PER_MINUTE = Rate(5, 60 * MICROS)
INTERVAL = 12 * MICROS                  # 60 s / 5


@pytest.fixture(params=["memory", "redis"])
def make_limiter(request: pytest.FixtureRequest) -> t.Iterator[t.Callable[[FakeClock], t.Any]]:
    made: list[RedisLimiter] = []

    def factory(clock: FakeClock) -> t.Any:
        if request.param == "memory":
            return MemoryLimiter(clock=clock)
        url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(url).flushdb()
        limiter = RedisLimiter(url, clock=clock, failure_mode="closed")
        made.append(limiter)
        return limiter

    yield factory
    for limiter in made:
        limiter.close()


def hits(limiter: t.Any, count: int, rate: Rate = FIVE_PER_MINUTE, quota: Rate | None = None,
         key: str = "k") -> list[bool]:
    return [limiter.hit(key, rate, quota).allowed for _ in range(count)]


def test_a_burst_of_exactly_the_limit_passes_and_the_next_is_refused(make_limiter):
    limiter = make_limiter(FakeClock(START))
    remaining = [limiter.hit("k", FIVE_PER_MINUTE, None).remaining for _ in range(5)]
    refused = limiter.hit("k", FIVE_PER_MINUTE, None)

    assert remaining == [4, 3, 2, 1, 0]
    assert (refused.allowed, refused.remaining, refused.retry_after_us) == (False, 0, INTERVAL)


def test_one_request_passes_again_exactly_one_interval_later_not_a_microsecond_earlier(make_limiter):
    clock = FakeClock(START)
    limiter = make_limiter(clock)
    hits(limiter, 5)
    clock.advance(INTERVAL - 1)
    early = limiter.hit("k", FIVE_PER_MINUTE, None)
    clock.advance(1)
    on_time = limiter.hit("k", FIVE_PER_MINUTE, None)
    again = limiter.hit("k", FIVE_PER_MINUTE, None)

    assert (early.allowed, early.retry_after_us) == (False, 1)
    assert (on_time.allowed, on_time.remaining) == (True, 0)
    assert again.allowed is False


def test_a_full_period_of_silence_restores_the_whole_budget_and_no_more(make_limiter):
    clock = FakeClock(START)
    limiter = make_limiter(clock)
    hits(limiter, 5)
    clock.advance(10 * 60 * MICROS)

    assert hits(limiter, 6) == [True] * 5 + [False]


def test_refused_requests_do_not_use_up_budget(make_limiter):
    clock = FakeClock(START)
    limiter = make_limiter(clock)
    hits(limiter, 5)
    assert hits(limiter, 20) == [False] * 20
    clock.advance(INTERVAL)

    assert hits(limiter, 2) == [True, False]


def test_a_known_refusal_is_told_without_counting_and_ends_when_its_retry_after_has_passed(make_limiter):
    """A request's head is decided on before it is counted whole (UsagePlanEnforcer.check)."""
    clock = FakeClock(START)
    limiter = make_limiter(clock)
    assert [limiter.refused("k", FIVE_PER_MINUTE, None) for _ in range(10)] == [None] * 10    # nothing counted
    assert hits(limiter, 6) == [True] * 5 + [False]
    known = limiter.refused("k", FIVE_PER_MINUTE, None)
    assert known is not None and (known.allowed, known.retry_after_us) == (False, INTERVAL)
    clock.advance(INTERVAL - 1)
    assert limiter.refused("k", FIVE_PER_MINUTE, None).retry_after_us == 1
    clock.advance(1)
    assert limiter.refused("k", FIVE_PER_MINUTE, None) is None
    assert hits(limiter, 2) == [True, False]


def test_reset_is_the_time_until_the_bucket_is_full_again(make_limiter):
    limiter = make_limiter(FakeClock(START))
    first = limiter.hit("k", FIVE_PER_MINUTE, None)
    second = limiter.hit("k", FIVE_PER_MINUTE, None)

    assert (first.reset_us, second.reset_us) == (INTERVAL, 2 * INTERVAL)


def test_keys_do_not_share_a_budget(make_limiter):
    limiter = make_limiter(FakeClock(START))
    assert hits(limiter, 6, key="alice") == [True] * 5 + [False]
    assert hits(limiter, 1, key="bob") == [True]


def test_quota_refuses_at_its_limit_and_starts_over_exactly_at_the_window_edge(make_limiter):
    clock = FakeClock(START)
    limiter = make_limiter(clock)
    generous = Rate(1000, MICROS)
    quota = Rate(3, 60 * MICROS)
    assert hits(limiter, 4, generous, quota) == [True, True, True, False]
    refused = limiter.hit("k", generous, quota)
    clock.advance(60 * MICROS - 1)
    still = limiter.hit("k", generous, quota)
    clock.advance(1)
    fresh = limiter.hit("k", generous, quota)

    assert (refused.binding, refused.retry_after_us, refused.remaining) == ("quota", 60 * MICROS, 0)
    assert (still.allowed, still.retry_after_us) == (False, 1)
    assert (fresh.allowed, fresh.remaining, fresh.binding) == (True, 2, "quota")


def test_the_window_with_fewer_remaining_is_reported(make_limiter):
    limiter = make_limiter(FakeClock(START))
    usage = limiter.hit("k", FIVE_PER_MINUTE, Rate(100, 3600 * MICROS))
    tight = limiter.hit("q", FIVE_PER_MINUTE, Rate(2, 3600 * MICROS))

    assert (usage.binding, usage.limit, usage.remaining) == ("rate", 5, 4)
    assert (tight.binding, tight.limit, tight.remaining) == ("quota", 2, 1)


def test_a_request_refused_by_the_rate_is_not_counted_in_the_quota(make_limiter):
    clock = FakeClock(START)
    limiter = make_limiter(clock)
    quota = Rate(10, 3600 * MICROS)
    hits(limiter, 5, quota=quota)
    hits(limiter, 3, quota=quota)                  # refused by the rate
    clock.advance(60 * MICROS)

    assert hits(limiter, 6, quota=quota) == [True] * 5 + [False]
    assert limiter.hit("k", FIVE_PER_MINUTE, quota).remaining == 0


def test_limits_that_do_not_divide_the_period_round_the_interval_down():
    rate = Rate(7, 60 * MICROS)
    state = None
    allowed = []
    for _ in range(8):
        ok, tat, _, _ = gcra(state, START, rate)
        allowed.append(ok)
        state = (tat, rate.interval_us)

    assert allowed == [True] * 7 + [False]


def test_a_changed_limit_applies_at_once_and_keeps_the_requests_already_counted(make_limiter):
    clock = FakeClock(START)
    limiter = make_limiter(clock)
    hits(limiter, 3)
    raised = Rate(10, 60 * MICROS)
    lowered = Rate(2, 60 * MICROS)

    assert hits(limiter, 8, raised) == [True] * 7 + [False]
    assert hits(limiter, 1, lowered) == [False]


@pytest.mark.parametrize("limit", [50, 1000], ids=["one-call-per-request", "leases"])
def test_concurrent_hits_on_redis_admit_exactly_the_limit(redis_url, limit):  # noqa: F811
    redis.Redis.from_url(redis_url).flushdb()
    clock = FakeClock(START)                                      # leases do not expire: every leftover gets used
    limiters = [RedisLimiter(redis_url, clock=clock, failure_mode="closed") for _ in range(4)]
    rate = Rate(limit, 3600 * MICROS)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: limiters[i % 4].hit("race", rate, None).allowed, range(2 * limit)))
    for limiter in limiters:
        limiter.close()

    assert results.count(True) == limit


def _script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


def _two_workers(url: str, clock: FakeClock) -> list[RedisLimiter]:
    redis.Redis.from_url(url).flushdb()
    return [RedisLimiter(url, clock=clock, failure_mode="closed") for _ in range(2)]


def test_leases_admit_exactly_the_limit_across_workers_with_fewer_script_calls(redis_url):  # noqa: F811
    client = redis.Redis.from_url(redis_url)
    clock = FakeClock(START)
    workers = _two_workers(redis_url, clock)
    rate = Rate(1000, 3600 * MICROS)                    # no refill while the clock stands still
    client.config_resetstat()
    picks = random.Random(7)
    admitted = sum(picks.choice(workers).hit("k", rate, None).allowed for _ in range(1200))
    refused = 1200 - admitted                           # a refusal is always asked of Redis

    assert admitted == 1000
    assert _script_calls(client) - refused < 400        # one call per admitted request without leases


def test_the_last_requests_of_a_budget_are_one_script_call_each(redis_url):  # noqa: F811
    client = redis.Redis.from_url(redis_url)
    workers = _two_workers(redis_url, FakeClock(START))
    rate = Rate(2 * LEASE_SHARE - 1, 3600 * MICROS)
    client.config_resetstat()
    admitted = sum(workers[i % 2].hit("k", rate, None).allowed for i in range(rate.limit + 10))

    assert admitted == rate.limit
    assert _script_calls(client) == rate.limit + 10


def test_leftovers_of_an_expired_lease_are_given_back_on_its_next_hit(redis_url):  # noqa: F811
    clock = FakeClock(START)
    first, second = _two_workers(redis_url, clock)
    rate = Rate(1000, 3600 * MICROS)
    used_by_first = sum(first.hit("k", rate, None).allowed for _ in range(20))   # leases of 1, 2, 4, 8, 16
    clock.advance(LEASE_LIFE_US)
    used_by_second = 0
    while second.hit("k", rate, None).allowed:
        used_by_second += 1

    assert used_by_first + used_by_second < 1000        # the first worker's leftovers are held
    while first.hit("k", rate, None).allowed:           # its next hit gives them back and uses them
        used_by_first += 1
    assert used_by_first + used_by_second == 1000


def test_remaining_counts_down_by_one_per_request_through_a_lease(redis_url):  # noqa: F811
    (limiter, _) = _two_workers(redis_url, FakeClock(START))
    rate = Rate(1000, 3600 * MICROS)

    assert [limiter.hit("k", rate, None).remaining for _ in range(40)] == list(range(999, 959, -1))


def test_leases_off_make_one_script_call_per_request(redis_url):  # noqa: F811
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    limiter = RedisLimiter(redis_url, clock=FakeClock(START), failure_mode="closed", lease_max=1)
    client.config_resetstat()
    hits(limiter, 50, Rate(1000, 3600 * MICROS))

    assert _script_calls(client) == 50


def test_a_quota_is_leased_and_given_back_in_its_own_window(redis_url):  # noqa: F811
    clock = FakeClock(START)
    first, second = _two_workers(redis_url, clock)
    rate = Rate(100_000, 60 * MICROS)
    quota = Rate(500, 3600 * MICROS)
    used = sum(first.hit("k", rate, quota).allowed for _ in range(30))
    clock.advance(LEASE_LIFE_US)
    while second.hit("k", rate, quota).allowed:
        used += 1
    while first.hit("k", rate, quota).allowed:
        used += 1

    assert used == 500


def test_memory_limiter_divides_every_limit_by_the_worker_count():
    limiter = MemoryLimiter(divisor=2, clock=FakeClock(START))
    assert hits(limiter, 3) == [True, True, False]


def test_redis_down_fails_closed_within_the_socket_timeout_and_backs_off():
    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", failure_mode="closed")
    with pytest.raises(RateLimitUnavailableError):
        limiter.hit("k", FIVE_PER_MINUTE, None)
    with pytest.raises(RateLimitUnavailableError):
        limiter.hit("k", FIVE_PER_MINUTE, None)

    assert limiter.backoff.failures == 1          # the second call did not try Redis again


def test_redis_down_fails_open_to_per_worker_limits():
    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", failure_mode="open",
                           fallback=MemoryLimiter(clock=FakeClock(START)))
    assert hits(limiter, 6) == [True] * 5 + [False]
