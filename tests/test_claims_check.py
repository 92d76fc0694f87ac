"""The ``claims`` one-line Rego condition, and claims copied to headers (forwardHeaders/claimsToHeaders)."""

from __future__ import annotations

import typing as t

import pytest

from gateway_app.auth.claims_check import RegoClaimsCheck
from gateway_app.auth.state import AuthState
from gateway_app.auth.state import TokenInfo
from gateway_app.auth.steps import AuthContext
from gateway_app.auth.steps import ClaimHeader
from gateway_app.auth.steps import OAuth2Step
from gateway_app.auth.tokens import TokenSource
from gateway_app.errors import AccessDeniedError
from gateway_app.errors import ConfigError
from gateway_app.errors import InsufficientScopeError
from gateway_app.errors import PolicyError
from gateway_app.routing import Route
from tests.factories import bearer
from tests.factories import incoming_request

CLAIMS = {"iss": "https://idp.example.com/", "email": "alice@example.com", "groups": ["dev", "admin"],
          "tier": "gold", "disabled": False, "scope": "read write"}


@pytest.mark.parametrize("expression, expected", [
    ('input.claims.iss == "https://idp.example.com/"', True),
    ('input.claims.iss == "https://evil.example.com/"', False),
    ('contains(input.claims.email, "@example.com")', True),
    ('"admin" in input.claims.groups', True),
    ('"root" in input.claims.groups', False),
    ('input.claims.tier == "gold"; "dev" in input.claims.groups', True),
    ('input.claims.tier == "gold"; "root" in input.claims.groups', False),
    ("not input.claims.disabled", True),
    ('input.claims.missing == "x"', False),
    ('input.claims.tier in {"gold", "silver"}', True),
], ids=["equality holds", "equality fails", "string contains", "array contains", "array lacks",
        "and with ';' holds", "and with ';' fails", "not", "missing claim is undefined: deny",
        "or through a set"])
def test_claims_expression(expression, expected):
    assert RegoClaimsCheck(expression, "test").allows(CLAIMS) is expected


def test_claims_expression_that_does_not_compile_is_a_config_error_naming_the_field():
    where = "conf/auth.yaml: AuthConfig default/a: spec.configs[0].oauth2.accessTokenValidation.claims"
    with pytest.raises(ConfigError, match="claims expression does not compile") as caught:
        RegoClaimsCheck("input.claims.tier ==", where)
    assert "accessTokenValidation.claims" in str(caught.value)


def test_claims_expression_runtime_error_raises_a_policy_error():
    with pytest.raises(PolicyError):
        RegoClaimsCheck("input.claims.tier / 2 > 1", "test").allows(CLAIMS)


# -- claims to headers ------------------------------------------------------------------------

class StaticValidator:
    def __init__(self, claims: t.Mapping[str, t.Any]) -> None:
        self.claims = claims

    def validate(self, token: str) -> TokenInfo:
        return TokenInfo(claims=self.claims, kind="introspection")


def run_step(claims: t.Mapping[str, t.Any], **options: t.Any) -> AuthState:
    step = OAuth2Step(index=0, name="config_0", token_source=TokenSource(), validator=StaticValidator(claims),
                      validator_kind="introspection", **options)
    request = incoming_request(host="h", headers=bearer("abc"), send_host=False)
    ctx = AuthContext(request=request, route=Route(name="r", source="t", matchers=(), targets=()), state=AuthState())
    step.run(ctx)
    return ctx.state


HEADER_CLAIMS = {"sub": "alice", "groups": ["dev", "ops"], "ids": [1, 2], "age": 42, "admin": True,
                 "ratio": 0.5, "address": {"country": "FR", "city": "Lyon"}, "mixed": ["a", {"b": 1}],
                 "empty": []}


@pytest.mark.parametrize("claim, expected", [
    ("sub", "alice"),
    ("groups", "dev,ops"),
    ("ids", "1,2"),
    ("age", "42"),
    ("admin", "true"),
    ("ratio", "0.5"),
    ("address", '{"city":"Lyon","country":"FR"}'),
    ("address.country", "FR"),
    ("mixed", '["a",{"b":1}]'),
], ids=["string as is", "array of strings comma-joined", "array of numbers comma-joined",
        "number as JSON text", "boolean as JSON text", "float as JSON text", "object as compact JSON",
        "dotted path into an object", "array with an object as JSON"])
