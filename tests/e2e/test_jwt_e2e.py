"""JWT access tokens end to end (issue 3): the test OAuth server signs RS256 and ES256 tokens,
gunicorn serves the gateway with ``remoteJwks.url`` at the server's JWKS, httpbin echoes
what arrives upstream. One gateway (two workers) serves the whole module.
"""

from __future__ import annotations

import base64
import json
import typing as t

import pytest
import requests

from tests.support.servers import ServerProcess
from tests.support.servers import gateway_server
from tests.support.servers import render_config

from .conftest import token
from tests.factories import bearer

TIMEOUT = 10

CONFIG = """\
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: httpbin, namespace: gloo-system}
spec:
  static:
    hosts: [{addr: 127.0.0.1, port: {UPSTREAM_PORT}}]
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: jwt, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        jwt:
          issuer: http://127.0.0.1:{IDP_PORT}/
          remoteJwks:
            url: http://127.0.0.1:{IDP_PORT}/.well-known/jwks.json
            refreshInterval: 5m
        claimsToHeaders:
        - claim: sub
          header: x-customer
        dynamicMetadataFromClaims:
          scope: scope
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: jwt-admin, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        jwt:
          remoteJwks:
            url: http://127.0.0.1:{IDP_PORT}/.well-known/jwks.json
        requiredScopes: [admin]
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    options:
      extauth:
        configRef: {name: jwt, namespace: gloo-system}
      stagedTransformations:
        regular:
          requestTransforms:
          - requestTransformation:
              transformationTemplate:
                headers:
                  x-scopes:
                    text: '{{ dynamic_metadata("config_0:scope", "envoy.filters.http.ext_authz") }}'
    routes:
    - matchers: [{prefix: /admin}]
      routeAction: {single: {upstream: {name: httpbin, namespace: gloo-system}}}
      options:
        prefixRewrite: /anything/admin
        extauth:
          configRef: {name: jwt-admin, namespace: gloo-system}
    - matchers: [{prefix: /}]
      routeAction: {single: {upstream: {name: httpbin, namespace: gloo-system}}}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, oauth: ServerProcess,
            httpbin: ServerProcess) -> t.Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("jwt-e2e")
    render_config(CONFIG, root / "conf", IDP_PORT=oauth.port, UPSTREAM_PORT=httpbin.port)
    (root / "rego").mkdir()
    with gateway_server(root, root / "conf", root / "rego", workers=2, name="gateway-jwt") as server:
        yield server




def echoed_headers(response: requests.Response) -> dict[str, str]:
    return {name.lower(): value for name, value in response.json()["headers"].items()}


def header_of(jwt_token: str) -> dict[str, t.Any]:
    segment = jwt_token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


@pytest.mark.parametrize("client_id, secret, alg", [
    ("jwt-client", "jwt-secret", "RS256"),
    ("jwt-es-client", "jwt-es-secret", "ES256"),
], ids=["RS256", "ES256"])
def test_jwt_access_token_is_accepted_and_sub_reaches_upstream_as_x_customer(gateway, http, oauth,
                                                                              client_id, secret, alg):
    access_token = token(oauth, client_id, secret, scope="petstore tracks")
    assert header_of(access_token)["alg"] == alg

    response = http.get(gateway.url + "/headers", headers={**bearer(access_token), "X-Customer": "forged"},
                        timeout=TIMEOUT)

    assert response.status_code == 200
    headers = echoed_headers(response)
    assert headers["x-customer"] == client_id
    assert headers["x-scopes"] == "petstore tracks"


def test_missing_token_is_refused_with_403(gateway, http):
    response = http.get(gateway.url + "/headers", timeout=TIMEOUT)
    assert response.status_code == 403
    assert response.json()["error"] == "token_missing"


def test_tampered_token_is_refused_with_403_invalid_token(gateway, http, oauth):
    access_token = token(oauth, "jwt-client", "jwt-secret", scope="petstore")
    header, payload, signature = access_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()

    response = http.get(gateway.url + "/headers", headers=bearer(f"{header}.{forged}.{signature}"),
                        timeout=TIMEOUT)

    assert response.status_code == 403
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_missing_required_scope_is_refused_with_403_insufficient_scope(gateway, http, oauth):
    access_token = token(oauth, "jwt-client", "jwt-secret", scope="petstore tracks")

    response = http.get(gateway.url + "/admin/users", headers=bearer(access_token), timeout=TIMEOUT)

    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert response.json()["error"] == "scope_missing"


def test_rotated_key_verifies_new_tokens_without_restart_and_old_tokens_still_verify(gateway, http, oauth):
    old_token = token(oauth, "jwt-client", "jwt-secret")
    for _ in range(4):               # let both workers load the JWKS before the rotation
        assert http.get(gateway.url + "/get", headers=bearer(old_token), timeout=TIMEOUT).status_code == 200

    rotated = http.post(oauth.url + "/admin/keys/rotate", params={"alg": "RS256"}, timeout=TIMEOUT).json()
    new_token = token(oauth, "jwt-client", "jwt-secret")
    assert header_of(new_token)["kid"] == rotated["kid"]

    new_answers = [http.get(gateway.url + "/get", headers=bearer(new_token), timeout=TIMEOUT).status_code
                   for _ in range(4)]
    old_answer = http.get(gateway.url + "/get", headers=bearer(old_token), timeout=TIMEOUT)

    assert new_answers == [200] * 4
    assert old_answer.status_code == 200


def test_gateway_log_never_contains_the_tokens(gateway, http, oauth):
    access_token = token(oauth, "jwt-es-client", "jwt-es-secret")
    assert http.get(gateway.url + "/get", headers=bearer(access_token), timeout=TIMEOUT).status_code == 200
    assert access_token.split(".")[2] not in gateway.log_text()
