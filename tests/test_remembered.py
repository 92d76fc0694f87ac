"""Remembered auth outcomes: reused only while the token's validation stands, per route metadata.

Unit tests for the eligibility rule; the rest goes through the Flask test client with a local
JWKS, a requests-mock IdP and a requests-mock upstream.
"""

from __future__ import annotations

import json
import pathlib
import typing as t

import pytest

from gateway_app.auth.remembered import TOKEN_AND_ROUTE_INPUT
from gateway_app.auth.remembered import within
from gateway_app.policy.engine import PolicyEngine
from gateway_app.policy.input_shape import ALL
from tests.factories import write_tree
from tests.support.clocks import EPOCH
from tests.support.clocks import FakeClock
from keys import jwks_json
from keys import make_jwt
from keys import public_jwk
from keys import rsa_key
from tests.factories import bearer
from tests.factories import incoming_request

UPSTREAM = "http://upstream.test:8000"
IDP = "http://idp.test/introspect"
KEY = rsa_key("remembered")
REPO = pathlib.Path(__file__).resolve().parent.parent
SEED_POLICY = (REPO / "rego" / "oauth-scope-apiproduct-opa-cm.rego").read_text()
PATH_POLICY = """\
package bypath
default allow = false
allow {
  startswith(input.check_request.attributes.request.http.path, "/bypath/open")
  input.state.jwtAccessToken.sub != ""
}
"""
INTROSPECTION_POLICY = """\
package intro
default allow = false
allow { split(input.state.introspection.scope, " ")[_] == "petstore" }
"""


ROOT_TABLE = """
apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {name: root, namespace: apps}
spec:
  hosts: ['*']
  http:
  - name: all
    matchers: [{uri: {prefix: /}}]
    delegate: {routeTables: [{labels: {table: child}}]}
"""


def config(jwks: str) -> dict[str, str]:
    tables = ROOT_TABLE + "".join(f"""
---
apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {{name: {name}, namespace: apps, labels: {{table: child}}}}
spec:
  portalMetadata: {{apiProductId: {product}}}
  http:
  - name: {name}
    labels: {{auth: {auth}}}
    matchers: [{{uri: {{prefix: /{name}}}}}]
    forwardTo: {{destinations: [{{url: '{UPSTREAM}'}}]}}
""" for name, product, auth in (("petstore", "petstore", "jwt"), ("tracks", "tracks", "jwt"),
                                ("bypath", "petstore", "bypath"), ("opaque", "petstore", "introspection")))
    return {"routes.yaml": tables, "auth.yaml": f"""
apiVersion: security.policy.gloo.solo.io/v2
kind: ExtAuthPolicy
metadata: {{name: jwt, namespace: apps}}
spec:
  applyToRoutes: [{{route: {{labels: {{auth: jwt}}}}}}]
  config:
    glooAuth:
      configs:
      - oauth2:
          accessTokenValidation:
            jwt: {{localJwks: {{inlineString: '{jwks}'}}, clockSkew: 0s}}
            claimsToHeaders: [{{claim: sub, header: x-customer}}]
      - opaAuth:
          modules: [{{name: seed}}]
          query: "data.test.allow == true"
---
apiVersion: security.policy.gloo.solo.io/v2
kind: ExtAuthPolicy
metadata: {{name: bypath, namespace: apps}}
spec:
  applyToRoutes: [{{route: {{labels: {{auth: bypath}}}}}}]
  config:
    glooAuth:
      configs:
      - oauth2:
          accessTokenValidation:
            jwt: {{localJwks: {{inlineString: '{jwks}'}}}}
      - opaAuth:
          modules: [{{name: bypath}}]
          query: "data.bypath.allow == true"
---
apiVersion: security.policy.gloo.solo.io/v2
kind: ExtAuthPolicy
metadata: {{name: introspection, namespace: apps}}
spec:
  applyToRoutes: [{{route: {{labels: {{auth: introspection}}}}}}]
  config:
    glooAuth:
      configs:
      - oauth2:
          accessTokenValidation:
            introspection: {{introspectionUrl: '{IDP}', cacheTimeout: 1s}}
            claimsToHeaders: [{{claim: sub, header: x-customer}}]
      - opaAuth:
          modules: [{{name: intro}}]
          query: "data.intro.allow == true"
"""}


@pytest.fixture
def gateway(make_app, requests_mock, monkeypatch, clock) -> t.Any:
    return build_client(make_app, requests_mock, monkeypatch, clock=clock)


def build_client(make_app, requests_mock, monkeypatch, **settings: t.Any) -> t.Any:
    """The test client; ``client.evaluations`` counts policy evaluations by query."""
    jwks = jwks_json(public_jwk(KEY, kid="k1", alg="RS256"))
    settings.setdefault("clock", FakeClock())
    app = make_app(config(jwks), rego={"seed.rego": SEED_POLICY, "bypath.rego": PATH_POLICY,
                                       "intro.rego": INTROSPECTION_POLICY}, **settings)
    requests_mock.get(UPSTREAM + "/petstore", json={"ok": True})
    requests_mock.get(UPSTREAM + "/tracks", json={"ok": True})
    requests_mock.get(UPSTREAM + "/bypath/open", json={"ok": True})
    requests_mock.get(UPSTREAM + "/opaque", json={"ok": True})
    evaluations: dict[str, int] = {}
    evaluate = PolicyEngine.evaluate

    def counting(self: PolicyEngine, query: str, document: t.Any) -> t.Any:
        evaluations[query] = evaluations.get(query, 0) + 1
        return evaluate(self, query, document)

    monkeypatch.setattr(PolicyEngine, "evaluate", counting)
    client = app.test_client()
    client.evaluations = evaluations
    return client


