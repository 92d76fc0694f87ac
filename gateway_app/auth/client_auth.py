"""How the gateway authenticates itself to the IdP (RFC 6749 §2.3, RFC 7523, RFC 7521).

:func:`parse_client_authentication` reads the ``clientAuthentication`` block (plus Gloo's
``clientId``/``clientSecretRef``/``disableClientSecret``) into an immutable
:class:`ClientAuthSettings`; :func:`build_client_auth` turns that into a :class:`ClientAuth`
whose ``apply(data, headers)`` adds credentials to one outgoing form request.
"""

from __future__ import annotations

import base64
import dataclasses
import time
import typing as t
import urllib.parse
from secrets import token_urlsafe

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed448
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric import rsa

from ..cache import hash_key
from ..config.fields import Node
from ..config.secrets import SecretStore
from ..config.secrets import SecretValue
from ..errors import ConfigError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 60.0

METHODS = (
    "client_secret_basic",
    "client_secret_post",
    "client_secret_jwt",
    "private_key_jwt",
    "bearer",
    "header",
    "none",
)
SECRET_METHODS = ("client_secret_basic", "client_secret_post", "client_secret_jwt")

# Optional fields of ``clientAuthentication`` and the methods that use them.
_METHOD_FIELDS = {
    "privateKeyRef": ("private_key_jwt",),
    "signingAlgorithm": ("client_secret_jwt", "private_key_jwt"),
    "keyId": ("client_secret_jwt", "private_key_jwt"),
    "audience": ("client_secret_jwt", "private_key_jwt"),
    "tokenRef": ("bearer",),
    "headerName": ("header",),
    "valueRef": ("header",),
}

# HMAC algorithm -> minimum key length in bytes (RFC 7518 §3.2: at least the hash size).
_HMAC_ALGORITHMS = {"HS256": 32, "HS384": 48, "HS512": 64}

_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


@dataclasses.dataclass(frozen=True)
class ClientAuthSettings:
    """One client authentication method and the credentials it needs (secrets hidden in repr)."""

    method: str
    client_id: str | None = None
    client_secret: SecretValue | None = None
    private_key: SecretValue | None = None
    signing_algorithm: str | None = None
    key_id: str | None = None
    token: SecretValue | None = None
    header_name: str | None = None
    header_value: SecretValue | None = None
    audience: str = ""

    def fingerprint_parts(self) -> tuple[str, ...]:
        """Everything that changes who the IdP thinks is asking; secrets only as hashes."""
        return (
            self.method,
            self.client_id or "",
            _secret_hash(self.client_secret),
            _secret_hash(self.private_key),
            self.signing_algorithm or "",
            self.key_id or "",
            _secret_hash(self.token),
            (self.header_name or "").lower(),
            _secret_hash(self.header_value),
            self.audience,
        )


class ClientAuth(t.Protocol):
    """Adds client credentials to one form request."""

    method: str

    def apply(self, data: dict[str, str], headers: dict[str, str]) -> None: ...


# -- parsing -------------------------------------------------------------------------------


def parse_client_authentication(
    parent: Node,
    secrets: SecretStore,
    default_namespace: str,
    *,
    default_audience: str,
) -> ClientAuthSettings:
    """Read ``clientId``, ``clientSecretRef``, ``disableClientSecret`` and ``clientAuthentication``.

    ``parent`` is the mapping holding those fields; its other fields are left unread.
    :raises ConfigError: unknown method or field, missing or contradictory credentials.
    """
    client_id = parent.str("clientId")
    if client_id is not None and not client_id.strip():
        raise parent.error("clientId", "must not be empty")
    disable_secret = parent.bool("disableClientSecret")
    secret_ref = parent.child("clientSecretRef")
    client_secret = secrets.resolve(secret_ref, default_namespace) if secret_ref else None
    node = parent.child("clientAuthentication")
    method = _read_method(node, parent, client_id, client_secret, disable_secret)
    _check_secret_usage(parent, method, client_id, client_secret, disable_secret)
    settings = ClientAuthSettings(method=method, client_id=client_id, client_secret=client_secret)
    if node is not None:
        settings = _read_method_fields(node, settings, secrets, default_namespace, default_audience)
        node.done()
    elif method in ("client_secret_jwt", "private_key_jwt"):
        settings = dataclasses.replace(settings, audience=default_audience)
    return settings


def _read_method(node: Node | None, parent: Node, client_id: str | None,
                 client_secret: SecretValue | None, disable_secret: bool) -> str:
    method = node.str("method") if node is not None else None
    if method is not None:
        if method not in METHODS:
            assert node is not None
            raise node.error("method", f"must be one of {', '.join(METHODS)}, got {method!r}")
        return method
    if disable_secret:
        return "none"
    if client_secret is not None:
        return "client_secret_basic"
    if client_id is not None:
        raise parent.error("clientSecretRef", "is required with clientId unless disableClientSecret is "
                                              "true or clientAuthentication.method needs no secret")
    return "none"


