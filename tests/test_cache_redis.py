"""RedisTokenCache against a real redis-server on 127.0.0.1 (started per module on a free port).

Without the ``redis-server`` binary these tests are skipped on a developer's machine and
fail in CI (``CI`` set), where ``make test`` installs it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import shutil
import socket
import threading
import time
import typing as t

import pytest
import redis

from gateway_app.auth.introspection import IntrospectionValidator
from gateway_app.auth.jwt_validation import JwtValidator
from gateway_app.cache import hash_key
from gateway_app.cache_redis import JWT_KEY_PREFIX
from gateway_app.cache_redis import KEY_PREFIX
from gateway_app.cache_redis import FLIGHT_POLL
from gateway_app.cache_redis import LOCK_PREFIX
from gateway_app.cache_redis import RedisTokenCache
from gateway_app.errors import IdentityProviderError
from gateway_app.errors import InvalidTokenError
from tests.keys import claims
from tests.keys import jwks_json
from tests.keys import make_jwt
from tests.keys import public_jwk
from tests.keys import rsa_key
from tests.support.servers import ServerProcess
from tests.support.servers import free_port
from tests.support.clocks import FakeClock
from tests.factories import introspection_settings
from tests.factories import jwt_settings

REDIS_SERVER = shutil.which("redis-server")
IDP = "http://idp.test/oauth2/introspect"
KEY = hash_key("fingerprint", "a-token")


def redis_server(log_dir: os.PathLike | str, port: int | None = None) -> ServerProcess:
    """A throw-away redis-server on 127.0.0.1: no persistence, its log under ``log_dir``.

    :raises pytest.fail/skip: no ``redis-server`` binary (a failure when ``CI`` is set).
    """
    if REDIS_SERVER is None:
        message = "redis-server is not installed (Debian package redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    port = port or free_port()
    argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(log_dir)]
    return ServerProcess("redis", argv, port, log_dir)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield f"redis://127.0.0.1:{server.port}/0"


@pytest.fixture
def raw(redis_url: str) -> t.Iterator[redis.Redis]:
    """A plain client on a clean database, to look behind the cache's back."""
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def make_cache() -> t.Iterator[t.Callable[..., RedisTokenCache]]:
    made: list[RedisTokenCache] = []

    def build(url: str, **options: t.Any) -> RedisTokenCache:
        cache = RedisTokenCache(url, fallback_max_entries=100, **options)
        made.append(cache)
        return cache

    yield build
    for cache in made:
        cache.close()


def test_entry_round_trips_as_json_between_instances(redis_url, raw, make_cache):
    value = {"active": True, "claims": {"sub": "ä-user", "exp": 1.5e9, "aud": ["a", "b"], "x": None}}
    make_cache(redis_url).set(KEY, value, ttl=60)
    assert make_cache(redis_url).get(KEY) == value
    stored = raw.get(KEY_PREFIX + KEY)
    assert stored is not None and b'"sub":"\\u00e4-user"' in stored


def test_entry_is_stored_under_the_prefixed_hashed_key_with_its_ttl(redis_url, raw, make_cache):
    make_cache(redis_url).set(KEY, {"active": False}, ttl=5)
    assert raw.keys("*") == [(KEY_PREFIX + KEY).encode()]
    assert 4000 < raw.pttl(KEY_PREFIX + KEY) <= 5000


def test_entry_is_gone_after_its_ttl_for_every_instance(redis_url, raw, make_cache):
    writer = make_cache(redis_url)
    reader = make_cache(redis_url)
    writer.set(KEY, {"active": True}, ttl=0.3)
    assert reader.get(KEY) == {"active": True}
    time.sleep(0.35)
    assert writer.get(KEY) is None and reader.get(KEY) is None
    assert raw.exists(KEY_PREFIX + KEY) == 0


def test_reads_never_extend_an_entrys_life(redis_url, raw, make_cache):
    make_cache(redis_url).set(KEY, {"active": True}, ttl=2)
    first = raw.pttl(KEY_PREFIX + KEY)
    for _ in range(5):
        assert make_cache(redis_url).get(KEY) is not None
        time.sleep(0.05)
    assert raw.pttl(KEY_PREFIX + KEY) <= first - 200


