"""Nothing a client, an IdP or a JWKS endpoint sends produces a 500 (issue 12, items 8 and 12).

Through the Flask test client, with requests-mock standing in for the IdP and the JWKS
endpoint: malformed JSON (deep nesting, huge numbers, non-UTF-8, non-objects), claims of the
wrong type, oversized or HTML answers. Each gets a designed status and a stable reason. The
property tests feed arbitrary signed claims, introspection bodies and JWKS documents.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
import requests_mock as requests_mock_module
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from factories import upstream_yaml
from gateway_app.auth.jwks import load_jwks_json
from keys import b64url
from keys import claims
from keys import jwks
from keys import jwks_json
from keys import public_jwk
from keys import raw_jwt
from keys import rsa_key
from tests.factories import bearer

UPSTREAM = "http://upstream.test:8000"
IDP = "http://idp.internal.test:4445/introspect"
JWKS_URL = "http://idp.internal.test:4444/jwks.json"
TOKEN = "opaque-token-0123456789"
KEY = rsa_key("idp-input")
PROPERTY = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

AUTH_YAML = """
apiVersion: v1
kind: Secret
metadata: {name: idp, namespace: gloo-system}
stringData: {client-secret: s3cret-value}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: opaque, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        introspection:
          introspectionUrl: %(idp)s
          clientId: gw
          clientSecretRef: {name: idp, namespace: gloo-system}
          retries: 0
          negativeCacheTimeout: 0s
          cacheTimeout: 0s
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: signed, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        jwt:
          localJwks: {inlineString: '%(jwks)s'}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: remote, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        jwt:
          remoteJwks: {url: '%(jwks_url)s'}
"""

VS_YAML = """
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: api, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{prefix: /opaque}]
      routeAction: {single: {upstream: {name: api, namespace: gloo-system}}}
      options: {extauth: {configRef: {name: opaque, namespace: gloo-system}}}
    - matchers: [{prefix: /jwt}]
      routeAction: {single: {upstream: {name: api, namespace: gloo-system}}}
      options: {extauth: {configRef: {name: signed, namespace: gloo-system}}}
    - matchers: [{prefix: /remote}]
      routeAction: {single: {upstream: {name: api, namespace: gloo-system}}}
      options: {extauth: {configRef: {name: remote, namespace: gloo-system}}}
