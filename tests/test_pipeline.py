"""AuthPipeline: configs in order, booleanExpr, 401 option, failureModeAllow, statusOnError.

The steps here are small fakes with the steps' shape (``name``, ``run(ctx)``,
``managed_headers()``); the last tests build real pipelines from YAML through the app.
"""

from __future__ import annotations

import base64
import dataclasses
import time
import typing as t
import urllib.parse

import pytest

from gateway_app.auth.expressions import compile_boolean_expr
from gateway_app.auth.pipeline import AuthPipeline
from gateway_app.auth.state import AuthState
from gateway_app.auth.steps import AuthContext
from gateway_app.errors import AccessDeniedError
from gateway_app.errors import IdentityProviderError
from gateway_app.errors import InvalidTokenError
from gateway_app.errors import MissingTokenError
from gateway_app.routing import Route
from tests.factories import incoming_request


@dataclasses.dataclass(eq=False)
class FakeStep:
    """Runs ``action(ctx)``; records that it ran in ``ctx.state.claims['ran']``."""

    name: str
    action: t.Callable[[AuthContext], None] = lambda ctx: None

    def run(self, ctx: AuthContext) -> None:
        ctx.state.claims.setdefault("ran", []).append(self.name)
        self.action(ctx)

    def managed_headers(self) -> frozenset[str]:
        return frozenset()


def fail(error: Exception) -> t.Callable[[AuthContext], None]:
    def action(ctx: AuthContext) -> None:
        raise error
    return action


def context() -> AuthContext:
    request = incoming_request(host="h", send_host=False)
    return AuthContext(request=request, route=Route(name="r", source="test", matchers=(), targets=()),
                       state=AuthState())


def pipeline(*steps: FakeStep, expr: str | None = None, **options: t.Any) -> AuthPipeline:
    names = [s.name for s in steps]
    compiled = compile_boolean_expr(expr, names, "test") if expr else None
    return AuthPipeline(name="ns/auth", steps=steps, boolean_expr=compiled, boolean_expr_text=expr, **options)


def test_steps_run_in_order_and_the_first_failure_decides():
    ctx = context()
    steps = (FakeStep("a"), FakeStep("b", fail(MissingTokenError())), FakeStep("c", fail(AccessDeniedError())))

    with pytest.raises(MissingTokenError):
        pipeline(*steps).run(ctx)
    assert ctx.state.claims["ran"] == ["a", "b"]


def test_all_steps_passing_lets_the_request_through():
    ctx = context()
    pipeline(FakeStep("a"), FakeStep("b")).run(ctx)
    assert ctx.state.claims["ran"] == ["a", "b"]


def test_boolean_expr_later_steps_see_the_state_of_earlier_ones():
    seen: list[str | None] = []

    def authenticate(ctx: AuthContext) -> None:
        ctx.state.subject = "alice"

    def authorize(ctx: AuthContext) -> None:
        seen.append(ctx.state.subject)
        if ctx.state.subject != "alice":
            raise AccessDeniedError()

    pipeline(FakeStep("authn", authenticate), FakeStep("authz", authorize), expr="authn and authz").run(context())
    assert seen == ["alice"]


def test_boolean_expr_or_tries_the_second_config_when_the_first_fails():
    ctx = context()
    steps = (FakeStep("jwt", fail(InvalidTokenError())), FakeStep("opaque"), FakeStep("policy"))
    pipeline(*steps, expr="(jwt or opaque) and policy").run(ctx)
    assert ctx.state.claims["ran"] == ["jwt", "opaque", "policy"]


def test_boolean_expr_false_raises_the_failure_of_the_step_that_failed():
    steps = (FakeStep("jwt", fail(InvalidTokenError("bad signature"))), FakeStep("policy"))
    with pytest.raises(InvalidTokenError, match="bad signature"):
        pipeline(*steps, expr="jwt and policy").run(context())


