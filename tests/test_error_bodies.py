"""Nothing internal in answers (issue 12 item 9): error bodies and WWW-Authenticate never carry
internal URLs, host names, expected issuers or policy source; the log has the detail."""

from __future__ import annotations

import logging

import pytest
import requests
import requests_mock as requests_mock_module

from factories import upstream_yaml
from keys import claims
from keys import jwks_json
from keys import make_jwt
from keys import public_jwk
from keys import rsa_key
from tests.factories import bearer

INTERNAL = "corp.internal"
JWKS_URL = "http://jwks.corp.internal:8443/keys"
DISCOVERY = "http://sso.corp.internal:8443/realms/x"
IDP = "http://idp.corp.internal:4445/introspect"
ISSUER = "https://issuer.corp.internal/"
UPSTREAM_HOST = "backend.corp.internal"
KEY = rsa_key("error-bodies")
CLAIMS_CONDITION = 'input.claims.tenant == "secret-tenant-name"'

AUTH_YAML = """
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: %(name)s, namespace: gloo-system}
spec:
  authenticationFailureStatus: 401
  realm: api
  configs:
  - oauth2:
      accessTokenValidation:
%(validation)s
"""
VALIDATIONS = {
    "remote": "        jwt: {remoteJwks: {url: '%s'}}" % JWKS_URL,
    "discovery": "        jwt: {discovery: {issuerUrl: '%s'}}" % DISCOVERY,
    "issuer": "        jwt: {localJwks: {inlineString: '%s'}, issuer: '%s'}"
              % (jwks_json(public_jwk(KEY, kid="main")), ISSUER),
    "condition": "        jwt: {localJwks: {inlineString: '%s'}}\n        claims: '%s'"
                 % (jwks_json(public_jwk(KEY, kid="main")), CLAIMS_CONDITION),
    "opaque": "        introspection: {introspectionUrl: '%s', retries: 0, timeout: 200ms}" % IDP,
}
VS_YAML = """
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: api, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
%s
    - matchers: [{prefix: /open}]
      routeAction: {single: {upstream: {name: api, namespace: gloo-system}}}
""" % "\n".join(f"""    - matchers: [{{prefix: /{name}}}]
      routeAction: {{single: {{upstream: {{name: api, namespace: gloo-system}}}}}}
      options: {{extauth: {{configRef: {{name: {name}, namespace: gloo-system}}}}}}""" for name in VALIDATIONS)


@pytest.fixture
def client(make_app, requests_mock):
    requests_mock.get(JWKS_URL, exc=requests.exceptions.ConnectionError(f"cannot reach {JWKS_URL}"))
    requests_mock.get(DISCOVERY + "/.well-known/openid-configuration",
                      json={"issuer": "https://other.corp.internal/", "jwks_uri": JWKS_URL})
    requests_mock.post(IDP, status_code=500, text=f"upstream connect error to {IDP}")
    requests_mock.register_uri(requests_mock_module.ANY, f"http://{UPSTREAM_HOST}:8000/open",
                               exc=requests.exceptions.ConnectionError(f"refused by {UPSTREAM_HOST}"))
    auth = "---".join(AUTH_YAML % {"name": name, "validation": text} for name, text in VALIDATIONS.items())
    app = make_app({"upstream.yaml": upstream_yaml("api", "gloo-system", addr=UPSTREAM_HOST),
                    "vs.yaml": VS_YAML, "auth.yaml": auth})
    return app.test_client()


def token(**overrides) -> str:
    return make_jwt(claims(**{"iss": ISSUER, "aud": None, **overrides}), KEY)


CASES = {
    "JWKS outage": ("/remote", token(), 503, "idp_unavailable"),
    "discovery naming another issuer": ("/discovery", token(), 503, "idp_unavailable"),
    "introspection 500 echoing its URL": ("/opaque", "opaque-token-123", 503, "idp_unavailable"),
    "issuer mismatch": ("/issuer", token(iss="https://evil.example/"), 401, "issuer_mismatch"),
    "claims condition false": ("/condition", token(tenant="other"), 403, "claims_mismatch"),
    "upstream refused": ("/open", None, 502, "upstream_unavailable"),
}


@pytest.mark.parametrize("path, token, status, reason", list(CASES.values()), ids=list(CASES))
def test_no_error_body_or_challenge_names_an_internal_host_issuer_or_policy(client, path, token, status, reason):
    headers = bearer(token) if token else {}
    response = client.get(path, headers=headers)
    assert (response.status_code, response.get_json()["error"]) == (status, reason)
    visible = response.get_data(as_text=True) + response.headers.get("WWW-Authenticate", "")
    for secret in (INTERNAL, ":8443", ":4445", ISSUER, "secret-tenant-name", "http://"):
        assert secret not in visible


def test_a_jwks_outage_answers_503_without_the_jwks_url(client):
    """The issue's example: today ``JWKS fetch from http://jwks.corp.internal:8443/keys failed``."""
    response = client.get("/remote", headers=bearer(token()))
    assert response.status_code == 503
    assert response.get_json()["message"] == "the identity provider is unavailable"
    assert "jwks.corp.internal" not in response.get_data(as_text=True)


def test_the_log_names_what_the_answer_hides(client, caplog):
    with caplog.at_level(logging.INFO):
        client.get("/issuer", headers=bearer(token(iss='https://evil.example/')))
        client.get("/condition", headers=bearer(token(tenant='other')))
        client.get("/opaque", headers={"Authorization": "Bearer opaque-token-123"})
    assert ISSUER in caplog.text and CLAIMS_CONDITION in caplog.text and IDP in caplog.text
