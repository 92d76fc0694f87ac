"""TTLCache: absolute deadlines, never slid by hits, LRU-bounded; short negative entries."""

from __future__ import annotations

import time

import pytest

from gateway_app.auth.introspection import IntrospectionValidator
from gateway_app.cache import TTLCache
from gateway_app.cache import KeyHasher
from gateway_app.cache import hash_key
from gateway_app.errors import InvalidTokenError
from tests.factories import introspection_settings

URL = "http://idp.test/oauth2/introspect"


def test_entry_is_served_until_its_ttl_and_not_after(clock):
    cache: TTLCache[str] = TTLCache(10, clock=clock)
    cache.set("k", "v", ttl=30)
    clock.advance(29.9)
    assert cache.get("k") == "v"
    clock.advance(0.1)
    assert cache.get("k") is None
    assert len(cache) == 0


def test_hits_never_extend_an_entrys_life(clock):
    cache: TTLCache[str] = TTLCache(10, clock=clock)
    cache.set("k", "v", ttl=10)
    for _ in range(9):
        clock.advance(1)
        assert cache.get("k") == "v"
    assert cache.remaining("k") == pytest.approx(1)
    clock.advance(1)
    assert cache.get("k") is None


def test_setting_again_replaces_the_deadline(clock):
    cache: TTLCache[str] = TTLCache(10, clock=clock)
    cache.set("k", "old", ttl=100)
    cache.set("k", "new", ttl=5)
    clock.advance(5)
    assert cache.get("k") is None


def test_zero_or_negative_ttl_stores_nothing(clock):
    cache: TTLCache[str] = TTLCache(10, clock=clock)
    cache.set("a", "v", ttl=0)
    cache.set("b", "v", ttl=-1)
    assert (cache.get("a"), cache.get("b"), len(cache)) == (None, None, 0)


def test_least_recently_used_entry_is_evicted_beyond_max_entries(clock):
    cache: TTLCache[int] = TTLCache(3, clock=clock)
    for index, key in enumerate("abc"):
        cache.set(key, index, ttl=60)
    assert cache.get("a") == 0                 # "a" is now the most recently used
    cache.set("d", 3, ttl=60)
    assert len(cache) == 3
    assert cache.get("b") is None
    assert [cache.get(k) for k in "acd"] == [0, 2, 3]


def test_an_entry_is_served_until_its_deadline_and_gone_after(clock):
    cache: TTLCache[str] = TTLCache(10, clock=clock)
    cache.set("k", "v", ttl=1)
    assert (cache.get("k"), cache.get("absent")) == ("v", None)
    clock.advance(2)
    assert cache.get("k") is None and len(cache) == 0


def test_max_entries_below_one_is_refused():
    with pytest.raises(ValueError):
        TTLCache(0)


def test_hash_key_is_unambiguous_and_hides_its_parts():
    assert hash_key("ab", "c") != hash_key("a", "bc")
    assert hash_key("a", "b") == hash_key(b"a", b"b")
    key = hash_key("fingerprint", "ory_at_secret-token")
    assert "secret-token" not in key and len(key) == 64


def test_key_hasher_gives_hash_key_of_its_prefix_and_the_part():
    hasher = KeyHasher("fingerprint")
    assert hasher("ory_at_secret-token") == hash_key("fingerprint", "ory_at_secret-token")
    assert hasher("ory_at_secret-token") == hasher("ory_at_secret-token")     # the prefix is not consumed
    assert hasher("b") != KeyHasher("fingerprint", "b")("")
    assert KeyHasher("a", "b")("c") == hash_key("a", "b", "c")


def make_settings(**fields):
    return introspection_settings(introspectionUrl=URL, disableClientSecret=True, **fields)


def _answer(request, context):
    token = dict(pair.split("=", 1) for pair in request.text.split("&"))["token"]
    if token == "active-token":
        return {"active": True, "sub": "alice", "exp": int(time.time()) + 3600}
    return {"active": False}


def test_inactive_answers_are_cached_briefly_and_active_ones_until_cache_timeout(requests_mock, clock):
    idp = requests_mock.post(URL, json=_answer)
    settings = make_settings(cacheTimeout="60s", negativeCacheTimeout="2s", retries=0)
    cache: TTLCache[dict] = TTLCache(100, clock=clock)
    validator = IntrospectionValidator(settings, cache=cache, clock=time.time)
    validator.validate("active-token")
    with pytest.raises(InvalidTokenError):
        validator.validate("inactive-token")
    assert idp.call_count == 2
    keys = {token: hash_key(settings.fingerprint, token) for token in ("active-token", "inactive-token")}
    assert cache.remaining(keys["inactive-token"]) == pytest.approx(2)
    assert cache.remaining(keys["active-token"]) == pytest.approx(60, abs=1)
    clock.advance(2)
    with pytest.raises(InvalidTokenError):
        validator.validate("inactive-token")       # asked again: the negative entry is gone
    validator.validate("active-token")            # still cached
    assert idp.call_count == 3
    validator.close()
