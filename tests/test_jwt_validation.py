"""JwtValidator and parse_jwt_settings against an inline JWKS (remote sources: test_jwks.py)."""

from __future__ import annotations

import json
import logging
import re
import time
import typing as t

import jwt
import pytest

from gateway_app.auth.jwks import SIGNATURE_ALGORITHMS
from gateway_app.auth.jwks import DiscoverySettings
from gateway_app.auth.jwks import LocalJwksSettings
from gateway_app.auth.jwks import RemoteJwksSettings
from gateway_app.auth.jwt_validation import JwtValidator
from gateway_app.errors import ConfigError
from gateway_app.errors import InvalidTokenError
from tests.keys import AUDIENCE
from tests.keys import ISSUER
from tests.keys import b64url
from tests.keys import claims
from tests.keys import ec_key
from tests.keys import ed25519_key
from tests.keys import gloo_seed_jwks
from tests.keys import hmac_jwt
from tests.keys import jwks_json
from tests.keys import make_jwt
from tests.keys import pem_of_public
from tests.keys import public_jwk
from tests.keys import raw_jwt
from tests.keys import rsa_key
from tests.factories import JWT_PATH as PATH
from tests.factories import JWT_WHERE as WHERE
from tests.factories import jwt_settings


# alg -> (private key, kid) for every supported algorithm
SIGNERS: dict[str, tuple[t.Callable[[], t.Any], str]] = {
    "RS256": (rsa_key, "rsa"), "RS384": (rsa_key, "rsa"), "RS512": (rsa_key, "rsa"),
    "PS256": (rsa_key, "rsa"), "PS384": (rsa_key, "rsa"), "PS512": (rsa_key, "rsa"),
    "ES256": (lambda: ec_key("P-256"), "ec256"), "ES384": (lambda: ec_key("P-384"), "ec384"),
    "ES512": (lambda: ec_key("P-521"), "ec521"), "EdDSA": (ed25519_key, "ed"),
}


def all_keys_jwks() -> str:
    return jwks_json(
        public_jwk(rsa_key(), kid="rsa"),
        public_jwk(ec_key("P-256"), kid="ec256"),
        public_jwk(ec_key("P-384"), kid="ec384"),
        public_jwk(ec_key("P-521"), kid="ec521"),
        public_jwk(ed25519_key(), kid="ed"),
    )


def validator(jwks_text: str | None = None, **fields: t.Any) -> JwtValidator:
    mapping = {"localJwks": {"inlineString": jwks_text or all_keys_jwks()}, "issuer": ISSUER,
               "audiences": [AUDIENCE], **fields}
    return JwtValidator(jwt_settings(mapping))


def rsa_token(**overrides: t.Any) -> str:
    return make_jwt(claims(**overrides), rsa_key(), "RS256", kid="rsa")


def refusal(jwt_validator: JwtValidator, token: str) -> InvalidTokenError:
    with pytest.raises(InvalidTokenError) as caught:
        jwt_validator.validate(token)
    message = str(caught.value)
    assert token not in message
    signature = token.rsplit(".", 1)[-1]
    if len(signature) >= 8:
        assert signature not in message
    return caught.value


# -- accepted tokens ---------------------------------------------------------------

def test_valid_rs256_token_returns_verified_claims_and_expiry() -> None:
    token_claims = claims(sub="alice")
    info = validator().validate(make_jwt(token_claims, rsa_key(), "RS256", kid="rsa"))
    assert info.kind == "jwt"
    assert info.subject == "alice"
    assert info.claims["scope"] == "read write"
    assert info.expires_at == float(token_claims["exp"])


@pytest.mark.parametrize("alg", SIGNATURE_ALGORITHMS)
def test_every_supported_algorithm_is_accepted_when_allowed(alg: str) -> None:
    key, kid = SIGNERS[alg]
    info = validator(algorithms=[alg]).validate(make_jwt(claims(), key(), alg, kid=kid))
    assert info.subject == "my-client"


