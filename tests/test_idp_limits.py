"""A slow or trickling IdP must not starve the gateway (issue 12 item 11, the IdP half).

Each IdP call has a total deadline (not a per-read timeout), timeouts are retried only when
configured, and each IdP endpoint takes at most ``maxConcurrentCalls`` calls at once: the
excess answers 503 ``idp_overloaded`` (with ``Retry-After``), the slots and waiting places
shared fairly between clients (the rule is in :mod:`gateway_app.auth.idp_http`). Counts and
outcomes, no wall-clock assertions: waits are bounded, threads are daemons.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import random
import threading
import time
import typing as t

import pytest
import requests

from factories import upstream_yaml
from gateway_app.auth import idp_http
from gateway_app.auth.idp_http import CallLimit
from gateway_app.auth.idp_http import call_limit
from gateway_app.auth.idp_http import on_behalf_of
from gateway_app.auth.introspection import IntrospectionValidator
from gateway_app.errors import IdentityProviderError
from gateway_app.errors import IdpOverloadedError
from tests.support.idp_servers import HeldIdp
from tests.support.idp_servers import PlainUpstream
from tests.support.idp_servers import TricklingIdp
from tests.factories import bearer
from tests.factories import introspection_settings

IDP = "http://idp.test/introspect"
ACTIVE = b'{"active": true, "sub": "alice"}'


def validator(url: str = IDP, **fields) -> IntrospectionValidator:
    settings = introspection_settings(introspectionUrl=url, disableClientSecret=True, **fields)
    return IntrospectionValidator(settings, sleep=lambda s: None)


@pytest.mark.parametrize("where", ["head", "body"])
def test_an_idp_trickling_its_answer_is_cut_off_at_the_total_deadline(where):
    """~16 s of trickle at 20 ms a byte; each read comes fast, only the 300 ms total deadline stops it."""
    with TricklingIdp(where) as idp:
        with pytest.raises(IdentityProviderError) as caught:
            validator(f"http://127.0.0.1:{idp.port}/introspect", timeout="300ms", retries=0).validate("tok-1234")
        assert "timed out" in str(caught.value)
        assert idp.cut_off.wait(5) or idp.sent < 400     # the gateway hung up long before the answer ended


def test_an_idp_timeout_is_not_retried_by_default(requests_mock):
    idp = requests_mock.post(IDP, exc=requests.exceptions.ReadTimeout)
    with pytest.raises(IdentityProviderError):
        validator(retries=2).validate("tok-1234")
    assert idp.call_count == 1


def test_an_idp_timeout_is_retried_when_retry_on_timeout_is_set(requests_mock):
    idp = requests_mock.post(IDP, exc=requests.exceptions.ReadTimeout)
    with pytest.raises(IdentityProviderError):
        validator(retries=2, retryOnTimeout=True).validate("tok-1234")
    assert idp.call_count == 3


def test_connection_errors_are_still_retried(requests_mock):
    idp = requests_mock.post(IDP, [{"exc": requests.exceptions.ConnectionError}, {"content": ACTIVE}])
    assert validator(retries=1).validate("tok-1234").subject == "alice"
    assert idp.call_count == 2


def test_validators_of_one_endpoint_share_its_limit_and_other_endpoints_do_not():
    assert call_limit("http://idp.test/introspect?x=1", 2) is call_limit("http://idp.test/introspect", 2)
    assert call_limit("http://idp.test/other", 2) is not call_limit("http://idp.test/introspect", 2)


def test_a_call_beyond_the_limit_is_refused_as_idp_overloaded():
    limit = call_limit("http://limit.test/introspect", 1)
    with limit.slot():
        with pytest.raises(IdpOverloadedError) as caught:
            with limit.slot(wait=0):
                pass
    assert (caught.value.status_code, caught.value.reason) == (503, "idp_overloaded")
    with limit.slot(wait=0):            # the slot is free again
        pass


def test_no_more_calls_wait_for_a_slot_than_the_limit_the_next_ones_fail_at_once():
    """Red team 7: 1,024 concurrent bogus tokens kept every pool thread in 50 ms waits for a slot."""
    limit = call_limit("http://waiting-room.test/introspect", 1)
    outcomes: dict[str, str] = {}

    def call(name: str, wait: float) -> None:
        try:
            with limit.slot(wait=wait):
                outcomes[name] = "called"
        except IdpOverloadedError:
            outcomes[name] = "overloaded"

    with limit.slot():
        waiter = threading.Thread(target=call, args=("waiter", 30.0))
        waiter.start()
        while limit.waiting < 1:
            time.sleep(0.001)
        third = threading.Thread(target=call, args=("third", 30.0))
        third.start()
        third.join(timeout=5)
        finished = not third.is_alive()
    waiter.join(timeout=5)
    third.join(timeout=5)
    assert finished, "the third call waited for a slot"
    assert outcomes == {"third": "overloaded", "waiter": "called"}


def test_a_call_beyond_the_limit_waits_briefly_for_a_freed_slot():
    """Red team 8: without the wait, three users with new valid tokens at once got a spurious 503."""
    limit = call_limit("http://brief-wait.test/introspect", 1)
    held = threading.Event()
    outcome: list[str] = []

    def hold_until_someone_waits() -> None:
        with limit.slot():
            held.set()
            give_up = time.monotonic() + 5
            while limit.waiting < 1 and time.monotonic() < give_up:
                time.sleep(0.001)

    holder = threading.Thread(target=hold_until_someone_waits, daemon=True)
    holder.start()
    held.wait(timeout=5)
    try:
        with limit.slot():               # the default wait: the holder lets go once this call waits
            outcome.append("called")
    except IdpOverloadedError:
        outcome.append("overloaded")
    holder.join(timeout=5)
    assert outcome == ["called"]


AUTH_YAML = """
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: guard, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        introspection: {introspectionUrl: 'http://127.0.0.1:%d/introspect', timeout: 30s, retries: 0}
"""
VS_YAML = """
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: api, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{prefix: /secure}]
      routeAction: {single: {upstream: {name: api, namespace: gloo-system}}}
      options: {extauth: {configRef: {name: guard, namespace: gloo-system}}}
    - matchers: [{prefix: /public}]
      routeAction: {single: {upstream: {name: api, namespace: gloo-system}}}
