"""Gloo Platform RouteTables (delegation, API products), ExtAuthPolicy by labels, shadow and rich policies."""

from __future__ import annotations

import json
import logging
import pathlib
import typing as t

import pytest

from gateway_app.config.build import build_config
from gateway_app.errors import RouteNotFoundError
from gateway_app.incoming import IncomingRequest

from tests.keys import claims
from tests.keys import make_jwt
from tests.keys import public_jwk
from tests.factories import write_tree
from tests.keys import rsa_key
from tests.factories import bearer
from tests.support.servers import REPO_ROOT as REPO
from tests.factories import incoming_request



API_PRODUCTS = (REPO / "conf" / "api-products.yaml").read_text()
SEED_REGO = {p.name: p.read_text() for p in (REPO / "rego").glob("*.rego") if not p.stem.endswith("_test")}
JWKS_URL = "http://127.0.0.1:4444/.well-known/jwks.json"
UPSTREAM = "http://upstream.test:8000"
HTTPBIN = """
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: httpbin, namespace: gloo-system}
spec:
  static:
    hosts: [{addr: upstream.test, port: 8000}]
"""


def request(path: str, host: str = "api.example.com", method: str = "GET") -> IncomingRequest:
    return incoming_request(path, method=method, host=host)


@pytest.fixture
def build(tmp_path: pathlib.Path) -> t.Callable[..., t.Any]:
    def factory(files: t.Mapping[str, str], rego: t.Mapping[str, str] | None = None) -> t.Any:
        write_tree(tmp_path / "conf", {"httpbin.yaml": HTTPBIN, **files})
        write_tree(tmp_path / "rego", SEED_REGO if rego is None else rego)
        return build_config(tmp_path / "conf", tmp_path / "rego")
    return factory


def test_api_products_delegate_by_labels_with_product_ids_and_policy_by_route_label(build):
    router = build({"api-products.yaml": API_PRODUCTS}).config.router

    pets = router.match(request("/petstore/pets")).route
    status = router.match(request("/tracks/status")).route
    tracks = router.match(request("/tracks/1")).route

    assert (pets.name, pets.api_product_id, pets.usage_plan) == ("pets-api", "petstore", "dev-portal")
    assert (tracks.name, tracks.api_product_id) == ("tracks-api", "tracks")
    assert pets.auth is tracks.auth
    assert pets.auth.name == "gloo-mesh-addons/oauth-okta"
    assert "x-customer" in pets.managed_headers
    assert (status.name, status.api_product_id, status.auth) == ("tracks-status", "tracks", None)
    assert pets.upstream_path("/petstore/pets") == "/anything/petstore/pets"
    assert status.upstream_path("/tracks/status") == "/status/200"
    with pytest.raises(RouteNotFoundError):
        router.match(request("/petstore", host="other.example.com"))


def table(name: str, body: str, labels: str = "") -> str:
    return (f"apiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata:\n  name: {name}\n"
            f"  namespace: apps\n{labels}spec:\n{body}---\n")


ROOT_BY_NAME = table("root", """\
  hosts: [shop.test]
  http:
  - name: api
    matchers: [{uri: {prefix: /api}, method: GET}]
    delegate: {routeTables: [{name: child, namespace: apps}]}
""")
CHILD = table("child", """\
  portalMetadata: {apiProductId: shop}
  http:
  - name: pets
    matchers: [{uri: {prefix: /api/pets}}]
    forwardTo: {destinations: [{ref: {name: httpbin, namespace: gloo-system}, port: {number: 9090}}]}
  - name: pets-write
    matchers: [{uri: {prefix: /api/pets}, methods: [POST]}]
    forwardTo: {destinations: [{url: 'http://127.0.0.1:7000'}]}
  - name: outside
    matchers: [{uri: {prefix: /other}}]
    forwardTo: {destinations: [{url: 'http://127.0.0.1:7000'}]}
""")


