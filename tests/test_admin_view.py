"""The admin view of the running config (<admin prefix>/config) and ``gateway-app status``."""

from __future__ import annotations

import json

import pytest

from gateway_app.cli import main
from tests.keys import public_jwk
from tests.keys import rsa_key
from tests.test_app import AUTH_YAML
from tests.test_app import UPSTREAM_YAML
from tests.test_app import VS_SECURED

JWKS_URL = "http://jwks.test/private/path/jwks.json?tenant=t1"

JWT_AUTH = """
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: jwt, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        jwt:
          remoteJwks: {url: 'http://jwks.test/private/path/jwks.json?tenant=t1'}
          issuer: https://issuer.test
"""

NOTICE = """
apiVersion: networking.gloo.solo.io/v2
kind: VirtualGateway
metadata: {name: north-south-gw, namespace: gloo-mesh}
spec: {listeners: [{port: {number: 80}}]}
"""


def _app(make_app, requests_mock):
    requests_mock.get(JWKS_URL, json={"keys": [public_jwk(rsa_key(), kid="key-2024", alg="RS256")]})
    return make_app({"upstream.yaml": UPSTREAM_YAML, "vs.yaml": VS_SECURED, "auth.yaml": AUTH_YAML % {"extra": ""},
                     "jwt.yaml": JWT_AUTH, "gw.yaml": NOTICE})


def test_the_admin_view_shows_generation_resources_jwks_caches_and_routes(make_app, requests_mock):
    app = _app(make_app, requests_mock)
    response = app.test_client().get("/__gateway/config")

    assert response.status_code == 200
    view = response.get_json()
    assert view["generation"] == 1
    states = {(r["kind"], r["resource"]): r for r in view["resources"]}
    assert states[("AuthConfig", "gloo-system/oidc-hydra")]["state"] == "ACCEPTED"
    assert states[("VirtualGateway", "gloo-mesh/north-south-gw")]["note"].startswith("not used")
    jwt = next(v for v in view["validators"] if v["type"] == "JwtValidator")
    assert jwt["key_ids"] == ["key-2024"] and jwt["ready"] is True
    assert jwt["idp"] == "jwks.test" and jwt["last_fetch_seconds_ago"] is not None
    assert jwt["next_fetch_in_seconds"] > 0 and jwt["verified_cache_entries"] == 0
    introspection = next(v for v in view["validators"] if v["type"] == "IntrospectionValidator")
    assert introspection["token_cache_entries"] == 0 and introspection["client_id"] == "my-client"
    route = view["routes"][0]
    assert route["auth"].startswith("gloo-system/oidc-hydra") and route["upstream"] == ["gloo-system/httpbin"]


def test_the_admin_view_holds_no_secret_and_no_idp_path(make_app, requests_mock):
    app = _app(make_app, requests_mock)
    body = app.test_client().get("/__gateway/config").get_data(as_text=True)

    assert "secret" not in json.loads(body)["validators"][0].values()
    assert '"secret"' not in body                      # the client secret's value
    assert "/private/path" not in body and "tenant" not in body


def test_the_admin_view_shows_a_rejected_reload_with_its_reasons_and_time(make_app, requests_mock, tmp_path):
    app = _app(make_app, requests_mock)
    gateway = app.extensions["gateway"]
    (tmp_path / "conf" / "bad.yaml").write_text("kind: Upstream\nmetadata: {name: u}\nspec: {statik: {}}\n")
    gateway.reload()

    view = app.test_client().get("/__gateway/config").get_json()
    assert view["generation"] == 1                        # the last good config keeps serving
    reload = view["last_reload"]
    assert reload["result"] == "rejected" and reload["at"].endswith("+00:00")
    assert reload["rejected"] == [{
        "kind": "Upstream", "resource": "default/u", "file": str(tmp_path / "conf" / "bad.yaml"), "line": 3,
        "field": "spec.statik", "reason": "unknown field statik (did you mean static?)", "state": "REJECTED",
        "note": None}]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/__gateway/nope", 404),
    ("POST", "/__gateway/health/live", 405),
], ids=["unknown admin path", "method not allowed"])
def test_admin_error_bodies_carry_the_request_id(make_app, requests_mock, method, path, status):
    app = _app(make_app, requests_mock)
    response = app.test_client().open(path, method=method, headers={"X-Request-Id": "req-123"})

    assert response.status_code == status
    assert response.get_json()["request_id"] == "req-123"
    assert response.headers["X-Request-Id"] == "req-123"


def test_gateway_app_status_prints_the_view(make_app, requests_mock, capsys):
    app = _app(make_app, requests_mock)
    view = app.test_client().get("/__gateway/config").get_json()
    requests_mock.get("http://gw.test:8080/__gateway/config", json=view)

    assert main(["status", "--url", "http://gw.test:8080"]) == 0
    out = capsys.readouterr().out
    assert "generation 1" in out
    assert "ACCEPTED AuthConfig gloo-system/oidc-hydra" in out
    assert "key_ids=['key-2024']" in out
    assert "auth=gloo-system/oidc-hydra" in out


def test_gateway_app_status_says_when_the_gateway_cannot_be_reached(requests_mock, capsys):
    requests_mock.get("http://gw.test:8080/__gateway/config", status_code=404, json={})
    assert main(["status", "--url", "http://gw.test:8080"]) == 1
    assert "cannot read http://gw.test:8080/__gateway/config" in capsys.readouterr().err