"""


def test_a_slow_idp_with_8_concurrent_bogus_tokens_does_not_stop_the_public_route(make_app):
    """The issue's example, in-process: 8 bogus tokens at once; 2 reach the IdP, 6 get 503 at once."""
    with HeldIdp() as idp, PlainUpstream() as upstream:
        app = make_app({"upstream.yaml": upstream_yaml("api", "gloo-system", addr="127.0.0.1", port=upstream.port),
                        "vs.yaml": VS_YAML, "auth.yaml": AUTH_YAML % idp.port})

        def get(path: str, token: str | None = None) -> tuple[int, str | None]:
            headers = bearer(token) if token else {}
            response = app.test_client().get(path, headers=headers)
            return response.status_code, (response.get_json(silent=True) or {}).get("error")

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            try:
                bogus = [pool.submit(get, "/secure", f"bogus-token-{i:04d}") for i in range(8)]
                assert all(idp.entered.acquire(timeout=10) for _ in range(2))   # two calls are at the IdP
                answered = []
                for future in concurrent.futures.as_completed(bogus, timeout=10):
                    answered.append(future.result())
                    if len(answered) == 6:
                        break
                assert answered == [(503, "idp_overloaded")] * 6                 # the rest answered at once
                assert get("/public") == (200, None)                             # while the IdP holds 2
            finally:
                idp.release.set()
            assert sorted(f.result(timeout=10) for f in bogus) == [(403, "token_inactive")] * 2 \
                + [(503, "idp_overloaded")] * 6
        assert idp.calls == 2


# -- fairness between clients (CallLimit's rule, gateway_app/auth/idp_http.py) ------------------

BOUND = 5.0           # seconds: the longest any check waits for something that should happen now
CALL_WAIT = 60.0      # seconds a test call may wait for a slot: far beyond BOUND, so "at once" shows


def eventually(condition: t.Callable[[], bool]) -> bool:
    """Whether ``condition`` holds within :data:`BOUND` seconds (polled every millisecond)."""
    give_up = time.monotonic() + BOUND
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.001)
    return True


class Call:
    """One call through ``limit`` on behalf of ``client``, in a daemon thread: it holds its slot
    until :meth:`finish`; ``outcome`` is ``"called"`` or ``"overloaded"`` once ``done`` is set."""

    def __init__(self, limit: CallLimit, client: str, wait: float = CALL_WAIT) -> None:
        self.holding = threading.Event()
        self.leave = threading.Event()
        self.done = threading.Event()
        self.outcome: str | None = None
        threading.Thread(target=self.run, args=(limit, client, wait), daemon=True).start()

    def run(self, limit: CallLimit, client: str, wait: float) -> None:
        try:
            with on_behalf_of(client), limit.slot(wait=wait):
                self.holding.set()
                self.leave.wait(CALL_WAIT)
            self.outcome = "called"
        except IdpOverloadedError:
            self.outcome = "overloaded"
        finally:
            self.done.set()

    def finish(self) -> str | None:
        self.leave.set()
        self.done.wait(BOUND)
        return self.outcome