def token(scope: str = "petstore", sub: str = "my-client", lifetime: int = 3600) -> str:
    """A JWT issued at :data:`EPOCH`, where the gateway's clock starts (:class:`FakeClock`)."""
    return make_jwt({"sub": sub, "scope": scope, "iat": EPOCH, "exp": EPOCH + lifetime}, KEY, "RS256", kid="k1")



def upstream_headers(requests_mock) -> dict[str, str]:
    return {k.lower(): v for k, v in requests_mock.last_request.headers.items()}


# -- the eligibility rule ---------------------------------------------------------------------

@pytest.mark.parametrize("shape, allowed", [
    ({"state": {"jwtAccessToken": {"scope": ALL}}}, True),
    ({"check_request": {"attributes": {"metadata_context": {"filter_metadata": ALL}}}}, True),
    ({"attributes": {"context_extensions": ALL}, "version": ALL}, True),
    ({"check_request": {"attributes": {"request": {"http": {"path": ALL}}}}}, False),
    ({"check_request": ALL}, False),
    ({"parsed_path": ALL}, False),
    ({"http_request": {"headers": ALL}}, False),
])
def test_only_token_and_route_branches_of_the_input_are_within_the_rememberable_shape(shape, allowed):
    assert within(shape, TOKEN_AND_ROUTE_INPUT) is allowed


def test_pipelines_are_rememberable_only_when_every_policy_reads_token_and_route(make_app, requests_mock):
    jwks = jwks_json(public_jwk(KEY, kid="k1", alg="RS256"))
    app = make_app(config(jwks), rego={"seed.rego": SEED_POLICY, "bypath.rego": PATH_POLICY,
                                       "intro.rego": INTROSPECTION_POLICY})
    routes = {r.name: r for vh in app.extensions["gateway"].config.router.virtual_hosts for r in vh.routes}
    assert routes["petstore"].auth.remember_outcomes
    assert routes["opaque"].auth.remember_outcomes
    assert not routes["bypath"].auth.remember_outcomes


# -- through the app --------------------------------------------------------------------------

def test_a_repeated_jwt_is_answered_without_evaluating_the_policy_again(gateway):
    jwt = token()
    assert gateway.get("/petstore", headers=bearer(jwt)).status_code == 200
    assert gateway.get("/petstore", headers=bearer(jwt)).status_code == 200
    assert gateway.get("/petstore", headers=bearer(jwt)).status_code == 200
    assert gateway.evaluations == {"data.test.allow == true": 1}


def test_a_remembered_allow_still_sets_x_customer_and_replaces_a_forged_one(gateway, requests_mock):
    jwt = token(sub="my-client")
    gateway.get("/petstore", headers=bearer(jwt))
    response = gateway.get("/petstore", headers=bearer(jwt, **{"X-Customer": "evil"}))
    assert response.status_code == 200
    assert upstream_headers(requests_mock)["x-customer"] == "my-client"


def test_a_token_allowed_on_one_api_product_is_still_refused_on_another(gateway, requests_mock):
    jwt = token(scope="petstore")
    for _ in range(2):
        assert gateway.get("/petstore", headers=bearer(jwt)).status_code == 200
        assert gateway.get("/tracks", headers=bearer(jwt)).status_code == 403
    assert gateway.evaluations == {"data.test.allow == true": 3}   # petstore once, tracks every time
    assert [r.path for r in requests_mock.request_history] == ["/petstore", "/petstore"]


def test_different_tokens_get_their_own_outcomes(gateway, requests_mock):
    assert gateway.get("/petstore", headers=bearer(token(sub="alice"))).status_code == 200
    gateway.get("/petstore", headers=bearer(token(sub="bob")))
    assert upstream_headers(requests_mock)["x-customer"] == "bob"
    assert gateway.get("/petstore", headers=bearer(token(scope="tracks"))).status_code == 403


def test_an_expired_jwt_is_refused_with_403_after_its_allow_was_remembered(gateway, clock):
    jwt = token(lifetime=60)
    assert gateway.get("/petstore", headers=bearer(jwt)).status_code == 200
    clock.advance(60)                                 # exp reached (clockSkew: 0s)
    response = gateway.get("/petstore", headers=bearer(jwt))
    assert response.status_code == 403
    assert json.loads(response.data)["error"] == "token_expired"