def test_boolean_expr_false_without_a_failing_step_is_access_denied():
    with pytest.raises(AccessDeniedError) as caught:
        pipeline(FakeStep("internal"), expr="not internal").run(context())
    assert caught.value.reason == "auth_expr_false"
    assert caught.value.status_code == 403


def test_boolean_expr_not_passes_when_the_named_config_fails():
    pipeline(FakeStep("blocked", fail(AccessDeniedError())), expr="not blocked").run(context())


def test_boolean_expr_runs_each_config_at_most_once():
    ctx = context()
    pipeline(FakeStep("a"), FakeStep("b", fail(AccessDeniedError())), expr="(a and b) or (a and not b)").run(ctx)
    assert ctx.state.claims["ran"] == ["a", "b"]


@pytest.mark.parametrize("error", [MissingTokenError(), InvalidTokenError()], ids=["missing", "invalid"])
def test_authentication_failure_status_401_applies_to_missing_and_invalid_tokens(error):
    with pytest.raises(type(error)) as caught:
        pipeline(FakeStep("a", fail(error)), authentication_failure_status=401, realm="api").run(context())
    assert caught.value.status_code == 401
    assert 'realm="api"' in caught.value.challenge()


def test_authentication_failure_status_does_not_turn_access_denied_into_401():
    with pytest.raises(AccessDeniedError) as caught:
        pipeline(FakeStep("a", fail(AccessDeniedError())), authentication_failure_status=401).run(context())
    assert caught.value.status_code == 403


def test_idp_error_answers_the_status_on_error():
    with pytest.raises(IdentityProviderError) as caught:
        pipeline(FakeStep("a", fail(IdentityProviderError("down"))), status_on_error=502).run(context())
    assert caught.value.status_code == 502


def test_the_configured_status_is_a_new_error_and_the_raised_one_is_left_as_it_was():
    """One raised error may be raised again (a cached JWKS failure) for another config."""
    token_error, idp_error = InvalidTokenError("expired"), IdentityProviderError("down")
    with pytest.raises(InvalidTokenError) as caught:
        pipeline(FakeStep("a", fail(token_error)), authentication_failure_status=401, realm="api").run(context())
    with pytest.raises(IdentityProviderError) as caught_idp:
        pipeline(FakeStep("a", fail(idp_error)), status_on_error=502).run(context())

    assert (caught.value.status_code, caught.value.realm, str(caught.value)) == (401, "api", "expired")
    assert (token_error.status_code, token_error.realm) == (403, None)
    assert (caught_idp.value.status_code, idp_error.status_code) == (502, 503)


def test_idp_error_inside_boolean_expr_is_an_error_not_a_false_branch():
    steps = (FakeStep("a", fail(IdentityProviderError("down"))), FakeStep("b"))
    with pytest.raises(IdentityProviderError):
        pipeline(*steps, expr="a or b").run(context())


def test_failure_mode_allow_lets_the_request_through_when_the_idp_is_down():
    ctx = context()
    pipeline(FakeStep("a", fail(IdentityProviderError("down"))), failure_mode_allow=True).run(ctx)
    assert ctx.state.reason == "failure_mode_allow"


def test_failure_mode_allow_never_admits_an_invalid_token():
    with pytest.raises(InvalidTokenError):
        pipeline(FakeStep("a", fail(InvalidTokenError())), failure_mode_allow=True).run(context())


# -- real pipelines from YAML, through the app ----------------------------------------------

KEYCLOAK = "http://keycloak.test/realms/demo/protocol/openid-connect/token/introspect"
UPSTREAM = "http://upstream.test:8000"

