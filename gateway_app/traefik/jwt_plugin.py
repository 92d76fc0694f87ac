"""Traefik Hub's JWT middleware (``spec.plugin.jwt``) translated into an oauth2 step with the
gateway's JWT validator (same key handling, algorithm checks, caches and claim headers).

- ``jwksUrl`` -> ``jwt.remoteJwks.url``;
- ``jwksFile`` -> ``jwt.localJwks.inlineString``: the JWKS itself (a JSON document, as the
  Traefik Hub examples inline it) or the path of a file holding it;
- ``publicKey`` -> a one-key ``localJwks`` (PEM RSA, EC or Ed25519 public key);
- ``tokenKey`` -> the token may also come from that query parameter (besides
  ``Authorization: Bearer``); form fields are not read: the body is the upstream's;
- ``claims``, ``forwardHeaders``, ``forwardAuthorization``, ``usernameClaim`` as for
  ``oAuthIntrospection``.

``signingSecret`` (HMAC, HS256…) is refused: a shared secret that verifies tokens also mints
them, so every gateway replica, log line and config copy holding it can forge any identity,
and accepting HS* next to public keys reopens the RS/HS algorithm-confusion attack. Sign with
a private key and give ``publicKey``, ``jwksFile`` or ``jwksUrl`` instead.
"""

from __future__ import annotations

import json
import os
import typing as t

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric import rsa

from ..auth.steps import OAuth2Step
from ..auth.tokens import TokenSource
from ..config.auth_configs import AuthBuildContext
from ..config.auth_configs import token_validator
from ..config.fields import Node
from ..config.loader import LineMap

KEY_SOURCES = ("jwksUrl", "jwksFile", "publicKey", "signingSecret")
FIELDS = (*KEY_SOURCES, "signingSecretBase64Encoded", "tokenKey", "claims", "forwardHeaders",
          "forwardAuthorization", "usernameClaim")
SIGNING_SECRET_REFUSAL = ("is not supported: a shared HMAC secret that verifies tokens also mints them, "
                          "and HS* next to public keys reopens algorithm confusion; sign with a private "
                          "key and set publicKey, jwksFile or jwksUrl")


def jwt_validator_node(node: Node) -> Node:
    """The ``jwt`` settings mapping (``remoteJwks`` or ``localJwks``) for the key source given.

    :raises ConfigError: none or several key sources, ``signingSecret``, an unreadable key or JWKS.
    """
    present = [field for field in KEY_SOURCES if node.has(field)]
    if len(present) != 1:
        raise node.error(present[1] if present else None,
                         f"exactly one of {', '.join(KEY_SOURCES)} must be set (Traefik Hub allows one source)")
    source = present[0]
    if source in ("signingSecret",) or node.has("signingSecretBase64Encoded"):
        node.raw("signingSecretBase64Encoded")
        raise node.error(source if source == "signingSecret" else "signingSecretBase64Encoded",
                         SIGNING_SECRET_REFUSAL)
    value = node.str(source, required=True)
    data = LineMap()
    data.line = getattr(node.data, "line", 0)
    data.key_lines = {}
    if source == "jwksUrl":
        data["remoteJwks"] = {"url": value}
    else:
        text = _jwks_text(node, value) if source == "jwksFile" else _public_key_jwks(node, value)
        data["localJwks"] = {"inlineString": text}
    data.key_lines = {key: node.data.key_lines.get(source) for key in data}
    return Node(data, node.where, node.field_path(source))


def _jwks_text(node: Node, value: str) -> str:
    if value.lstrip().startswith("{"):
        return value
    if not os.path.isfile(value):
        raise node.error("jwksFile", f"is neither a JWKS document nor a readable file: {value!r}")
    with open(value, encoding="utf-8") as handle:
        return handle.read()


def _public_key_jwks(node: Node, pem: str) -> str:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as e:
        raise node.error("publicKey", "is not a PEM public key") from e
    algorithm: t.Any
    if isinstance(key, rsa.RSAPublicKey):
        algorithm = jwt.algorithms.RSAAlgorithm
    elif isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = jwt.algorithms.ECAlgorithm
    elif isinstance(key, ed25519.Ed25519PublicKey):
        algorithm = jwt.algorithms.OKPAlgorithm
    else:
        raise node.error("publicKey", f"unsupported key type {type(key).__name__}")
    return json.dumps({"keys": [json.loads(algorithm.to_jwk(key))]})


def jwt_step(node: Node, namespace: str, ctx: AuthBuildContext,
             common: t.Callable[[Node, TokenSource, t.Any, str], OAuth2Step]) -> OAuth2Step:
    """``spec.plugin.jwt`` -> an oauth2 step; ``common`` reads the options shared with introspection."""
    validator, _ = token_validator("jwt", jwt_validator_node(node), namespace, ctx)
    token_key = node.str("tokenKey")
    source = TokenSource(query=token_key)
    return common(node, source, validator, "jwt")