def test_a_revoked_opaque_token_is_refused_once_its_cache_entry_expires(gateway, requests_mock, clock):
    idp = requests_mock.post(IDP, json={"active": True, "sub": "my-client", "scope": "petstore",
                                        "exp": EPOCH + 3600})
    assert gateway.get("/opaque", headers=bearer("opaque-token-1")).status_code == 200
    assert gateway.get("/opaque", headers=bearer("opaque-token-1")).status_code == 200
    assert (idp.call_count, gateway.evaluations) == (1, {"data.intro.allow == true": 1})
    requests_mock.post(IDP, json={"active": False})
    clock.advance(1)                                  # cacheTimeout: 1s
    assert gateway.get("/opaque", headers=bearer("opaque-token-1")).status_code == 403


def test_a_policy_that_reads_the_request_is_evaluated_on_every_request(gateway):
    jwt = token()
    for _ in range(3):
        assert gateway.get("/bypath/open", headers=bearer(jwt)).status_code == 200
    assert gateway.evaluations == {"data.bypath.allow == true": 3}


def test_denials_are_never_remembered(gateway):
    jwt = token(scope="tracks")
    for _ in range(3):
        assert gateway.get("/petstore", headers=bearer(jwt)).status_code == 403
    assert gateway.evaluations == {"data.test.allow == true": 3}


def test_the_access_record_of_a_remembered_allow_names_the_query(gateway, access_records):
    jwt = token()
    gateway.get("/petstore", headers=bearer(jwt))
    gateway.get("/petstore", headers=bearer(jwt))
    fields = access_records[-1].fields
    assert (fields["auth"], fields["query"], fields["sub"]) == ("allowed", "data.test.allow == true", "my-client")


def test_the_debug_route_evaluates_its_policy_on_every_request(make_app, requests_mock, monkeypatch):
    client = build_client(make_app, requests_mock, monkeypatch, debug_route="petstore")
    jwt = token()
    for _ in range(2):
        assert client.get("/petstore", headers=bearer(jwt)).status_code == 200
    assert client.evaluations == {"data.test.allow == true": 2}


def test_a_reloaded_policy_decides_again_for_a_token_whose_allow_was_remembered(make_app, requests_mock,
                                                                                  monkeypatch, tmp_path):
    client = build_client(make_app, requests_mock, monkeypatch)
    jwt = token()
    assert client.get("/petstore", headers=bearer(jwt)).status_code == 200
    (tmp_path / "rego" / "seed.rego").write_text("package test\ndefault allow = false\n")
    assert client.application.extensions["gateway"].reload().config is not None
    assert client.get("/petstore", headers=bearer(jwt)).status_code == 403


# -- remembered outcomes end with the reader's own cacheTimeout (issue 12 item 5) -------------

REAL_AUTH = """
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: %(name)s, namespace: apps}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        introspection: {introspectionUrl: '%(idp)s', retries: 0%(extra)s}
  - opaAuth:
      modules: [{name: intro}]
      query: "data.intro.allow == true"
"""

REAL_ROUTES = """
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: api, namespace: apps}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{prefix: /real-short}]
      routeAction: {single: {url: '%(upstream)s'}}
      options: {extauth: {configRef: {name: real-short, namespace: apps}}}
    - matchers: [{prefix: /real}]
      routeAction: {single: {url: '%(upstream)s'}}
      options: {extauth: {configRef: {name: real, namespace: apps}}}
"""


def test_a_remembered_outcome_on_real_short_ends_3s_after_real_cached_the_token(tmp_path, requests_mock):
    from gateway_app.auth.state import AuthState
    from gateway_app.auth.steps import AuthContext
    from gateway_app.auth.registry import ValidatorRegistry
    from gateway_app.config.build import load_config
    from gateway_app.errors import InvalidTokenError

    clock = FakeClock()
    conf = write_tree(tmp_path / "conf", {
        "auth.yaml": REAL_AUTH % {"name": "real", "idp": IDP, "extra": ""} + "---"
        + REAL_AUTH % {"name": "real-short", "idp": IDP, "extra": ", cacheTimeout: 2s"},
        "routes.yaml": REAL_ROUTES % {"upstream": UPSTREAM}})
    rego = write_tree(tmp_path / "rego", {"intro.rego": INTROSPECTION_POLICY})
    config = load_config(conf, rego, ValidatorRegistry(clock=clock))
    idp = requests_mock.post(IDP, [{"json": {"active": True, "sub": "alice", "scope": "petstore"}},
                                   {"json": {"active": False}}])

    def authorize(path: str) -> str:
        incoming = incoming_request(path, host="api.test", headers=bearer("opaque-token-1"), send_host=False)
        route = config.router.match(incoming).route
        assert route.auth is not None and route.auth.remember_outcomes
        state = AuthState()
        route.auth.run(AuthContext(incoming, route, state))
        return state.subject or ""

    assert authorize("/real") == "alice"                    # the IdP's answer, cached for 10 min
    assert authorize("/real-short") == "alice"              # the same entry; the outcome is remembered
    clock.advance(1)
    assert authorize("/real-short") == "alice"              # from the remembered outcome
    assert idp.call_count == 1
    clock.advance(2)                                       # revoked at the IdP; 3 s after real cached it
    with pytest.raises(InvalidTokenError) as caught:
        authorize("/real-short")
    assert caught.value.reason == "token_inactive"
    assert idp.call_count == 2
