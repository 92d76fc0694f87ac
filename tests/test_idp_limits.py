"""A slow or trickling IdP must not starve the gateway (issue 12 item 11, the IdP half).

Each IdP call has a total deadline (not a per-read timeout), timeouts are retried only when
configured, and each IdP endpoint takes at most ``maxConcurrentCalls`` calls at once: the
excess answers 503 ``idp_overloaded`` at once. Counts and outcomes, no wall-clock assertions.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest
import requests

from factories import upstream_yaml
from gateway_app.auth.idp_http import call_limit
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