def test_delegation_by_name_combines_parent_and_child_matchers(build):
    result = build({"tables.yaml": ROOT_BY_NAME + CHILD})
    assert result.errors == [], [s.describe() for s in result.errors]
    router = result.config.router

    pets = router.match(request("/api/pets/1", host="shop.test")).route
    assert (pets.name, pets.api_product_id) == ("pets", "shop")
    assert pets.targets[0].base_url == "http://upstream.test:9090"
    with pytest.raises(RouteNotFoundError):
        router.match(request("/other", host="shop.test"))          # the parent's /api prefix is required
    with pytest.raises(RouteNotFoundError):
        router.match(request("/api/pets", host="shop.test", method="POST"))  # parent allows GET only


def test_delegation_by_name_alone_selects_the_tables_of_that_name_in_every_namespace(build):
    other = CHILD.replace("namespace: apps", "namespace: team").replace("/api/pets", "/api/toys")
    root = ROOT_BY_NAME.replace("{name: child, namespace: apps}", "{name: child}")
    router = build({"tables.yaml": root + CHILD + other}).config.router

    assert router.match(request("/api/pets/1", host="shop.test")).route.source.endswith("RouteTable apps/child: http[0]")
    assert router.match(request("/api/toys/1", host="shop.test")).route.source.endswith("RouteTable team/child: http[0]")


REWRITING = table("rewriting", """\
  hosts: [shop.test]
  http:
  - name: assets
    matchers: [{uri: {prefix: /assets, ignoreCase: true}}]
    forwardTo: {destinations: [{url: 'http://127.0.0.1:7000'}], pathRewrite: /public/}
  - name: private
    labels: {plan: a}
    matchers: [{uri: {prefix: /private}}]
    forwardTo: {destinations: [{url: 'http://127.0.0.1:7000'}]}
  - name: rest
    matchers: [{uri: {prefix: /}}]
    forwardTo: {destinations: [{url: 'http://127.0.0.1:7000'}]}
""")


def test_a_path_rewrite_route_matches_its_prefix_on_segment_boundaries(build):
    """``pathRewrite`` as ``prefixRewrite``: ``/assets../private`` must not become ``/public/../private``."""
    router = build({"tables.yaml": REWRITING}).config.router
    assets = router.match(request("/ASSETS/app.js", host="shop.test")).route
    assert (assets.name, assets.upstream_path("/ASSETS/app.js")) == ("assets", "/public/app.js")
    assert router.match(request("/assets", host="shop.test")).route.upstream_path("/assets") == "/public/"
    for path in ("/assets../private", "/assetsx"):
        route = router.match(request(path, host="shop.test")).route
        assert (route.name, route.upstream_path(path)) == ("rest", path)


@pytest.mark.parametrize("files, message", [
    ({"t.yaml": table("root", "  hosts: [a.test]\n  http:\n  - delegate: {routeTables: [{name: ghost}]}\n")},
     "RouteTable */ghost not found"),
    ({"t.yaml": table("root", "  hosts: [a.test]\n  http:\n  - delegate: {routeTables: [{name: loop}]}\n")
      + table("loop", "  http:\n  - delegate: {routeTables: [{name: loop}]}\n")},
     "delegation cycle"),
    ({"t.yaml": table("root", "  hosts: [a.test]\n  http:\n  - labels: {plan: a}\n"
                              "    forwardTo: {destinations: [{url: 'http://127.0.0.1:1'}]}\n"),
      "p.yaml": "".join(f"""
apiVersion: security.policy.gloo.solo.io/v2
kind: ExtAuthPolicy
metadata: {{name: {name}, namespace: apps}}
spec:
  applyToRoutes: [{{route: {{labels: {{plan: a}}}}}}]
  config:
    glooAuth:
      configs: [{{oauth2: {{accessTokenValidation: {{introspectionUrl: 'http://127.0.0.1:1/i'}}}}}}]
---""" for name in ("one", "two"))},
     "selected by several ExtAuthPolicies"),
    ({"t.yaml": table("root", "  hosts: [a.test]\n  http:\n  - forwardTo: {destinations: [{ref: {name: nope}}]}\n")},
     "spec.http[0].forwardTo.destinations[0].ref.name: Upstream apps/nope not found"),
    ({"t.yaml": table("root", "  hosts: [a.test]\n  http:\n  - delegate: {routeTables: [{name: child, namespace: shop}]}\n")
      + CHILD},
     "spec.http[0].delegate.routeTables[0].name: RouteTable shop/child not found (there is RouteTable apps/child; "
     "set namespace)"),
], ids=["dangling delegate", "delegation cycle", "route under two policies", "dangling destination",
        "delegate in the wrong namespace"])