def test_near_copy_lives_no_longer_than_the_redis_entry(redis_url, raw, make_cache):
    make_cache(redis_url).set(KEY, {"active": True}, ttl=0.5)
    reader = make_cache(redis_url, near_ttl=60)
    assert reader.get(KEY) == {"active": True}
    assert reader.local.remaining(KEY) <= 0.5


def test_near_copy_is_capped_by_near_ttl(redis_url, raw, make_cache):
    cache = make_cache(redis_url, near_ttl=1)
    cache.set(KEY, {"active": True}, ttl=600)
    assert cache.local.remaining(KEY) <= 1
    assert raw.pttl(KEY_PREFIX + KEY) > 590_000


def test_zero_ttl_stores_nothing(redis_url, raw, make_cache):
    cache = make_cache(redis_url)
    cache.set(KEY, {"active": True}, ttl=0)
    assert cache.get(KEY) is None
    assert raw.keys(KEY_PREFIX + "*") == []


def test_a_miss_in_another_process_waits_for_the_leaders_entry(redis_url, raw, make_cache):
    leader, follower = make_cache(redis_url), make_cache(redis_url)
    assert leader.get(KEY) is None                  # leads the flight: asks the IdP next
    assert leader.get(KEY) is None                  # its own second look does not wait
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(follower.get, KEY)
        time.sleep(0.05)
        assert not waiting.done()
        leader.set(KEY, {"active": True}, ttl=60)
        assert waiting.result(timeout=2) == {"active": True}
    assert raw.keys(LOCK_PREFIX + "*") == []


def test_a_follower_gives_up_waiting_after_flight_wait(redis_url, raw, make_cache):
    clock = FakeClock(1000.0)
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        clock.advance(seconds)

    leader = make_cache(redis_url)
    follower = make_cache(redis_url, flight_wait=0.1, clock=clock, sleep=sleep)
    assert leader.get(KEY) is None                  # the leader never stores anything
    assert follower.get(KEY) is None
    assert 0.1 <= sum(polls) <= 0.1 + 1.5 * FLIGHT_POLL   # waited flight_wait (clock seconds), then gave up


def test_a_flight_ending_without_an_entry_releases_the_followers(redis_url, raw, make_cache):
    polls: list[float] = []
    leader, follower = make_cache(redis_url), make_cache(redis_url, flight_wait=5, sleep=polls.append)
    assert leader.get(KEY) is None
    leader.set(KEY, {"active": False}, ttl=0)       # nothing to cache (e.g. negative caching off)
    assert follower.get(KEY) is None                # leads its own flight at once
    assert polls == []


def test_the_flight_lock_is_deleted_only_by_the_flight_that_holds_it(redis_url, raw, make_cache):
    slow, next_leader = make_cache(redis_url), make_cache(redis_url)
    assert slow.get(KEY) is None
    raw.delete(LOCK_PREFIX + KEY)                    # the slow leader's lock expired meanwhile
    assert next_leader.get(KEY) is None              # a new flight takes the lock
    held = raw.get(LOCK_PREFIX + KEY)

    slow.set(KEY, {"active": True}, ttl=60)          # the slow leader finishes late
    slow.release(KEY)

    assert raw.get(LOCK_PREFIX + KEY) == held, "only the owner's token deletes the lock"
    next_leader.set(KEY, {"active": True}, ttl=60)
    assert raw.keys(LOCK_PREFIX + "*") == []


def test_a_released_flight_lets_waiting_followers_go_at_once(redis_url, raw, make_cache):
    leader, follower = make_cache(redis_url), make_cache(redis_url, flight_wait=30)
    assert leader.get(KEY) is None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(follower.get, KEY)
        leader.release(KEY)                          # the IdP call failed: nothing will be stored
        assert waiting.result(timeout=10) is None    # asks for itself, long before flight_wait
    assert raw.keys(LOCK_PREFIX + "*") == [LOCK_PREFIX.encode() + KEY.encode()]   # the follower's flight now


def test_garbage_under_a_key_reads_as_a_miss(redis_url, raw, make_cache):
    raw.set(KEY_PREFIX + KEY, b"\xff not json", px=10_000)
    raw.set(KEY_PREFIX + "list", b"[1, 2]", px=10_000)
    cache = make_cache(redis_url)
    assert cache.get(KEY) is None and cache.get("list") is None