KEYCLOAK_CONF = {
    "vs.yaml": """
        apiVersion: gateway.solo.io/v1
        kind: VirtualService
        metadata: {name: api, namespace: default}
        spec:
          virtualHost:
            domains: ['*']
            options:
              extauth:
                configRef: {name: keycloak}
            routes:
            - routeAction: {single: {url: 'http://upstream.test:8000'}}
    """,
    "auth.yaml": """
        apiVersion: v1
        kind: Secret
        metadata: {name: gateway-secret}
        stringData: {client-secret: s3cr3t}
        ---
        apiVersion: enterprise.gloo.solo.io/v1
        kind: AuthConfig
        metadata: {name: keycloak}
        spec:
          configs:
          - oauth2:
              accessTokenValidation:
                introspection:
                  introspectionUrl: http://keycloak.test/realms/demo/protocol/openid-connect/token/introspect
                  clientId: gateway
                  clientSecretRef: {name: gateway-secret}
                  retries: 0
                usernameClaim: preferred_username
                forwardHeaders:
                  X-User: preferred_username
                  X-Roles: realm_access.roles
    """,
}


def test_keycloak_shaped_introspection_url_is_called_with_basic_auth_and_the_token(make_app, requests_mock):
    answer = {"active": True, "sub": "4f0e", "preferred_username": "alice", "exp": int(time.time()) + 300,
              "realm_access": {"roles": ["reader", "writer"]}, "client_id": "web"}
    idp = requests_mock.post(KEYCLOAK, json=answer)
    upstream = requests_mock.get(f"{UPSTREAM}/orders", json={})
    app = make_app(KEYCLOAK_CONF)

    response = app.test_client().get("/orders", headers={"Authorization": "Bearer kc-token-1",
                                                         "X-User": "mallory"})

    assert response.status_code == 200
    sent = idp.last_request
    assert urllib.parse.parse_qs(sent.text) == {"token": ["kc-token-1"], "token_type_hint": ["access_token"]}
    assert sent.headers["Authorization"] == "Basic " + base64.b64encode(b"gateway:s3cr3t").decode()
    assert sent.headers["Accept"] == "application/json"
    assert upstream.last_request.headers["X-User"] == "alice"
    assert upstream.last_request.headers["X-Roles"] == "reader,writer"


def test_keycloak_inactive_answer_is_refused_with_403(make_app, requests_mock):
    requests_mock.post(KEYCLOAK, json={"active": False})
    upstream = requests_mock.get(f"{UPSTREAM}/orders", json={})
    app = make_app(KEYCLOAK_CONF)

    response = app.test_client().get("/orders", headers={"Authorization": "Bearer kc-token-2"})

    assert response.status_code == 403
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert upstream.call_count == 0


STATUS_CONF = {
    "vs.yaml": KEYCLOAK_CONF["vs.yaml"],
    "auth.yaml": """
        apiVersion: enterprise.gloo.solo.io/v1
        kind: AuthConfig
        metadata: {name: keycloak}
        spec:
          authenticationFailureStatus: 401
          statusOnError: 502
          %s
          configs:
          - oauth2:
              accessTokenValidation:
                introspectionUrl: http://keycloak.test/realms/demo/protocol/openid-connect/token/introspect
    """,
}


def _status_app(make_app, extra: str = "") -> t.Any:
    return make_app({**STATUS_CONF, "auth.yaml": STATUS_CONF["auth.yaml"] % extra})


def test_configured_401_answers_missing_token_with_a_bearer_challenge(make_app, requests_mock):
    response = _status_app(make_app).test_client().get("/orders")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_configured_status_on_error_answers_when_the_idp_fails(make_app, requests_mock):
    requests_mock.post(KEYCLOAK, status_code=500)
    upstream = requests_mock.get(f"{UPSTREAM}/orders", json={})
    response = _status_app(make_app).test_client().get("/orders", headers={"Authorization": "Bearer t-1"})
    assert response.status_code == 502
    assert upstream.call_count == 0


def test_failure_mode_allow_forwards_when_the_idp_fails(make_app, requests_mock):
    requests_mock.post(KEYCLOAK, status_code=500)
    upstream = requests_mock.get(f"{UPSTREAM}/orders", json={})
    app = _status_app(make_app, "failureModeAllow: true")
    response = app.test_client().get("/orders", headers={"Authorization": "Bearer t-1"})
    assert response.status_code == 200
    assert upstream.call_count == 1
