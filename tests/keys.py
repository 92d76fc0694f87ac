"""Test key material: keys generated once per test session, JWKS builders and ``make_jwt``."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
import typing as t

import jwt
from jwt.algorithms import ECAlgorithm
from jwt.algorithms import OKPAlgorithm
from jwt.algorithms import RSAAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://idp.example.test/"
AUDIENCE = "api://default"

_CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}
_ALG_FOR_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


def rsa_key(name: str = "main") -> rsa.RSAPrivateKey:
    """A 2048-bit RSA key, the same object for the same name during the session."""
    return _generated("RSA", name)


def ec_key(curve: str = "P-256", name: str = "main") -> ec.EllipticCurvePrivateKey:
    return _generated(curve, name)


def ed25519_key(name: str = "main") -> ed25519.Ed25519PrivateKey:
    return _generated("Ed25519", name)


@functools.cache
def _generated(kind: str, name: str) -> t.Any:
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(_CURVES[kind]())


def public_jwk(private_key: t.Any, *, kid: str | None = None, alg: str | None = None,
               use: str | None = "sig") -> dict[str, t.Any]:
    """The public JWK of a private key, with optional ``kid``, ``alg`` and ``use``."""
    public_key = private_key.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    jwk.pop("key_ops", None)
    for field, value in (("kid", kid), ("alg", alg), ("use", use)):
        if value is not None:
            jwk[field] = value
    return jwk


def jwks(*keys: dict[str, t.Any]) -> dict[str, t.Any]:
    return {"keys": list(keys)}


def jwks_json(*keys: dict[str, t.Any]) -> str:
    return json.dumps(jwks(*keys))


def gloo_seed_jwks(kid: str = "sKvSeedKey") -> str:
    """The shape of Gloo's seed JWKS: one RSA key with kty, alg, kid, use, e, n in that order."""
    full = public_jwk(rsa_key(), kid=kid)
    ordered = {"kty": "RSA", "alg": "RS256", "kid": kid, "use": "sig", "e": full["e"], "n": full["n"]}
    return json.dumps({"keys": [ordered]})


def pem_of_public(private_key: t.Any) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def claims(**overrides: t.Any) -> dict[str, t.Any]:
    """Valid access-token claims (iss, aud, sub, iat, exp in 5 min), with overrides; None drops a claim."""
    now = int(time.time())
    base: dict[str, t.Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "my-client", "scope": "read write",
                              "iat": now, "exp": now + 300}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def make_jwt(claims: dict[str, t.Any], key: t.Any, alg: str = "RS256", kid: str | None = "main",
             headers: dict[str, t.Any] | None = None) -> str:
    """A JWT signed with ``key`` (a private key object) by PyJWT."""
    all_headers = dict(headers or {})
    if kid is not None:
        all_headers["kid"] = kid
    return jwt.encode(claims, key, algorithm=alg, headers=all_headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_jwt(header: dict[str, t.Any], claims: dict[str, t.Any], signature: bytes = b"") -> str:
    """A token assembled by hand, for shapes PyJWT refuses to produce (alg none, ...)."""
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()), b64url(signature)])


def hmac_jwt(claims: dict[str, t.Any], secret: bytes, kid: str | None = "main") -> str:
    """An HS256 token signed by hand (PyJWT refuses PEM secrets): the key-confusion attack."""
    header: dict[str, t.Any] = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def alg_for_curve(curve: str) -> str:
    return _ALG_FOR_CURVE[curve]