def test_broken_route_tables_are_rejected(build, files, message):
    result = build(files)
    assert result.config is None
    assert message in "\n".join(s.describe() for s in result.errors)


# -- shadow policies and rich decisions through the app ----------------------------------------

POLICY_VS = """
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: api, namespace: default}
spec:
  virtualHost:
    domains: ['*']
    options: {extauth: {configRef: {name: policy}}}
    routes:
    - routeAction: {single: {url: 'http://upstream.test:8000'}}
"""

POLICY_AUTH = """
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: policy}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        jwt: {remoteJwks: {url: 'http://127.0.0.1:4444/.well-known/jwks.json'}}
  - opaAuth:
%s
"""

SHADOW = """\
      modules: [{name: oauth-scope-apiproduct-opa-cm}]
      query: data.test.allow == true
      shadow:
        modules: [{name: candidate}]
        query: data.candidate.allow"""

CANDIDATE = {"candidate.rego": 'package candidate\n\nimport rego.v1\n\n'
                               'allow if "admin" in split(input.state.jwtAccessToken.scope, " ")\n'}

RICH = """\
      modules: [{name: rich}]
      query: data.rich.decision"""

RICH_REGO = {"rich.rego": """package rich

import rego.v1


default decision := {"allowed": false, "http_status": 402, "headers": {"x-upgrade": "gold"},
                     "body": {"error": "payment_required"}}

decision := {"allowed": true, "headers": {"x-tier": input.state.jwtAccessToken.tier}} if {
    input.state.jwtAccessToken.tier == "gold"
}
"""}


@pytest.fixture
def policy_app(make_app, requests_mock) -> t.Callable[[str, dict[str, str]], t.Any]:
    requests_mock.get(JWKS_URL, json={"keys": [public_jwk(rsa_key(), kid="main", alg="RS256")]})
    requests_mock.get(f"{UPSTREAM}/orders", json={})

    def factory(opa: str, rego: dict[str, str]) -> t.Any:
        return make_app({"vs.yaml": POLICY_VS, "auth.yaml": POLICY_AUTH % opa}, rego=rego).test_client()
    return factory


def signed_bearer(**overrides: t.Any) -> dict[str, str]:
    return bearer(make_jwt(claims(**overrides), rsa_key()))


def shadow_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, t.Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if "shadow_policy_disagreement" in r.getMessage()]


def test_shadow_policy_agreeing_with_the_enforced_one_logs_nothing(policy_app, caplog):
    client = policy_app(SHADOW, {**SEED_REGO, **CANDIDATE})
    caplog.set_level(logging.WARNING)

    response = client.get("/orders", headers=signed_bearer(scope="petstore"))

    assert response.status_code == 403                       # the seed policy: no API product, deny
    assert shadow_records(caplog) == []                       # the candidate denies too


def test_shadow_policy_allowing_where_the_enforced_one_denies_is_logged(policy_app, caplog):
    client = policy_app(SHADOW, {**SEED_REGO, **CANDIDATE})
    caplog.set_level(logging.WARNING)

    response = client.get("/orders", headers=signed_bearer(scope="admin", sub="alice"))

    assert response.status_code == 403
    record, = shadow_records(caplog)
    assert record["enforced_allowed"] is False and record["shadow_allowed"] is True
    assert record["shadow_query"] == "data.candidate.allow" and record["sub"] == "alice"


def test_rich_decision_allow_adds_the_policy_headers_upstream(policy_app, requests_mock):
    client = policy_app(RICH, RICH_REGO)

    response = client.get("/orders", headers=signed_bearer(tier="gold"))

    assert response.status_code == 200
    assert requests_mock.request_history[-1].headers["x-tier"] == "gold"


def test_rich_decision_deny_answers_the_policy_status_headers_and_body(policy_app, requests_mock):
    client = policy_app(RICH, RICH_REGO)

    response = client.get("/orders", headers=signed_bearer(tier="free"))

    assert response.status_code == 402
    assert response.headers["x-upgrade"] == "gold"
    assert response.get_json() == {"error": "payment_required"}
    assert not any(r.url.startswith(UPSTREAM) for r in requests_mock.request_history)
