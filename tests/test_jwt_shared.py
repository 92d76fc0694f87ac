"""Verified JWT claims shared between validators (workers, replicas) through a token cache.

The shared backend here is a RecordingCache (tests/support/caches.py), whose entries stand for
what another worker finds in Redis; the Redis backend itself is covered in test_cache_redis.py,
with a real redis-server.
"""

from __future__ import annotations

import typing as t

import pytest

from gateway_app.auth.jwt_validation import JwtValidator
from gateway_app.errors import InvalidTokenError
from tests.keys import AUDIENCE
from tests.keys import ISSUER
from tests.keys import claims
from tests.keys import jwks_json
from tests.keys import make_jwt
from tests.keys import public_jwk
from tests.keys import rsa_key
from tests.support.caches import RecordingCache
from tests.factories import jwt_settings

KEY = rsa_key("shared")
OTHER_KEY = rsa_key("shared-other")


def validator(shared: RecordingCache, *keys: t.Any, **fields: t.Any) -> JwtValidator:
    jwks = jwks_json(*(public_jwk(key, kid=f"k{index}") for index, key in enumerate(keys or (KEY,))))
    mapping = {"localJwks": {"inlineString": jwks}, "issuer": ISSUER, "audiences": [AUDIENCE], **fields}
    return JwtValidator(jwt_settings(mapping), shared=shared)


def token(**overrides: t.Any) -> str:
    return make_jwt(claims(**overrides), KEY, "RS256", kid="k0")


def test_a_token_verified_by_one_validator_is_accepted_by_another_without_a_signature_check(jwt_decodes):
    shared = RecordingCache()
    value = token(sub="my-client")
    first = validator(shared).validate(value)
    second = validator(shared).validate(value)
    assert second.claims == first.claims and second.claims["sub"] == "my-client"
    assert jwt_decodes == [value]


def test_the_shared_entry_holds_claims_and_the_key_thumbprint_under_a_hashed_key():
    shared = RecordingCache()
    value = token()
    validator(shared).validate(value)
    [(key, entry)] = shared.entries.items()
    assert value not in key and len(key) == 64
    assert set(entry) == {"claims", "key", "alg"} and len(entry["key"]) == 64 and entry["alg"] == "RS256"


def test_an_entry_whose_key_is_not_in_this_validators_key_set_is_not_trusted(jwt_decodes):
    shared = RecordingCache()
    value = token()
    validator(shared).validate(value)
    with pytest.raises(InvalidTokenError) as caught:
        validator(shared, OTHER_KEY).validate(value)       # k0 is OTHER_KEY here: the signature fails
    assert caught.value.reason == "signature_invalid"
    assert jwt_decodes == [value, value]


def test_validators_with_other_acceptance_rules_do_not_share_entries():
    shared = RecordingCache()
    value = token()
    validator(shared).validate(value)
    with pytest.raises(InvalidTokenError) as caught:
        validator(shared, audiences=["api://other"]).validate(value)
    assert caught.value.reason == "audience_mismatch"


def test_an_expired_shared_entry_is_refused_with_its_reason():
    shared = RecordingCache()
    value = token()
    claims_of = validator(shared).validate(value).claims
    [(key, entry)] = shared.entries.items()
    shared.entries[key] = {**entry, "claims": {**claims_of, "exp": 1_000_000}}
    with pytest.raises(InvalidTokenError) as caught:
        validator(shared).validate(value)
    assert caught.value.reason == "token_expired"


@pytest.mark.parametrize("entry", [
    "not a mapping", {"claims": "x", "key": "y", "alg": "RS256"}, {"claims": {}, "key": 1, "alg": "RS256"},
    {"claims": {"sub": "x"}, "key": "0" * 64, "alg": "RS256"},
])
def test_a_malformed_or_unknown_shared_entry_means_verifying_locally(entry, jwt_decodes):
    shared = RecordingCache()
    value = token()
    validator(shared).validate(value)
    [key] = list(shared.entries)
    shared.entries[key] = entry
    assert validator(shared).validate(value).claims["sub"] == claims()["sub"]
    assert jwt_decodes == [value, value]


def test_an_entry_naming_an_alg_this_validator_does_not_allow_is_not_trusted(jwt_decodes):
    shared = RecordingCache()
    value = token()
    validator(shared).validate(value)
    [(key, entry)] = shared.entries.items()
    shared.entries[key] = {**entry, "alg": "ES256"}
    validator(shared).validate(value)
    assert jwt_decodes == [value, value]


def test_a_refused_token_is_never_shared():
    shared = RecordingCache()
    with pytest.raises(InvalidTokenError):
        validator(shared).validate(make_jwt(claims(), OTHER_KEY, "RS256", kid="k0"))
    assert not shared.entries