def _check_secret_usage(parent: Node, method: str, client_id: str | None,
                        client_secret: SecretValue | None, disable_secret: bool) -> None:
    if method in SECRET_METHODS:
        if disable_secret:
            raise parent.error("disableClientSecret", f"contradicts clientAuthentication.method {method}")
        if client_id is None:
            raise parent.error("clientId", f"is required with client authentication method {method}")
        if client_secret is None:
            raise parent.error("clientSecretRef", f"is required with client authentication method {method}")
        return
    if client_secret is not None:
        why = "disableClientSecret is true" if disable_secret else f"client authentication method is {method}"
        raise parent.error("clientSecretRef", f"is not used: {why}")
    if method == "private_key_jwt" and client_id is None:
        raise parent.error("clientId", "is required with client authentication method private_key_jwt")


def _read_method_fields(node: Node, settings: ClientAuthSettings, secrets: SecretStore,
                        default_namespace: str, default_audience: str) -> ClientAuthSettings:
    method = settings.method
    for field, methods in _METHOD_FIELDS.items():
        if node.has(field) and method not in methods:
            raise node.error(field, f"is only used with method {' or '.join(methods)}")
    if method == "client_secret_jwt":
        return _read_client_secret_jwt(node, settings, default_audience)
    if method == "private_key_jwt":
        return _read_private_key_jwt(node, settings, secrets, default_namespace, default_audience)
    if method == "bearer":
        ref = node.child("tokenRef", required=True)
        assert ref is not None
        return dataclasses.replace(settings, token=secrets.resolve(ref, default_namespace))
    if method == "header":
        return _read_header(node, settings, secrets, default_namespace)
    return settings


def _read_client_secret_jwt(node: Node, settings: ClientAuthSettings,
                            default_audience: str) -> ClientAuthSettings:
    algorithm = node.str("signingAlgorithm", default="HS256")
    if algorithm not in _HMAC_ALGORITHMS:
        raise node.error("signingAlgorithm", f"client_secret_jwt needs one of {', '.join(_HMAC_ALGORITHMS)}")
    assert settings.client_secret is not None
    minimum = _HMAC_ALGORITHMS[algorithm]
    if len(settings.client_secret.reveal().encode("utf-8")) < minimum:
        raise node.error("signingAlgorithm", f"{algorithm} needs a client secret of at least {minimum} bytes "
                                             "(RFC 7518 §3.2)")
    return dataclasses.replace(
        settings,
        signing_algorithm=algorithm,
        key_id=_optional_str(node, "keyId"),
        audience=_optional_str(node, "audience") or default_audience,
    )


def _read_private_key_jwt(node: Node, settings: ClientAuthSettings, secrets: SecretStore,
                          default_namespace: str, default_audience: str) -> ClientAuthSettings:
    ref = node.child("privateKeyRef", required=True)
    assert ref is not None
    private_key = secrets.resolve(ref, default_namespace)
    algorithm = node.str("signingAlgorithm", default="RS256")
    problem = _key_problem(private_key, algorithm)
    if problem:
        field, message = problem
        raise node.error(field, message)
    return dataclasses.replace(
        settings,
        private_key=private_key,
        signing_algorithm=algorithm,
        key_id=_optional_str(node, "keyId"),
        audience=_optional_str(node, "audience") or default_audience,
    )


def _read_header(node: Node, settings: ClientAuthSettings, secrets: SecretStore,
                 default_namespace: str) -> ClientAuthSettings:
    name = node.str("headerName", required=True)
    if not _is_header_name(name):
        raise node.error("headerName", f"{name!r} is not a valid header name")
    ref = node.child("valueRef", required=True)
    assert ref is not None
    value = secrets.resolve(ref, default_namespace)
    if any(c in value.reveal() for c in "\r\n\0"):
        raise node.error("valueRef", "the secret value contains a line break")
    return dataclasses.replace(settings, header_name=name, header_value=value)


def _optional_str(node: Node, field: str) -> str | None:
    value = node.str(field)
    if value is not None and not value.strip():
        raise node.error(field, "must not be empty")
    return value


def _key_problem(private_key: SecretValue, algorithm: str) -> tuple[str, str] | None:
    """``(field, why)`` when ``private_key`` cannot sign with ``algorithm``, else None."""
    try:
        key = _load_private_key(private_key)
    except (ValueError, TypeError):
        return "privateKeyRef", "is not an unencrypted PEM private key"
    if algorithm in _RSA_ALGORITHMS:
        wanted, fits = "an RSA key", isinstance(key, rsa.RSAPrivateKey)
    elif algorithm in _EC_CURVES:
        wanted = f"an EC key on curve {_EC_CURVES[algorithm]}"
        fits = isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == _EC_CURVES[algorithm]
    elif algorithm == "EdDSA":
        wanted, fits = "an Ed25519 or Ed448 key", isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey))
    else:
        supported = ", ".join((*_RSA_ALGORITHMS, *_EC_CURVES, "EdDSA"))
        return "signingAlgorithm", f"private_key_jwt needs one of {supported}, got {algorithm!r}"
    return None if fits else ("signingAlgorithm", f"{algorithm} needs {wanted}")


def _load_private_key(private_key: SecretValue) -> t.Any:
    return serialization.load_pem_private_key(private_key.reveal().encode("utf-8"), password=None)


