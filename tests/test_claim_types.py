"""gateway_app.auth.claim_types and TokenInfo: claim types (RFC 7519 §4.1) and the exp/nbf rule, in one place."""

from __future__ import annotations

import pytest

from gateway_app.auth.claim_types import MAX_NUMERIC_DATE
from gateway_app.auth.claim_types import check_claim_types
from gateway_app.auth.state import TokenInfo
from gateway_app.errors import InvalidTokenError

NOW = 1_700_000_000.0


@pytest.mark.parametrize("claims", [
    {"exp": 10 ** 400}, {"exp": MAX_NUMERIC_DATE + 1}, {"exp": -1}, {"nbf": "0"}, {"iat": True},
    {"aud": 1}, {"aud": ["a", None]}, {"iss": ["x"]}, {"sub": 7}, {"client_id": {}}, {"scope": ["a"]},
    {"scp": [1]}, {"jti": 1}, {"username": 1}, {"token_type": 1},
], ids=["exp of 400 digits", "exp past year 9999", "negative exp", "nbf a string", "iat a boolean",
        "aud a number", "aud holding null", "iss a list", "sub a number", "client_id an object", "scope a list",
        "scp holding a number", "jti a number", "username a number", "token_type a number"])
def test_mistyped_registered_claims_are_refused_as_token_claims_invalid(claims):
    with pytest.raises(InvalidTokenError) as caught:
        check_claim_types(claims)
    assert caught.value.reason == "token_claims_invalid"
    with pytest.raises(InvalidTokenError):
        TokenInfo.from_claims(claims, "jwt")


def test_well_typed_and_private_claims_pass():
    check_claim_types({"exp": 1.5, "nbf": 0, "iat": MAX_NUMERIC_DATE, "aud": ["a", "b"], "iss": "i", "sub": "s",
                       "scope": "a b", "scp": ["a"], "groups": [{"x": 1}], "exp_hint": "anything"})


def test_token_info_checks_exp_and_nbf_with_leeway():
    info = TokenInfo.from_claims({"exp": NOW, "nbf": NOW - 10}, "introspection")
    info.check_times(NOW - 1)
    info.check_times(NOW + 4, leeway=5)
    with pytest.raises(InvalidTokenError) as caught:
        info.check_times(NOW)
    assert caught.value.reason == "token_expired"
    with pytest.raises(InvalidTokenError) as caught:
        info.check_times(NOW - 20, leeway=5)
    assert caught.value.reason == "token_not_yet_valid"


def test_a_jwt_issued_in_the_future_is_not_yet_valid_but_an_introspected_one_is_not_judged_by_iat():
    claims = {"exp": NOW + 600, "iat": NOW + 120}
    with pytest.raises(InvalidTokenError) as caught:
        TokenInfo.from_claims(claims, "jwt").check_times(NOW, leeway=30)
    assert caught.value.reason == "token_not_yet_valid"
    TokenInfo.from_claims(claims, "introspection").check_times(NOW)