def test_redis_down_falls_back_to_memory_and_logs_once(make_cache, caplog):
    caplog.set_level(logging.WARNING, logger="gateway_app.cache_redis")
    clock = FakeClock(1000.0)
    cache = make_cache(f"redis://:hunter2@127.0.0.1:{free_port()}/0", retry_after=5, clock=clock)
    for index in range(5):
        cache.set(f"k{index}", {"n": index}, ttl=60)
        assert cache.get(f"k{index}") == {"n": index}
        clock.now += 5                              # each call retries Redis, and fails again
    assert cache.get("absent") is None
    assert cache.failures == 6
    warnings = [r for r in caplog.records if r.name == "gateway_app.cache_redis"]
    assert len(warnings) == 1
    assert "in-process cache" in warnings[0].getMessage()
    assert "hunter2" not in caplog.text


def test_redis_down_costs_no_round_trip_during_the_back_off(make_cache):
    cache = make_cache(f"redis://127.0.0.1:{free_port()}/0", retry_after=60)
    cache.get("first")                              # fails, starts the back-off
    failures = cache.failures
    for index in range(50):
        cache.get(f"k{index}")
    assert cache.failures == failures


def test_unresponsive_redis_times_out_quickly(make_cache):
    with socket.socket() as listener:               # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        cache = make_cache(f"redis://127.0.0.1:{listener.getsockname()[1]}/0", socket_timeout=0.05)
        cache.set(KEY, {"active": True}, ttl=60)      # times out once (Redis never answers), then backs off
        assert cache.get(KEY) == {"active": True}     # from memory
    assert cache.failures == 1


def test_redis_is_used_again_after_the_back_off(tmp_path, make_cache, caplog):
    caplog.set_level(logging.INFO, logger="gateway_app.cache_redis")
    port = free_port()
    clock = FakeClock(1000.0)
    cache = make_cache(f"redis://127.0.0.1:{port}/0", retry_after=5, clock=clock)
    cache.set("before", {"n": 1}, ttl=60)
    assert cache.failures == 1
    with redis_server(tmp_path, port=port):
        cache.set("during-back-off", {"n": 2}, ttl=60)
        clock.now += 5
        cache.set("after", {"n": 3}, ttl=60)
        client = redis.Redis(port=port, socket_timeout=2)
        with contextlib.closing(client):
            assert client.exists(KEY_PREFIX + "after") == 1
            assert client.exists(KEY_PREFIX + "during-back-off") == 0
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        f"token cache: Redis at 127.0.0.1:{port}/0 failed (ConnectionError)",
        f"token cache: Redis at 127.0.0.1:{port}/0 answers again",
    ]


def _introspection_answer(request, context):
    token = dict(pair.split("=", 1) for pair in request.text.split("&"))["token"]
    if token.startswith("good"):
        return {"active": True, "sub": "alice", "exp": int(time.time()) + 30}
    return {"active": False}


def _validator(cache: RedisTokenCache, cache_timeout: str = "10m", **options: t.Any) -> IntrospectionValidator:
    settings = introspection_settings(introspectionUrl=IDP, disableClientSecret=True, retries=0,
                                      cacheTimeout=cache_timeout, negativeCacheTimeout="2s")
    return IntrospectionValidator(settings, cache=cache, **options)


def test_a_token_revoked_at_the_idp_is_refused_on_real_short_3s_after_another_worker_cached_it_for_real(
        redis_url, raw, make_cache, requests_mock):
    """``real`` (10m) in one process and ``real-short`` (2s) in another share Redis: ``real-short`` asks again."""
    clock = FakeClock(1000.0)
    epoch = lambda: 1_700_000_000.0 + clock.now          # noqa: E731 - the validators' wall clock
    idp = requests_mock.post(IDP, [{"json": {"active": True, "sub": "alice"}}, {"json": {"active": False}}])
    real = _validator(make_cache(redis_url), clock=epoch)
    real_short = _validator(make_cache(redis_url), cache_timeout="2s", clock=epoch)
    assert real.validate("tok-1").subject == "alice"
    clock.now += 3                                        # revoked at the IdP meanwhile
    with pytest.raises(InvalidTokenError) as caught:
        real_short.validate("tok-1")
    assert caught.value.reason == "token_inactive"
    assert idp.call_count == 2


