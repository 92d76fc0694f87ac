"""The shipped Rego modules, evaluated against real build_input() output."""

from __future__ import annotations

import dataclasses
import io
import pathlib
import typing as t

import pytest

from gateway_app.auth.state import AuthState
from gateway_app.auth.state import TokenInfo
from gateway_app.incoming import IncomingRequest
from gateway_app.policy.decision import Decision
from gateway_app.policy.engine import PolicyEngine
from gateway_app.policy.loader import load_rego_directory
from gateway_app.policy.input_document import build_input
from gateway_app.policy.tooling import run_rego_tests
from tests.factories import incoming_request

REGO_DIR = pathlib.Path(__file__).resolve().parent.parent / "rego"
SEED_MODULE = "oauth-scope-apiproduct-opa-cm"
GLOO_QUERY = "data.test.allow == true"


@dataclasses.dataclass(frozen=True)
class Route:
    name: str = "petstore"
    labels: t.Mapping[str, str] = dataclasses.field(default_factory=lambda: {"usagePlans": "dev-portal"})
    api_product_id: str | None = "petstore"
    usage_plan: str | None = "gold"


def fixture_request() -> IncomingRequest:
    """The request the seed module's tests describe in ``request_input``."""
    return incoming_request("/api/pets", host="api.example.com", query_string="limit=1",
                            headers={"authorization": "Bearer not-a-real-token", "accept": "application/json"},
                            query={"limit": ["1"]}, request_id="req-1")


def with_claims(claims: dict[str, t.Any] | None) -> AuthState:
    state = AuthState()
    if claims is not None:
        state.accept_token(TokenInfo(claims=claims, kind="jwt"))
    return state


@pytest.fixture(scope="module")
def runtime_modules():
    return load_rego_directory(REGO_DIR)


@pytest.fixture(scope="module")
def seed_engine(runtime_modules):
    return PolicyEngine([runtime_modules[SEED_MODULE]], queries=[GLOO_QUERY])


def test_the_seed_policy_ships_unmodified_as_a_v0_module(runtime_modules):
    module = runtime_modules[SEED_MODULE]

    assert module.version == 0
    assert module.source.startswith("package test\ndefault allow = false\nallow {\n")
    assert "  scope == api_product_id\n}" in module.source


def test_rego_test_fixture_is_exactly_what_build_input_produces():
    modules = load_rego_directory(REGO_DIR, include_tests=True)
    engine = PolicyEngine([modules[SEED_MODULE], modules[f"{SEED_MODULE}_test"]])
    claims = {"sub": "my-client", "scope": "openid petstore"}
    query = 'data.test.request_input("petstore", data.test.jwt_state({"sub": "my-client", "scope": "openid petstore"}))'

    fixture = engine.evaluate(query, {})

    assert fixture == build_input(fixture_request(), Route(), with_claims(claims))


@pytest.mark.parametrize(("api_product_id", "claims", "allowed"), [
    ("petstore", {"sub": "my-client", "scope": "openid petstore"}, True),
    ("petstore", {"scope": "tracks petstore"}, True),
    ("petstore", {"sub": "my-client", "scope": "openid tracks"}, False),
    ("petstore", {"sub": "my-client"}, False),
    ("petstore", None, False),
    (None, {"scope": "openid  petstore"}, False),
], ids=["a scope naming the product is allowed", "one of several product scopes is allowed",
        "another product's scope is denied", "a token without scope is denied", "a request without JWT claims is denied",
        "a route without product id is denied even when the scope has an empty item"])
def test_seed_policy_decides_on_build_input_output(seed_engine, api_product_id, claims, allowed):
    document = build_input(fixture_request(), Route(api_product_id=api_product_id), with_claims(claims))

    decision = Decision.from_result(seed_engine.evaluate(GLOO_QUERY, document))

    assert decision.allowed is allowed
    assert decision.reason == ("policy_allowed" if allowed else "policy_denied")


@pytest.mark.parametrize("name", sorted(load_rego_directory(REGO_DIR)))
def test_every_shipped_module_evaluates_build_input_output_without_error(runtime_modules, name):
    engine = PolicyEngine([runtime_modules[name]])
    document = build_input(fixture_request(), Route(), with_claims({"sub": "my-client", "scope": "petstore"}))

    for package in engine.packages:
        assert isinstance(engine.evaluate(package, document), dict)


def test_rego_tests_shipped_in_rego_pass():
    out = io.StringIO()

    assert run_rego_tests(REGO_DIR, out=out) == 0, out.getvalue()
    assert "0 failed" in out.getvalue()