@pytest.mark.parametrize("alg", SIGNATURE_ALGORITHMS)
def test_every_algorithm_is_refused_when_not_in_the_allow_list(alg: str) -> None:
    key, kid = SIGNERS[alg]
    others = [other for other in SIGNATURE_ALGORITHMS if other != alg]
    error = refusal(validator(algorithms=others), make_jwt(claims(), key(), alg, kid=kid))
    assert error.reason == "alg_not_allowed"
    assert alg in str(error)


def test_audience_claim_as_a_list_matches_any_configured_audience() -> None:
    info = validator(audiences=["api://other", AUDIENCE]).validate(rsa_token(aud=["x", AUDIENCE]))
    assert info.claims["aud"] == ["x", AUDIENCE]


def test_token_expired_within_clock_skew_is_accepted() -> None:
    assert validator(clockSkew="30s").validate(rsa_token(exp=int(time.time()) - 10)).subject == "my-client"


def test_iat_slightly_in_the_future_within_clock_skew_is_accepted() -> None:
    assert validator().validate(rsa_token(iat=int(time.time()) + 10)).subject == "my-client"


def test_token_without_kid_is_verified_by_the_key_that_fits() -> None:
    keys = jwks_json(public_jwk(rsa_key("other")), public_jwk(rsa_key()), public_jwk(ec_key()))
    token = make_jwt(claims(), rsa_key(), "RS256", kid=None)
    assert validator(keys).validate(token).subject == "my-client"


def test_without_issuer_and_audiences_configured_any_iss_and_aud_pass() -> None:
    jwt_validator = JwtValidator(jwt_settings({"localJwks": {"inlineString": all_keys_jwks()}}))
    assert jwt_validator.validate(rsa_token(iss="https://elsewhere/", aud="x")).subject == "my-client"


def test_rfc9068_typ_is_accepted_when_required() -> None:
    token = make_jwt(claims(), rsa_key(), "RS256", kid="rsa", headers={"typ": "at+jwt"})
    assert validator(requireTyp=True).validate(token).subject == "my-client"


def test_gloo_seed_jwks_shape_loads_and_verifies() -> None:
    token = make_jwt(claims(), rsa_key(), "RS256", kid="sKvSeedKey")
    assert validator(gloo_seed_jwks()).validate(token).subject == "my-client"


def test_validator_with_inline_jwks_is_ready_without_any_fetch() -> None:
    jwt_validator = validator()
    jwt_validator.warm_up()
    assert jwt_validator.ready()


# -- refused tokens ----------------------------------------------------------------

def test_expired_jwt_is_rejected_saying_how_long_ago() -> None:
    error = refusal(validator(), rsa_token(exp=int(time.time()) - 100))
    assert error.reason == "token_expired"
    assert error.status_code == 403
    assert re.fullmatch(r"token expired (99|100|101)s ago", str(error))


def test_token_before_its_nbf_is_not_yet_valid() -> None:
    error = refusal(validator(), rsa_token(nbf=int(time.time()) + 120))
    assert error.reason == "token_not_yet_valid"
    assert re.fullmatch(r"token not valid for another (119|120|121)s", str(error))


def test_token_issued_in_the_future_beyond_clock_skew_is_not_yet_valid() -> None:
    error = refusal(validator(), rsa_token(iat=int(time.time()) + 120))
    assert error.reason == "token_not_yet_valid"