def test_validators_sharing_redis_ask_the_idp_once_per_token(redis_url, raw, make_cache, requests_mock):
    idp = requests_mock.post(IDP, json=_introspection_answer)
    first, second = _validator(make_cache(redis_url)), _validator(make_cache(redis_url))
    assert first.validate("good-1").subject == second.validate("good-1").subject == "alice"
    for validator in (first, second):
        with pytest.raises(InvalidTokenError):
            validator.validate("bad-1")
    assert idp.call_count == 2
    ttls = sorted(raw.pttl(key) for key in raw.keys(KEY_PREFIX + "*"))
    assert 1000 < ttls[0] <= 2000                    # the inactive answer: negativeCacheTimeout
    assert 28_000 < ttls[1] <= 30_000                # the active one: bounded by exp, not cacheTimeout
    assert all(b"good-1" not in key and b"bad-1" not in key for key in raw.keys("*"))
    first.close()
    second.close()


def _lookups_of_missing_keys(raw: redis.Redis) -> int:
    """Redis's ``keyspace_misses``: every read (GET, PTTL ...) of a key that is not there."""
    return raw.info("stats")["keyspace_misses"]


def test_a_miss_makes_one_redis_read(redis_url, raw, make_cache, requests_mock):
    requests_mock.post(IDP, json=_introspection_answer)
    validator = _validator(make_cache(redis_url))
    raw.config_resetstat()
    before = _lookups_of_missing_keys(raw)

    assert validator.validate("good-miss").subject == "alice"

    assert _lookups_of_missing_keys(raw) - before == 1, "the missing entry is looked up once"
    assert raw.keys(LOCK_PREFIX + "*") == []
    validator.close()


def test_a_failed_idp_call_releases_the_flight_so_other_workers_answer_at_once(
        redis_url, raw, make_cache, requests_mock):
    first_call = threading.Event()
    fail_now = threading.Event()

    def outage(request, context):
        if not first_call.is_set():
            first_call.set()
            fail_now.wait(10)                        # the leader's call hangs until the follower waits
        context.status_code = 503
        return {"error": "temporarily_unavailable"}

    idp = requests_mock.post(IDP, json=outage)
    leader = _validator(make_cache(redis_url))
    follower = _validator(make_cache(redis_url, flight_wait=30))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        leading = pool.submit(leader.validate, "good-outage")
        assert first_call.wait(10)
        following = pool.submit(follower.validate, "good-outage")
        fail_now.set()
        with pytest.raises(IdentityProviderError):
            leading.result(timeout=10)
        with pytest.raises(IdentityProviderError):
            following.result(timeout=10)             # long before flight_wait: the lock was released
    assert idp.call_count == 2
    assert raw.keys(LOCK_PREFIX + "*") == []
    leader.close()
    follower.close()


def test_jwt_validators_sharing_redis_check_each_signature_once(redis_url, raw, make_cache, jwt_decodes):
    jwks = jwks_json(public_jwk(rsa_key("redis-shared"), kid="k1"))
    settings = jwt_settings({"localJwks": {"inlineString": jwks}})
    first, second = (JwtValidator(settings, shared=make_cache(redis_url, prefix=JWT_KEY_PREFIX, single_flight=False))
                     for _ in range(2))
    token = make_jwt(claims(sub="alice"), rsa_key("redis-shared"), "RS256", kid="k1")

    assert first.validate(token).subject == second.validate(token).subject == "alice"
    assert jwt_decodes == [token]
    [key] = raw.keys(JWT_KEY_PREFIX + "*")
    assert 290_000 < raw.pttl(key) <= 300_000 and token.encode() not in key


def test_a_cache_without_single_flight_never_takes_a_flight_lock(redis_url, raw, make_cache):
    cache = make_cache(redis_url, prefix=JWT_KEY_PREFIX, single_flight=False)
    assert cache.get(KEY) is None
    assert raw.keys("*") == []