def holding(limit: CallLimit, client: str, count: int) -> list[Call]:
    calls = [Call(limit, client) for _ in range(count)]
    assert all(call.holding.wait(BOUND) for call in calls)
    return calls


def waiting(limit: CallLimit, client: str, count: int = 1) -> list[Call]:
    """``count`` calls of ``client`` that entered the waiting room (one at a time, in order)."""
    calls = []
    for _ in range(count):
        before = limit.waiting
        calls.append(Call(limit, client))
        assert eventually(lambda: limit.waiting == before + 1)
    return calls


def test_a_client_alone_uses_every_slot_at_once():
    limit = CallLimit("http://alone.test/introspect", 3)
    calls = holding(limit, "198.51.100.7", 3)
    assert limit.waiting == 0
    assert [call.finish() for call in calls] == ["called"] * 3


def test_a_freed_slot_goes_to_the_client_holding_fewest_not_to_the_flooders_older_waiter():
    limit = CallLimit("http://fewest.test/introspect", 2)
    flood = holding(limit, "203.0.113.9", 2)
    [flood_waiter] = waiting(limit, "203.0.113.9")
    [user] = waiting(limit, "198.51.100.7")

    flood[0].finish()
    assert user.holding.wait(BOUND)
    assert not flood_waiter.holding.is_set() and limit.waiting == 1

    flood[1].finish()
    assert flood_waiter.holding.wait(BOUND)              # alone in the room now: it gets the next one
    assert [call.finish() for call in (user, flood_waiter)] == ["called", "called"]


def test_a_new_client_takes_the_place_of_the_flooders_latest_waiter_which_gets_503_at_once():
    limit = CallLimit("http://evict.test/introspect", 2)
    flood = holding(limit, "203.0.113.9", 2)
    older, latest = waiting(limit, "203.0.113.9", 2)      # the room is full

    user = Call(limit, "198.51.100.7")
    assert latest.done.wait(BOUND) and latest.outcome == "overloaded"
    assert not older.done.is_set() and limit.waiting == 2

    flood[0].finish()
    assert user.holding.wait(BOUND)
    assert [call.finish() for call in (flood[1], older, user)] == ["called"] * 3


def test_a_newcomer_of_the_flooding_client_itself_is_refused_at_once():
    limit = CallLimit("http://refuse.test/introspect", 2)
    flood = holding(limit, "203.0.113.9", 2)
    room = waiting(limit, "203.0.113.9", 2)

    newcomer = Call(limit, "203.0.113.9")
    assert newcomer.done.wait(BOUND) and newcomer.outcome == "overloaded"
    assert not any(call.done.is_set() for call in room) and limit.waiting == 2
    assert [call.finish() for call in flood + room] == ["called"] * 4


def test_a_client_only_one_call_busier_than_the_newcomer_keeps_its_place():
    """Eviction needs a load difference above one: had the newcomer (load 2) taken the place of
    the busier client (load 3), that client could take it back at once, and so on in turn."""
    limit = CallLimit("http://no-ping-pong.test/introspect", 3)
    holders = holding(limit, "203.0.113.9", 2) + holding(limit, "198.51.100.7", 1)
    room = waiting(limit, "203.0.113.9") + waiting(limit, "198.51.100.7") + waiting(limit, "192.0.2.1")

    newcomer = Call(limit, "198.51.100.7")
    assert newcomer.done.wait(BOUND) and newcomer.outcome == "overloaded"
    assert not any(call.done.is_set() for call in room)
    assert [call.finish() for call in holders + room] == ["called"] * 6


class TimesOutAsTheSlotArrives(threading.Event):
    """A waiter's event whose wait lets ``holder`` hand over its slot, then reports a timeout:
    the hand-off and the timeout happen together, every time."""

    def __init__(self, holder: Call) -> None:
        super().__init__()
        self.holder = holder

    def wait(self, timeout: float | None = None) -> bool:
        self.holder.finish()
        super().wait(BOUND)
        return False


def test_a_slot_handed_over_as_the_wait_times_out_is_used_and_released_not_leaked():
    holder: list[Call] = []
    limit = CallLimit("http://race.test/introspect", 1, event=lambda: TimesOutAsTheSlotArrives(holder[0]))
    holder.append(Call(limit, "203.0.113.9"))
    assert holder[0].holding.wait(BOUND)

    with on_behalf_of("198.51.100.7"), limit.slot(wait=CALL_WAIT):
        pass                                                        # the handed-over slot
    with limit.slot(wait=0):                                        # and it was given back
        pass


