"""Failure modes and faults through the Flask test client (issue 8, items 4 and 5).

The IdP, the JWKS endpoint and the upstream are requests-mock fakes; real-process faults
(hangs, resets, workers) are in ``tests/e2e/test_faults_e2e.py``.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
import requests

from gateway_app.auth.jwks import DEFAULT_MIN_FETCH_INTERVAL
from gateway_app.auth.jwks import FIRST_RETRY
from gateway_app.auth.stale import MAX_WINDOW
from gateway_app.auth.stale import StaleIfErrorValidator
from gateway_app.auth.stale import parse_stale_if_error
from gateway_app.auth.state import TokenInfo
from gateway_app.config.fields import Node
from gateway_app.errors import ConfigError
from gateway_app.errors import IdentityProviderError
from gateway_app.errors import InvalidTokenError
from gateway_app.metrics import REGISTRY
from keys import claims
from keys import jwks
from keys import make_jwt
from keys import public_jwk
from keys import rsa_key
from factories import upstream_yaml
from tests.support.clocks import FakeClock as Clock   # seconds from 1_000_000.0 in the stale-if-error tests
from tests.factories import bearer
from tests.support.regorus_engines import record_engines

IDP = "http://idp.test/introspect"
JWKS = "http://idp.test/jwks.json"
UPSTREAM = "http://upstream.test:8000"
TOKEN = "opaque-token-0123456789"

UPSTREAM_YAML = upstream_yaml("api", "gloo-system")

VS_YAML = """
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: api, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{prefix: /}]
      routeAction: {single: {upstream: {name: api, namespace: gloo-system}}}
      options:
        extauth: {configRef: {name: guard, namespace: gloo-system}}
"""

INTROSPECTION_AUTH = """
apiVersion: v1
kind: Secret
metadata: {name: idp, namespace: gloo-system}
stringData: {client-secret: s3cret-value}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: guard, namespace: gloo-system}
spec:
%(spec)s
  configs:
  - oauth2:
      accessTokenValidation:
%(validation)s
        introspection:
          introspectionUrl: http://idp.test/introspect
          clientId: gw
          clientSecretRef: {name: idp, namespace: gloo-system}
          retries: 0
          timeout: 200ms
          cacheTimeout: %(cache)s
"""

JWT_AUTH = """
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: guard, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        jwt:
          remoteJwks: {url: 'http://idp.test/jwks.json'}
"""

POLICY_AUTH = """
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: guard, namespace: gloo-system}
spec:
  configs:
  - opaAuth:
      modules: [{name: numbers, namespace: gloo-system}]
      query: data.numbers.allow
"""

POLICY = """package numbers

import rego.v1