def _is_header_name(name: str) -> bool:
    allowed = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return bool(name) and all(c in allowed for c in name)


def _secret_hash(value: SecretValue | None) -> str:
    return hash_key("secret", value.reveal()) if value is not None else ""


# -- applying ------------------------------------------------------------------------------


class NoClientAuth:
    """Public client or Gloo's ``disableClientSecret``: no credentials at all."""

    method = "none"

    def apply(self, data: dict[str, str], headers: dict[str, str]) -> None:
        return None


class ClientSecretBasic:
    """``Authorization: Basic base64(urlencode(id):urlencode(secret))`` (RFC 6749 §2.3.1)."""

    method = "client_secret_basic"

    def __init__(self, client_id: str, client_secret: SecretValue) -> None:
        self._client_id = client_id
        self._client_secret = client_secret

    def apply(self, data: dict[str, str], headers: dict[str, str]) -> None:
        pair = f"{_form_encode(self._client_id)}:{_form_encode(self._client_secret.reveal())}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")


class ClientSecretPost:
    """``client_id`` and ``client_secret`` in the form body."""

    method = "client_secret_post"

    def __init__(self, client_id: str, client_secret: SecretValue) -> None:
        self._client_id = client_id
        self._client_secret = client_secret

    def apply(self, data: dict[str, str], headers: dict[str, str]) -> None:
        data["client_id"] = self._client_id
        data["client_secret"] = self._client_secret.reveal()


class ClientAssertion:
    """A fresh signed JWT per request (RFC 7523 §2.2): ``client_secret_jwt`` or ``private_key_jwt``."""

    def __init__(self, method: str, client_id: str, key: t.Any, algorithm: str, audience: str,
                 key_id: str | None = None, clock: t.Callable[[], float] = time.time) -> None:
        self.method = method
        self._client_id = client_id
        self._key = key
        self._algorithm = algorithm
        self._audience = audience
        self._key_id = key_id
        self._clock = clock

    def apply(self, data: dict[str, str], headers: dict[str, str]) -> None:
        data["client_assertion_type"] = ASSERTION_TYPE
        data["client_assertion"] = self.assertion()

    def assertion(self) -> str:
        issued_at = int(self._clock())
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": self._audience,
            "jti": token_urlsafe(24),
            "iat": issued_at,
            "exp": issued_at + int(ASSERTION_LIFETIME),
        }
        header = {"kid": self._key_id} if self._key_id else None
        return jwt.encode(claims, self._key, algorithm=self._algorithm, headers=header)


class BearerAuth:
    """``Authorization: Bearer <token>`` with a static token from a Secret."""

    method = "bearer"

    def __init__(self, token: SecretValue) -> None:
        self._token = token

    def apply(self, data: dict[str, str], headers: dict[str, str]) -> None:
        headers["Authorization"] = f"Bearer {self._token.reveal()}"


class HeaderAuth:
    """``<headerName>: <value>``, e.g. an API key header."""

    method = "header"

    def __init__(self, name: str, value: SecretValue) -> None:
        self._name = name
        self._value = value

    def apply(self, data: dict[str, str], headers: dict[str, str]) -> None:
        headers[self._name] = self._value.reveal()


def build_client_auth(settings: ClientAuthSettings, *,
                      clock: t.Callable[[], float] = time.time) -> ClientAuth:
    """The :class:`ClientAuth` for ``settings`` (validated by :func:`parse_client_authentication`)."""
    method = settings.method
    if method in ("client_secret_basic", "client_secret_post"):
        cls = ClientSecretBasic if method == "client_secret_basic" else ClientSecretPost
        return cls(_need(settings.client_id, "client_id"), _need(settings.client_secret, "client_secret"))
    if method in ("client_secret_jwt", "private_key_jwt"):
        return _build_assertion(settings, clock)
    if method == "bearer":
        return BearerAuth(_need(settings.token, "token"))
    if method == "header":
        return HeaderAuth(_need(settings.header_name, "header_name"), _need(settings.header_value, "header_value"))
    if method == "none":
        return NoClientAuth()
    raise ConfigError(f"unknown client authentication method {method!r}")


def _build_assertion(settings: ClientAuthSettings, clock: t.Callable[[], float]) -> ClientAssertion:
    if settings.method == "client_secret_jwt":
        key: t.Any = _need(settings.client_secret, "client_secret").reveal()
        algorithm = settings.signing_algorithm or "HS256"
    else:
        key = _load_private_key(_need(settings.private_key, "private_key"))
        algorithm = settings.signing_algorithm or "RS256"
    return ClientAssertion(
        settings.method,
        _need(settings.client_id, "client_id"),
        key,
        algorithm,
        settings.audience,
        key_id=settings.key_id,
        clock=clock,
    )


T = t.TypeVar("T")


def _need(value: T | None, name: str) -> T:
    if value is None:
        raise ConfigError(f"client authentication needs {name}")
    return value


def _form_encode(value: str) -> str:
    """``application/x-www-form-urlencoded`` encoding of one value (RFC 6749 Appendix B)."""
    return urllib.parse.quote_plus(value, safe="")