@pytest.mark.parametrize("seed", range(4), ids=lambda seed: f"seed {seed}")
def test_no_slot_leaks_when_clients_acquire_and_release_at_random(seed):
    """Timeouts (waits of 0 to 2 ms) race hand-offs and evictions; afterwards every slot is free."""
    limit = CallLimit(f"http://stress-{seed}.test/introspect", 3)
    clients = ["", "203.0.113.9", "198.51.100.7", "192.0.2.1"]
    outcomes: list[str] = []

    def caller(index: int) -> None:
        rng = random.Random(seed * 100 + index)
        for _ in range(200):
            try:
                with on_behalf_of(rng.choice(clients)), limit.slot(wait=rng.choice([0, 0.0005, 0.002])):
                    time.sleep(rng.choice([0, 0, 0.0002]))
                outcomes.append("called")
            except IdpOverloadedError:
                outcomes.append("overloaded")

    threads = [threading.Thread(target=caller, args=(index,), daemon=True) for index in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert len(outcomes) == 12 * 200 and "called" in outcomes and "overloaded" in outcomes
    assert limit.waiting == 0
    with contextlib.ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(limit.slot(wait=0))                 # all three slots are free
        with pytest.raises(IdpOverloadedError):
            stack.enter_context(limit.slot(wait=0))


def test_an_idp_overloaded_answer_asks_to_retry_after_one_second(make_app):
    with HeldIdp() as idp, PlainUpstream() as upstream:
        app = make_app({"upstream.yaml": upstream_yaml("api", "gloo-system", addr="127.0.0.1", port=upstream.port),
                        "vs.yaml": VS_YAML, "auth.yaml": AUTH_YAML % idp.port})
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            try:
                held = [pool.submit(app.test_client().get, "/secure", headers=bearer(f"bogus-token-{i}"))
                        for i in range(2)]
                assert all(idp.entered.acquire(timeout=BOUND) for _ in held)   # both slots at the IdP
                response = app.test_client().get("/secure", headers=bearer("bogus-token-x"))
            finally:
                idp.release.set()
            assert [future.result(timeout=BOUND).status_code for future in held] == [403, 403]
    assert (response.status_code, response.get_json()["error"]) == (503, "idp_overloaded")
    assert response.headers["Retry-After"] == "1"


@pytest.mark.parametrize("flooder, user, evicts", [
    ("203.0.113.9", "198.51.100.7", True),
    ("2001:db8:1:2::9", "2001:db8:1:3::7", True),
    ("2001:db8:1:2::9", "2001:db8:1:2::7", False),      # one /64 is one host (RFC 6177): one client
])
def test_the_gateway_shares_idp_slots_by_the_client_address_it_computes(make_app, monkeypatch, flooder, user,
                                                                        evicts):
    """Behind a trusted proxy, the flooder and the user share one peer address and differ only in
    X-Forwarded-For: the user's call evicts the flooder's waiting one only if the gateway calls
    the IdP on behalf of the address it computes (one client for all would refuse the user), an
    IPv6 address's /64 counting as one client."""
    monkeypatch.setattr(idp_http, "QUEUE_WAIT", CALL_WAIT)       # waiters stay until the test decides
    with HeldIdp() as idp, PlainUpstream() as upstream:
        auth_yaml = (AUTH_YAML % idp.port).replace("retries: 0}", "retries: 0, maxConcurrentCalls: 1}")
        app = make_app({"upstream.yaml": upstream_yaml("api", "gloo-system", addr="127.0.0.1", port=upstream.port),
                        "vs.yaml": VS_YAML, "auth.yaml": auth_yaml}, trusted_proxies=frozenset({"127.0.0.1"}))
        limit = call_limit(f"http://127.0.0.1:{idp.port}/introspect", 1)

        def get(client: str, token: str) -> tuple[int, str | None]:
            response = app.test_client().get("/secure", headers=bearer(token, **{"X-Forwarded-For": client}))
            return response.status_code, (response.get_json(silent=True) or {}).get("error")

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            try:
                flood_held = pool.submit(get, flooder, "bogus-token-1")
                assert idp.entered.acquire(timeout=BOUND)
                flood_waiting = pool.submit(get, flooder, "bogus-token-2")
                assert eventually(lambda: limit.waiting == 1)
                user_call = pool.submit(get, user, "user-token-1")
                refused = flood_waiting if evicts else user_call
                assert refused.result(timeout=BOUND) == (503, "idp_overloaded")
                assert limit.waiting == 1                                    # the other call waits
            finally:
                idp.release.set()
            waited = user_call if evicts else flood_waiting
            assert flood_held.result(timeout=BOUND) == (403, "token_inactive")
            assert waited.result(timeout=BOUND) == (403, "token_inactive")
        assert idp.calls == 2