allow if to_number(input.attributes.request.http.headers["x-n"]) > 0
"""


def _introspection_app(make_app, spec: str = "", validation: str = "", cache: str = "10m", clock=None):
    auth = INTROSPECTION_AUTH % {"spec": spec, "validation": validation, "cache": cache}
    return make_app({"upstream.yaml": UPSTREAM_YAML, "vs.yaml": VS_YAML, "auth.yaml": auth}, clock=clock)


def _active(request, context):
    if f"token={TOKEN}" in request.text:
        return {"active": True, "sub": "alice", "exp": int(time.time()) + 600}
    return {"active": False}


@pytest.fixture
def upstream(requests_mock):
    return requests_mock.get(f"{UPSTREAM}/api", text="upstream says hi")


def _get(client, token: str | None = TOKEN, **headers: str):
    if token is not None:
        headers.update(bearer(token))
    return client.get("/api", headers=headers)


# -- IdP faults -----------------------------------------------------------------------------

@pytest.mark.parametrize("answer", [
    {"text": '{"active": true, "sub": "alice"', "headers": {"Content-Type": "application/json"}},
    {"text": '{"active": NaN}', "headers": {"Content-Type": "application/json"}},
    {"json": ["active", True]},
    {"json": {"active": 1}},
    {"status_code": 502, "text": "bad gateway"},
    {"status_code": 401, "json": {"error": "invalid_client"}},
    {"status_code": 302, "headers": {"Location": "http://login.test/"}},
    {"exc": requests.exceptions.ReadTimeout},
    {"exc": requests.exceptions.ConnectionError},
    {"exc": requests.exceptions.ChunkedEncodingError},
], ids=["truncated JSON", "NaN", "a list", "active as a number", "502", "401", "redirect",
        "slower than the timeout", "refused", "reset mid-answer"])
def test_idp_faults_answer_503_without_forwarding(make_app, requests_mock, upstream, answer):
    client = _introspection_app(make_app).test_client()
    requests_mock.post(IDP, **answer)
    response = _get(client)
    assert response.status_code == 503
    assert response.get_json()["error"] == "idp_unavailable"
    assert TOKEN not in response.get_data(as_text=True)
    assert not upstream.called


def test_flapping_idp_failures_are_not_cached_and_the_gateway_recovers(make_app, requests_mock, upstream):
    client = _introspection_app(make_app).test_client()
    idp = requests_mock.post(IDP, [
        {"exc": requests.exceptions.ConnectionError}, {"status_code": 500, "text": "x"}, {"json": _active},
        {"exc": requests.exceptions.ConnectionError},
    ])
    assert [_get(client).status_code for _ in range(4)] == [503, 503, 200, 200]
    assert idp.call_count == 3          # the fourth request is a cache hit: the IdP's outage is not seen


def test_an_idp_slower_than_its_timeout_answers_503_in_bounded_time(make_app, requests_mock, upstream):
    client = _introspection_app(make_app).test_client()

    def slow(request, context):
        assert all(0.1 < part <= 0.2 for part in request.timeout)   # the configured deadline bounds each read
        raise requests.exceptions.ReadTimeout("read timed out")

    idp = requests_mock.post(IDP, json=slow)
    assert _get(client).status_code == 503
    assert idp.call_count == 1                       # a timeout is not retried by default (retryOnTimeout)


# -- failureModeAllow and statusOnError -----------------------------------------------------

def test_failure_mode_allow_forwards_when_the_idp_is_down(make_app, requests_mock, upstream, caplog):
    client = _introspection_app(make_app, spec="  failureModeAllow: true").test_client()
    requests_mock.post(IDP, exc=requests.exceptions.ConnectionError)
    with caplog.at_level(logging.WARNING, logger="gateway_app"):
        response = _get(client)
    assert response.status_code == 200
    assert upstream.called
    assert "failureModeAllow" in caplog.text


def test_failure_mode_allow_still_refuses_missing_and_inactive_tokens(make_app, requests_mock, upstream):
    client = _introspection_app(make_app, spec="  failureModeAllow: true").test_client()
    requests_mock.post(IDP, json=_active)
    assert _get(client, token=None).status_code == 403
    assert _get(client, token="inactive-token-123").status_code == 403
    assert not upstream.called


@pytest.mark.parametrize("status", [500, 502, 504, 429])
def test_status_on_error_sets_the_status_when_the_idp_is_down(make_app, requests_mock, upstream, status):
    client = _introspection_app(make_app, spec=f"  statusOnError: {status}").test_client()
    requests_mock.post(IDP, exc=requests.exceptions.ConnectionError)
    response = _get(client)
    assert response.status_code == status
    assert response.get_json()["error"] == "idp_unavailable"
    assert not upstream.called


def test_status_on_error_does_not_change_invalid_token_answers(make_app, requests_mock, upstream):
    client = _introspection_app(make_app, spec="  statusOnError: 500").test_client()
    requests_mock.post(IDP, json=_active)
    assert _get(client, token="inactive-token-123").status_code == 403


@pytest.mark.parametrize("value", [200, 302, 600, "soon"])
def test_status_on_error_outside_4xx_and_5xx_is_a_config_error(make_app, value):
    with pytest.raises(ConfigError, match="statusOnError"):
        _introspection_app(make_app, spec=f"  statusOnError: {value}")


# -- stale-if-error ---------------------------------------------------------------------------

class ScriptedValidator:
    """Answers from a list: a TokenInfo, or an exception to raise."""

    def __init__(self, *answers):
        self.answers = list(answers)

    def validate(self, token):
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def stale_served() -> float:
    """Answers served stale so far, as the metrics export them."""
    return REGISTRY.get_sample_value("gateway_stale_if_error_served_total") or 0.0


def _info(exp_in: float, clock: Clock) -> TokenInfo:
    return TokenInfo(claims={"sub": "alice"}, kind="introspection", expires_at=clock.now + exp_in)


def test_stale_if_error_serves_a_recent_active_answer_while_the_idp_is_down():
    clock = Clock(1_000_000.0)
    info = _info(600, clock)
    validator = StaleIfErrorValidator(ScriptedValidator(info, IdentityProviderError()), 60, clock=clock)
    counted_before = stale_served()
    assert validator.validate(TOKEN) is info
    clock.now += 59
    assert validator.validate(TOKEN) is info
    assert stale_served() == counted_before + 1


def test_stale_if_error_ends_with_its_window():
    clock = Clock(1_000_000.0)
    validator = StaleIfErrorValidator(ScriptedValidator(_info(600, clock), IdentityProviderError()), 60, clock=clock)
    validator.validate(TOKEN)
    clock.now += 61
    counted_before = stale_served()
    with pytest.raises(IdentityProviderError):
        validator.validate(TOKEN)
    assert stale_served() == counted_before


def test_stale_if_error_never_serves_a_token_past_its_exp():
    clock = Clock(1_000_000.0)
    validator = StaleIfErrorValidator(ScriptedValidator(_info(10, clock), IdentityProviderError()), 60, clock=clock)
    validator.validate(TOKEN)
    clock.now += 11
    with pytest.raises(IdentityProviderError):
        validator.validate(TOKEN)


def test_stale_if_error_forgets_a_token_the_idp_called_inactive():
    clock = Clock(1_000_000.0)
    inner = ScriptedValidator(_info(600, clock), InvalidTokenError(reason="token_inactive"), IdentityProviderError())
    validator = StaleIfErrorValidator(inner, 60, clock=clock)
    validator.validate(TOKEN)
    with pytest.raises(InvalidTokenError):
        validator.validate(TOKEN)
    with pytest.raises(IdentityProviderError):
        validator.validate(TOKEN)


def test_stale_if_error_does_not_help_tokens_it_never_saw():
    validator = StaleIfErrorValidator(ScriptedValidator(IdentityProviderError()), 60)
    with pytest.raises(IdentityProviderError):
        validator.validate("never-seen-token-1234")


def test_stale_if_error_memory_is_bounded():
    clock = Clock(1_000_000.0)
    inner = ScriptedValidator(*[_info(600, clock) for _ in range(3)], IdentityProviderError())
    validator = StaleIfErrorValidator(inner, 60, max_entries=2, clock=clock)
    for token in ("token-a-123456", "token-b-123456", "token-c-123456"):
        validator.validate(token)
    with pytest.raises(IdentityProviderError):
        validator.validate("token-a-123456")


@pytest.mark.parametrize(("data", "kind", "expected"), [
    ({}, "introspection", None), ({"staleIfError": "0s"}, "introspection", None),
    ({"staleIfError": "60s"}, "introspection", 60.0), ({"staleIfError": "5m"}, "introspection", 300.0),
], ids=["off by default", "zero is off", "sixty seconds", "the maximum"])
def test_stale_if_error_setting_is_read_in_seconds(data, kind, expected):
    assert parse_stale_if_error(Node(data, "auth.yaml"), kind) == expected


@pytest.mark.parametrize(("data", "kind"), [
    ({"staleIfError": "301s"}, "introspection"), ({"staleIfError": "soon"}, "introspection"),
    ({"staleIfError": "60s"}, "jwt"),
], ids=["above the bound", "not a duration", "on a JWT validator"])
def test_stale_if_error_setting_refuses_bad_values(data, kind):
    with pytest.raises(ConfigError, match="staleIfError"):
        parse_stale_if_error(Node(data, "auth.yaml"), kind)
    assert MAX_WINDOW == 300


def test_stale_if_error_through_the_app_keeps_a_cached_token_working(make_app, requests_mock, upstream, clock):
    client = _introspection_app(make_app, validation="        staleIfError: 60s", cache="1s",
                                clock=clock).test_client()
    idp = requests_mock.post(IDP, json=_active)
    assert _get(client).status_code == 200
    clock.advance(1)                                 # the cache entry expires; the IdP goes down
    idp = requests_mock.post(IDP, exc=requests.exceptions.ConnectionError)
    assert _get(client).status_code == 200
    assert idp.call_count == 1
    assert _get(client, token="unknown-token-12345").status_code == 503


# -- JWKS down during key rotation ----------------------------------------------------------

def test_jwks_down_during_rotation_keeps_old_keys_and_recovers(make_app, requests_mock, upstream):
    old, new = rsa_key("rotation-old"), rsa_key("rotation-new")
    jwks_endpoint = requests_mock.get(JWKS, json=jwks(public_jwk(old, kid="old", alg="RS256")))
    clock = Clock(time.time())                       # the tokens' iat and exp are real times
    app = make_app({"upstream.yaml": UPSTREAM_YAML, "vs.yaml": VS_YAML, "auth.yaml": JWT_AUTH}, clock=clock)
    client = app.test_client()
    old_token = make_jwt(claims(iss=None, aud=None), old, kid="old")
    new_token = make_jwt(claims(iss=None, aud=None), new, kid="new")
    assert _get(client, old_token).status_code == 200

    requests_mock.get(JWKS, exc=requests.exceptions.ConnectionError)      # rotation starts, JWKS is down
    assert _get(client, old_token).status_code == 200
    refused = _get(client, new_token)
    assert refused.status_code == 403 and refused.get_json()["error"] == "kid_unknown"

    requests_mock.get(JWKS, json=jwks(public_jwk(old, kid="old", alg="RS256"), public_jwk(new, kid="new", alg="RS256")))
    clock.advance(DEFAULT_MIN_FETCH_INTERVAL)        # the next re-fetch for an unknown kid is allowed
    assert _get(client, new_token).status_code == 200
    assert _get(client, old_token).status_code == 200
    assert jwks_endpoint.call_count == 1


def test_jwks_down_at_start_answers_503_then_recovers(make_app, requests_mock, upstream):
    key = rsa_key("late-start")
    clock = Clock(time.time())                       # the token's iat and exp are real times
    requests_mock.get(JWKS, exc=requests.exceptions.ConnectTimeout)
    app = make_app({"upstream.yaml": UPSTREAM_YAML, "vs.yaml": VS_YAML, "auth.yaml": JWT_AUTH}, clock=clock)
    token = make_jwt(claims(iss=None, aud=None), key, kid="k1")
    assert _get(app.test_client(), token).status_code == 503
    requests_mock.get(JWKS, json=jwks(public_jwk(key, kid="k1", alg="RS256")))
    assert _get(app.test_client(), token).status_code == 503    # within the retry delay: no new fetch
    clock.advance(FIRST_RETRY)
    assert _get(app.test_client(), token).status_code == 200


# -- Rego evaluation errors and engine panics -------------------------------------------------

def _policy_client(make_app):
    app = make_app({"upstream.yaml": UPSTREAM_YAML, "vs.yaml": VS_YAML, "auth.yaml": POLICY_AUTH},
                   rego={"numbers.rego": POLICY})
    return app.test_client()


@pytest.fixture
def policy_client(make_app, upstream):
    return _policy_client(make_app)


def test_a_rego_evaluation_error_denies_that_request_only(policy_client, upstream):
    error = policy_client.get("/api", headers={"x-n": "not-a-number"})
    assert error.status_code == 403
    assert error.get_json()["error"] == "policy_error"
    assert policy_client.get("/api", headers={"x-n": "-1"}).status_code == 403
    assert policy_client.get("/api", headers={"x-n": "7"}).status_code == 200
    assert upstream.call_count == 1


def test_an_engine_panic_denies_the_request_and_the_next_one_gets_a_fresh_engine(make_app, monkeypatch,
                                                                              upstream):
    engines = record_engines(monkeypatch)                  # before the app builds its engines
    client = _policy_client(make_app)
    engines.panic_next("thread 'main' panicked at src/interpreter.rs")

    response = client.get("/api", headers={"x-n": "7"})
    assert response.status_code == 403
    assert response.get_json()["error"] == "policy_error"
    assert [life for life in engines.lives if life.panic]
    assert client.get("/api", headers={"x-n": "7"}).status_code == 200    # the poisoned engine would panic again
    assert upstream.call_count == 1


# -- upstream faults ----------------------------------------------------------------------------

@pytest.mark.parametrize(("fault", "status", "reason"), [
    (requests.exceptions.ConnectionError(ConnectionRefusedError(111, "refused")), 502, "upstream_unavailable"),
    (requests.exceptions.ConnectionError(ConnectionResetError(104, "reset")), 502, "upstream_unavailable"),
    (requests.exceptions.ConnectTimeout(), 504, "upstream_timeout"),
    (requests.exceptions.ReadTimeout(), 504, "upstream_timeout"),
], ids=["refused", "reset", "connect timeout", "read timeout"])
def test_upstream_faults_answer_the_documented_status(make_app, requests_mock, fault, status, reason):
    vs = VS_YAML.replace("      options:\n        extauth: {configRef: {name: guard, namespace: gloo-system}}\n", "")
    client = make_app({"upstream.yaml": UPSTREAM_YAML, "vs.yaml": vs}).test_client()
    requests_mock.get(f"{UPSTREAM}/api", exc=fault)
    response = client.get("/api")
    assert response.status_code == status
    body = response.get_json()
    assert body["error"] == reason and "upstream.test" not in json.dumps(body)