def test_claim_header_values(claim, expected):
    """Missing -> no header; array of scalars -> comma-joined; object/number/bool -> JSON text."""
    state = run_step(HEADER_CLAIMS, claim_headers=(ClaimHeader(claim=claim, header="x-claim"),))
    assert state.upstream_headers["x-claim"] == expected


def test_missing_claim_sets_no_header_but_the_header_stays_managed():
    """A missing claim sets nothing; the step still declares the header so the client's copy is removed."""
    step_headers = (ClaimHeader(claim="department", header="x-department"),)
    state = run_step(HEADER_CLAIMS, claim_headers=step_headers)
    step = OAuth2Step(index=0, name="c", token_source=TokenSource(), validator=StaticValidator({}),
                      validator_kind="introspection", claim_headers=step_headers)

    assert "x-department" not in state.upstream_headers
    assert step.managed_headers() == {"x-department"}


@pytest.mark.parametrize("claim", ["empty", "blank"], ids=["empty array", "empty string"])
def test_empty_claim_sets_no_header(claim):
    headers = (ClaimHeader(claim=claim, header="x-claim"),)
    assert "x-claim" not in run_step({**HEADER_CLAIMS, "blank": ""}, claim_headers=headers).upstream_headers


def test_append_joins_values_of_several_claims_into_one_header():
    headers = (ClaimHeader("sub", "x-ids"), ClaimHeader("groups", "x-ids", append=True))
    assert run_step(HEADER_CLAIMS, claim_headers=headers).upstream_headers["x-ids"] == "alice,dev,ops"


def test_without_append_a_later_claim_replaces_the_header():
    headers = (ClaimHeader("sub", "x-who"), ClaimHeader("age", "x-who"))
    assert run_step(HEADER_CLAIMS, claim_headers=headers).upstream_headers["x-who"] == "42"


def test_metadata_from_claims_is_nested_under_config_index_and_skips_missing_claims():
    state = run_step(HEADER_CLAIMS, metadata_from_claims={"sub": "sub", "who": "missing", "groups": "groups"})
    assert state.metadata == {"config_0": {"sub": "alice", "groups": ["dev", "ops"]}}


def test_username_claim_sets_the_subject():
    assert run_step({"sub": "4f0e", "preferred_username": "alice"},
                    username_claim="preferred_username").subject == "alice"


def test_claims_check_that_fails_to_evaluate_is_a_logged_policy_error_not_a_mismatch(caplog):
    expression = "input.claims.tier / 2 > 1"
    with pytest.raises(PolicyError) as caught:
        run_step(CLAIMS, claims_check=RegoClaimsCheck(expression, "t"), claims_expression=expression)
    assert (caught.value.status_code, caught.value.reason) == (403, "policy_error")
    assert any(expression in record.getMessage() and record.levelname == "WARNING" for record in caplog.records)


def test_claims_check_failure_is_access_denied_with_claims_mismatch():
    with pytest.raises(AccessDeniedError) as caught:
        run_step(CLAIMS, claims_check=RegoClaimsCheck('input.claims.tier == "silver"', "t"),
                 claims_expression='input.claims.tier == "silver"')
    assert caught.value.reason == "claims_mismatch"


@pytest.mark.parametrize("claims", [{"scope": "read"}, {"scp": ["read"]}, {}], ids=["scope", "scp", "none"])
def test_required_scopes_missing_is_insufficient_scope(claims):
    with pytest.raises(InsufficientScopeError, match="write"):
        run_step(claims, required_scopes=("read", "write"))


@pytest.mark.parametrize("claims", [{"scope": "write read"}, {"scp": ["read", "write"]}], ids=["scope", "scp"])
def test_required_scopes_present_pass(claims):
    run_step(claims, required_scopes=("read", "write"))