"""

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
CLAIM_NAMES = st.sampled_from(["exp", "nbf", "iat", "aud", "iss", "sub", "jti", "client_id", "scope", "scp",
                               "username", "token_type", "active", "groups"])


@pytest.fixture
def make_client(make_app, requests_mock):
    """``make_client(jwks_answer)``: a test client whose remote JWKS answers ``jwks_answer`` at start-up."""

    def make(jwks_answer: dict | None = None):
        requests_mock.register_uri(requests_mock_module.ANY, requests_mock_module.ANY, text="upstream")
        requests_mock.get(JWKS_URL, **(jwks_answer or {"json": jwks(public_jwk(KEY, kid="main"))}))
        auth = AUTH_YAML % {"idp": IDP, "jwks_url": JWKS_URL,
                            "jwks": jwks_json(public_jwk(KEY, kid="main", alg="RS256"))}
        app = make_app({"upstream.yaml": upstream_yaml("api", "gloo-system", addr="upstream.test"),
                        "vs.yaml": VS_YAML, "auth.yaml": auth})
        return app.test_client()

    return make


@pytest.fixture
def client(make_client):
    return make_client()



def refused(response, status: int, reason: str) -> None:
    assert (response.status_code, response.get_json()["error"]) == (status, reason), response.get_data()


def signed(**overrides) -> str:
    """Valid claims with ``overrides``, signed as they are (PyJWT's encoder refuses some mistyped claims)."""
    return signed_raw_payload(json.dumps(claims(**{"iss": None, "aud": None, **overrides})).encode())


def signed_raw_payload(payload: bytes) -> str:
    """A JWT over exactly ``payload`` bytes, correctly signed (json.dumps cannot write every payload)."""
    import jwt as pyjwt
    return pyjwt.PyJWS().encode(payload, KEY, algorithm="RS256", headers={"kid": "main"})


# -- the examples ----------------------------------------------------------------

def test_jwt_header_nesting_arrays_1200_deep_is_refused_without_a_traceback(client, caplog):
    header = b64url(b"[" * 1200 + b"]" * 1200)
    with caplog.at_level(logging.DEBUG):
        response = client.get("/jwt", headers=bearer(f"{header}.eyJzdWIiOiJ4In0.c2ln"))
    refused(response, 403, "token_malformed")
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text


def test_signed_jwt_whose_exp_has_400_digits_is_refused_as_token_claims_invalid(client):
    payload = b'{"sub": "alice", "exp": ' + b"9" * 400 + b"}"
    refused(client.get("/jwt", headers=bearer(signed_raw_payload(payload))), 403, "token_claims_invalid")


def test_active_introspection_answer_whose_exp_has_400_digits_is_refused_as_token_claims_invalid(
        client, requests_mock):
    requests_mock.post(IDP, text='{"active": true, "sub": "alice", "exp": ' + "9" * 400 + "}",
                       headers={"Content-Type": "application/json"})
    refused(client.get("/opaque", headers=bearer(TOKEN)), 403, "token_claims_invalid")


# -- claims of the wrong type (RFC 7519 §4.1), one validator for both paths ----------------

WRONG_CLAIMS = {
    "exp a string": {"exp": "tomorrow"},
    "exp a boolean": {"exp": True},
    "exp negative": {"exp": -5},
    "exp beyond year 9999": {"exp": 1e300},
    "nbf a list": {"nbf": [1]},
    "iat an object": {"iat": {"t": 1}},
    "aud a number": {"aud": 7},
    "aud a list holding a number": {"aud": ["api", 7]},
    "aud a list holding an object": {"aud": [{"a": 1}]},
    "iss a number": {"iss": 1},
    "sub a list": {"sub": ["alice"]},
    "client_id a number": {"client_id": 42},
    "scope a list": {"scope": ["read"]},
    "scp an object": {"scp": {"read": True}},
}


@pytest.mark.parametrize("overrides", list(WRONG_CLAIMS.values()), ids=list(WRONG_CLAIMS))
def test_a_signed_jwt_with_a_mistyped_claim_is_refused_as_token_claims_invalid(client, overrides):
    refused(client.get("/jwt", headers=bearer(signed(**overrides))), 403, "token_claims_invalid")


@pytest.mark.parametrize("overrides", list(WRONG_CLAIMS.values()), ids=list(WRONG_CLAIMS))
def test_an_active_introspection_answer_with_a_mistyped_claim_is_refused_as_token_claims_invalid(
        client, requests_mock, overrides):
    requests_mock.post(IDP, json={"active": True, "sub": "alice", "exp": int(time.time()) + 60, **overrides})
    refused(client.get("/opaque", headers=bearer(TOKEN)), 403, "token_claims_invalid")


@pytest.mark.parametrize("overrides", [
    {"aud": ["api://a", "api://b"]}, {"scp": ["read", "write"]}, {"scp": "read"}, {"exp": 4102444800.5},
    {"groups": [{"deep": [1, 2]}]}, {"client_id": "svc", "username": "alice", "token_type": "Bearer"},
], ids=["aud an array", "Okta scp array", "scp a string", "fractional exp", "nested private claim", "strings"])
def test_well_typed_claims_are_accepted_on_both_paths(client, requests_mock, overrides):
    exp = overrides.pop("exp", int(time.time()) + 60)
    assert client.get("/jwt", headers=bearer(signed(exp=exp, **overrides))).status_code == 200
    requests_mock.post(IDP, json={"active": True, "sub": "alice", "exp": exp, **overrides})
    assert client.get("/opaque", headers=bearer(TOKEN)).status_code == 200


# -- malformed IdP and JWKS answers ----------------------------------------------------------

BAD_ANSWERS = {
    "nested 1,200 deep": {"text": '{"active": true, "x": ' + "[" * 1200 + "]" * 1200 + "}"},
    "an integer of 5,000 digits": {"text": '{"active": true, "n": ' + "1" * 5000 + "}"},
    "a number that overflows a double": {"text": '{"active": true, "exp": 1e400}'},
    "not UTF-8": {"content": b'{"active": true, "sub": "\xff\xfe"}'},
    "a JSON string": {"text": '"active"'},
    "an HTML login page": {"text": "<html>login</html>", "headers": {"Content-Type": "text/html"}},
    "two megabytes": {"text": '{"active": true, "pad": "' + "x" * (2 << 20) + '"}'},
}


@pytest.mark.parametrize("answer", list(BAD_ANSWERS.values()), ids=list(BAD_ANSWERS))
def test_a_malformed_introspection_answer_is_an_idp_error(client, requests_mock, answer):
    requests_mock.post(IDP, **{"headers": {"Content-Type": "application/json"}, **answer})
    refused(client.get("/opaque", headers=bearer(TOKEN)), 503, "idp_unavailable")


BAD_JWKS = {
    "nested 1,200 deep": {"text": '{"keys": ' + "[" * 1200 + "]" * 1200 + "}"},
    "a huge number": {"text": '{"keys": [{"kty": "RSA", "n": ' + "1" * 5000 + ', "e": "AQAB"}]}'},
    "not an object": {"json": [1, 2, 3]},
    "keys of the wrong types": {"json": {"keys": [{"kty": ["RSA"], "n": 1, "e": None},
                                                  {"kty": "EC", "crv": {"x": 1}, "x": [], "y": 2},
                                                  {"kty": "RSA", "n": "!!", "e": "AQAB", "kid": 3},
                                                  {"kty": "OKP", "crv": "Ed25519", "x": 12}]}},
    "not UTF-8": {"content": b'{"keys": ["\xff"]}'},
    "an HTML page": {"text": "<html>down</html>", "headers": {"Content-Type": "text/html"}},
    "one megabyte": {"text": '{"keys": [], "pad": "' + "x" * (1 << 20) + '"}'},
}


@pytest.mark.parametrize("answer", list(BAD_JWKS.values()), ids=list(BAD_JWKS))
def test_a_malformed_jwks_is_an_idp_error(make_client, requests_mock, answer):
    client = make_client(answer)
    assert requests_mock.request_history[-1].url == JWKS_URL         # fetched (and refused) at start-up
    refused(client.get("/remote", headers=bearer(signed())), 503, "idp_unavailable")


def test_a_well_formed_remote_jwks_verifies(client):
    assert client.get("/remote", headers=bearer(signed())).status_code == 200


# -- properties: whatever the peers send, a designed status ----------------------------------

def test_any_signed_claims_get_a_designed_status(client):
    @PROPERTY
    @given(payload=st.one_of(JSON_VALUES, st.dictionaries(CLAIM_NAMES, JSON_VALUES, max_size=6)))
    def check(payload):
        response = client.get("/jwt", headers=bearer(signed_raw_payload(json.dumps(payload).encode())))
        assert response.status_code in (200, 403), response.get_data()

    check()


def test_any_introspection_body_gets_a_designed_status(client, requests_mock):
    @PROPERTY
    @given(body=st.one_of(st.binary(max_size=200),
                          JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                          st.dictionaries(CLAIM_NAMES, JSON_VALUES, max_size=6).map(
                              lambda d: json.dumps({"active": True, **d}).encode())))
    def check(body):
        requests_mock.post(IDP, content=body, headers={"Content-Type": "application/json"})
        response = client.get("/opaque", headers=bearer(TOKEN))
        assert response.status_code in (200, 403, 503), response.get_data()

    check()


def test_any_jwks_document_is_parsed_or_refused_with_a_value_error():
    rsa = public_jwk(KEY, kid="main")

    @PROPERTY
    @given(document=st.one_of(
        st.binary(max_size=200),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.lists(st.dictionaries(st.sampled_from(list(rsa) + ["crv", "x", "y", "key_ops"]),
                                 st.one_of(JSON_VALUES, st.sampled_from(list(rsa.values()))), max_size=7),
                 max_size=3).map(lambda keys: json.dumps(jwks(*keys)).encode())))
    def check(document):
        try:
            load_jwks_json(document)
        except ValueError:
            pass

    check()