@pytest.mark.parametrize("overrides, reason, logged", [
    ({"iss": "https://evil.example/"}, "issuer_mismatch", "expected 'https://idp.example.test/'"),
    ({"iss": None}, "issuer_mismatch", "issuer None"),
    ({"aud": "api://other"}, "audience_mismatch", "expected one of ['api://default']"),
    ({"aud": None}, "audience_mismatch", "audience None"),
    ({"exp": None}, "exp_missing", None),
    ({"exp": "soon"}, "token_claims_invalid", None),
], ids=["wrong issuer", "missing issuer", "wrong audience", "missing audience", "missing exp", "exp not a number"])
def test_claims_that_do_not_match_are_refused_and_only_the_log_names_what_was_expected(
        overrides: dict[str, t.Any], reason: str, logged: str | None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gateway_app.auth.jwt"):
        error = refusal(validator(), rsa_token(**overrides))
    assert error.reason == reason
    assert "idp.example.test" not in error.message and "api://default" not in error.message
    if logged:
        assert logged in caplog.text


def test_tampered_payload_fails_signature_verification() -> None:
    header, _, signature = rsa_token().split(".")
    forged_payload = raw_jwt({}, claims(sub="admin")).split(".")[1]
    error = refusal(validator(), f"{header}.{forged_payload}.{signature}")
    assert error.reason == "signature_invalid"


def test_token_signed_by_another_key_with_a_published_kid_is_refused() -> None:
    error = refusal(validator(), make_jwt(claims(), rsa_key("other"), "RS256", kid="rsa"))
    assert error.reason == "signature_invalid"


def test_token_without_kid_signed_by_no_published_key_is_refused() -> None:
    error = refusal(validator(), make_jwt(claims(), rsa_key("other"), "RS256", kid=None))
    assert error.reason == "signature_invalid"


def test_unknown_kid_is_refused() -> None:
    error = refusal(validator(), make_jwt(claims(), rsa_key(), "RS256", kid="nobody"))
    assert error.reason == "kid_unknown"
    assert "'nobody'" in str(error)


def test_unsigned_alg_none_token_is_refused() -> None:
    error = refusal(validator(), raw_jwt({"alg": "none", "kid": "rsa"}, claims()))
    assert error.reason == "alg_not_allowed"


def test_hs256_signed_with_the_rsa_public_key_pem_is_refused() -> None:
    token = hmac_jwt(claims(), pem_of_public(rsa_key()), kid="rsa")
    error = refusal(validator(), token)
    assert error.reason == "alg_not_allowed"
    assert "HMAC" in str(error)


def test_es256_header_naming_an_rsa_key_is_refused() -> None:
    header, payload, signature = make_jwt(claims(), ec_key(), "ES256", kid="ec256").split(".")
    confused = raw_jwt({"alg": "ES256", "kid": "rsa"}, claims()).split(".")[0]
    error = refusal(validator(), f"{confused}.{payload}.{signature}")
    assert error.reason == "alg_not_allowed"
    assert "RSA" in str(error)


def test_alg_other_than_the_keys_own_alg_is_refused() -> None:
    keys = jwks_json(public_jwk(rsa_key(), kid="rsa", alg="RS256"))
    error = refusal(validator(keys), make_jwt(claims(), rsa_key(), "PS256", kid="rsa"))
    assert error.reason == "alg_not_allowed"


def test_token_without_kid_is_refused_when_kid_is_required() -> None:
    error = refusal(validator(requireKid=True), make_jwt(claims(), rsa_key(), "RS256", kid=None))
    assert error.reason == "kid_unknown"


def test_plain_jwt_typ_is_refused_when_rfc9068_typ_is_required() -> None:
    error = refusal(validator(requireTyp=True), rsa_token())
    assert error.reason == "typ_invalid"
    assert "'JWT'" in str(error)


MALFORMED = {
    "two segments": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0",
    "five segments (JWE)": "a.b.c.d.e",
    "header not base64url": "eyJhbGciOiJSUzI1NiJ9!!.eyJzdWIiOiJ4In0.c2ln",
    "header not JSON": f"{b64url(b'not json')}.eyJzdWIiOiJ4In0.c2ln",
    "header a JSON list": f"{b64url(b'[1]')}.eyJzdWIiOiJ4In0.c2ln",
    "header without alg": f"{b64url(json.dumps({'kid': 'rsa'}).encode())}.eyJzdWIiOiJ4In0.c2ln",
    "kid not a string": f"{b64url(json.dumps({'alg': 'RS256', 'kid': 7}).encode())}.eyJzdWIiOiJ4In0.c2ln",
    "70 KB token": "eyJhbGciOiJSUzI1NiJ9." + "A" * 70_000 + ".c2ln",
}


@pytest.mark.parametrize("token", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_tokens_are_refused_before_any_key_lookup(token: str) -> None:
    error = refusal(validator(), token)
    assert error.reason == "token_malformed"


def _respelled(token: str, segment: int, change: t.Callable[[str], str]) -> str:
    parts = token.split(".")
    parts[segment] = change(parts[segment])
    return ".".join(parts)


def _other_unused_bits(segment: str) -> str:
    """The same bytes with other bits in the last character's unused low bits (lenient decoders agree)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return segment[:-1] + alphabet[alphabet.index(segment[-1]) ^ 1]    # the lowest bit is unused


@pytest.mark.parametrize("respell", [
    lambda tok: _respelled(tok, 2, lambda s: s + "=="),
    lambda tok: _respelled(tok, 2, lambda s: s + "="),
    lambda tok: _respelled(tok, 1, lambda s: s + "=="),
    lambda tok: _respelled(tok, 0, lambda s: s + "="),
], ids=["signature ==", "signature =", "payload ==", "header ="])
def test_a_valid_token_spelled_with_padding_is_refused(respell) -> None:
    """Red team finding 8: ``<jwt>==`` was accepted as the same token under another cache key."""
    token = rsa_token()
    assert validator().validate(token).claims["sub"]
    assert refusal(validator(), respell(token)).reason == "token_malformed"


def test_a_signature_with_other_unused_bits_is_refused() -> None:
    token = rsa_token()
    signature = token.split(".")[2]
    assert len(signature) % 4 in (2, 3)                       # RS256: 256 bytes -> 342 characters
    respelled = _respelled(token, 2, _other_unused_bits)
    assert jwt.utils.base64url_decode(respelled.split(".")[2]) == jwt.utils.base64url_decode(signature)
    assert refusal(validator(), respelled).reason == "token_malformed"


def test_signed_payload_that_is_not_json_is_malformed() -> None:
    token = jwt.PyJWS().encode(b"not json", rsa_key(), algorithm="RS256", headers={"kid": "rsa"})
    error = refusal(validator(), token)
    assert error.reason == "token_malformed"


def test_oversized_token_message_gives_the_size_not_the_token() -> None:
    error = refusal(validator(), MALFORMED["70 KB token"])
    assert "65536" in str(error)
    assert len(str(error)) < 200


# -- configuration -----------------------------------------------------------------

def test_defaults_are_every_asymmetric_algorithm_30s_skew_and_5s_timeout() -> None:
    settings = jwt_settings({"remoteJwks": {"url": "https://idp/jwks"}})
    assert settings.algorithms == SIGNATURE_ALGORITHMS
    assert settings.clock_skew == 30.0
    assert settings.timeout == 5.0
    assert settings.issuer is None and settings.audiences == ()
    assert not settings.require_kid and not settings.require_typ
    assert settings.jwks == RemoteJwksSettings("https://idp/jwks", 300.0)


def test_every_field_is_read() -> None:
    settings = jwt_settings({
        "discovery": {"issuerUrl": "https://idp/", "refreshInterval": "1m"},
        "issuer": "https://idp/", "audiences": ["a", "b"], "algorithms": ["ES256", "RS256"],
        "clockSkew": "5s", "requireKid": True, "requireTyp": True, "timeout": "500ms",
    })
    assert settings.jwks == DiscoverySettings("https://idp/", 60.0)
    assert settings.audiences == ("a", "b")
    assert settings.algorithms == ("ES256", "RS256")
    assert (settings.clock_skew, settings.timeout) == (5.0, 0.5)
    assert settings.require_kid and settings.require_typ


def test_equal_configs_give_equal_hashable_settings() -> None:
    first = jwt_settings({"localJwks": {"inlineString": gloo_seed_jwks()}, "audiences": ["a"]})
    second = jwt_settings({"localJwks": {"inlineString": gloo_seed_jwks()}, "audiences": ["a"]})
    other = jwt_settings({"localJwks": {"inlineString": gloo_seed_jwks()}, "audiences": ["b"]})
    assert first == second and hash(first) == hash(second)
    assert first != other


def test_local_jwks_is_parsed_once_into_keys() -> None:
    settings = jwt_settings({"localJwks": {"inlineString": gloo_seed_jwks()}})
    assert isinstance(settings.jwks, LocalJwksSettings)
    assert [key.kid for key in settings.jwks.key_set.keys] == ["sKvSeedKey"]


CONFIG_ERRORS = {
    "unknown field in jwt": ({"localJwks": {"inlineString": gloo_seed_jwks()}, "issuers": ["x"]},
                             "jwt.issuers: unknown field"),
    "unknown field in remoteJwks": ({"remoteJwks": {"url": "https://idp/jwks", "cacheDuration": "5m"}},
                                    "remoteJwks.cacheDuration: unknown field"),
    "unknown field in localJwks": ({"localJwks": {"inlineString": gloo_seed_jwks(), "file": "x"}},
                                   "localJwks.file: unknown field"),
    "two key sources": ({"localJwks": {"inlineString": "{}"}, "remoteJwks": {"url": "https://idp/jwks"}},
                        "only one of localJwks, remoteJwks, discovery"),
    "no key source": ({"issuer": "https://idp/"}, "one of localJwks, remoteJwks, discovery is required"),
    "inline JWKS not JSON": ({"localJwks": {"inlineString": "keys: []"}}, "inlineString: is not JSON"),
    "inline JWKS not a JWKS": ({"localJwks": {"inlineString": '{"kty": "RSA"}'}}, "is not a JWKS"),
    "inline JWKS with only an encryption key": (
        {"localJwks": {"inlineString": jwks_json(public_jwk(rsa_key(), kid="enc", alg="RSA-OAEP", use="enc"))}},
        "localJwks.inlineString: the JWKS has no signature keys (keys with use=enc such as RSA-OAEP are ignored)"),
    "inline JWKS with only keys for other algorithms": (
        {"localJwks": {"inlineString": gloo_seed_jwks()}, "algorithms": ["ES256"]},
        "no key in the JWKS can verify any allowed algorithm"),
    "HMAC algorithm": ({"remoteJwks": {"url": "https://idp/jwks"}, "algorithms": ["RS256", "HS256"]},
                       "algorithms[1]: HS256 is an HMAC algorithm"),
    "alg none": ({"remoteJwks": {"url": "https://idp/jwks"}, "algorithms": ["none"]}, "never accepted"),
    "unsupported algorithm": ({"remoteJwks": {"url": "https://idp/jwks"}, "algorithms": ["ES256K"]},
                              "unsupported algorithm 'ES256K'"),
    "empty algorithm list": ({"remoteJwks": {"url": "https://idp/jwks"}, "algorithms": []},
                             "must list at least one algorithm"),
    "URL that is not http": ({"remoteJwks": {"url": "file:///etc/jwks.json"}}, "expected an http(s) URL"),
    "empty issuer": ({"remoteJwks": {"url": "https://idp/jwks"}, "issuer": ""}, "issuer: must not be empty"),
    "bad duration": ({"remoteJwks": {"url": "https://idp/jwks", "refreshInterval": "soon"}},
                     "remoteJwks.refreshInterval: expected a duration"),
}


@pytest.mark.parametrize("mapping, message", list(CONFIG_ERRORS.values()), ids=list(CONFIG_ERRORS))
def test_invalid_config_is_a_config_error_naming_the_field(mapping: dict[str, t.Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        jwt_settings(mapping)
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{WHERE}: {PATH}")
