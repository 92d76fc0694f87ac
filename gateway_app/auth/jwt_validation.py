"""JWT access tokens verified against a JWKS (``oauth2.accessTokenValidation.jwt``).

:func:`parse_jwt_settings` reads the config once; :class:`JwtValidator` checks the header
itself (size, shape, ``alg``, ``typ``, ``kid``) before any cryptography, picks the key, and
lets PyJWT's JWS layer verify the signature. The payload is then parsed with the gateway's
own limits (:mod:`gateway_app.json_input`), its claim types checked and its times checked by
:class:`~gateway_app.auth.state.TokenInfo` (the same rules as introspection), then issuer and
audience here. PyJWT's exceptions are translated here, and only here, into
:class:`InvalidTokenError` with a stable ``reason``. Scopes, claim checks and header mapping
are the caller's job. Refusal messages name no expected issuer or audience (they reach
clients); the log line says what was expected.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import re
import time
import typing as t

import jwt

from ..cache import CacheBackend
from ..cache import KeyHasher
from ..cache import TTLCache
from ..cache import hash_key
from ..config.fields import Node
from ..errors import InvalidTokenError
from ..json_input import loads
from .jwks import DEFAULT_MIN_FETCH_INTERVAL
from .jwks import SIGNATURE_ALGORITHMS
from .jwks import JwksSettings
from .jwks import KeySet
from .jwks import Spawn
from .jwks import VerificationKey
from .jwks import build_key_source
from .jwks import parse_jwks_settings
from .jwks import start_daemon_thread
from .state import TokenInfo
from .tokens import check_token_shape

if t.TYPE_CHECKING:
    import requests

log = logging.getLogger("gateway_app.auth.jwt")

ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


@dataclasses.dataclass(frozen=True)
class JwtSettings:
    """``accessTokenValidation.jwt``, validated. Durations are in seconds."""

    jwks: JwksSettings
    issuer: str | None = None
    audiences: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = SIGNATURE_ALGORITHMS
    clock_skew: float = 30.0
    require_kid: bool = False
    require_typ: bool = False
    timeout: float = 5.0


def parse_jwt_settings(node: Node) -> JwtSettings:
    """Read the ``jwt`` mapping.

    :raises ConfigError: unknown fields, bad values, unsupported algorithms or an unusable JWKS.
    """
    algorithms = _parse_algorithms(node)
    settings = JwtSettings(
        jwks=parse_jwks_settings(node, algorithms),
        issuer=_parse_issuer(node),
        audiences=tuple(node.str_list("audiences")),
        algorithms=algorithms,
        clock_skew=node.duration("clockSkew", default=30.0),
        require_kid=node.bool("requireKid"),
        require_typ=node.bool("requireTyp"),
        timeout=node.duration("timeout", default=5.0, minimum=0.001),
    )
    node.done()
    return settings


def _parse_issuer(node: Node) -> str | None:
    issuer = node.str("issuer")
    if issuer is not None and not issuer.strip():
        raise node.error("issuer", "must not be empty (leave it out to accept any issuer)")
    return issuer


def _parse_algorithms(node: Node) -> tuple[str, ...]:
    if not node.has("algorithms"):
        node.raw("algorithms")
        return SIGNATURE_ALGORITHMS
    algorithms = node.str_list("algorithms")
    if not algorithms:
        raise node.error("algorithms", "must list at least one algorithm")
    for index, alg in enumerate(algorithms):
        if alg.lower() == "none":
            raise node.error(f"algorithms[{index}]", "'none' (unsigned tokens) is never accepted")
        if alg.upper().startswith("HS"):
            raise node.error(f"algorithms[{index}]", f"{alg} is an HMAC algorithm; a JWKS of public "
                                                     f"keys cannot verify it")
        if alg not in SIGNATURE_ALGORITHMS:
            raise node.error(f"algorithms[{index}]", f"unsupported algorithm {alg!r}; supported: "
                                                     f"{', '.join(SIGNATURE_ALGORITHMS)}")
    return tuple(dict.fromkeys(algorithms))


def acceptance_fingerprint(settings: JwtSettings) -> str:
    """What decides whether this validator accepts a correctly signed token (keys aside)."""
    return hash_key(json.dumps([settings.issuer, sorted(settings.audiences), sorted(settings.algorithms),
                                settings.require_kid, settings.require_typ]))


VERIFIED_CACHE_ENTRIES = 10_000
VERIFIED_CACHE_TTL = 300.0


class JwtValidator:
    """Validates JWT access tokens: ``validate(token) -> TokenInfo``.

    Built once at start-up; safe to share between threads. A token whose signature and
    claims verified is remembered (by its SHA-256, with the key set that verified it) for
    up to 5 minutes, never past its ``exp``: a repeat gets the same :class:`TokenInfo`
    without a signature check, but its ``exp``/``nbf`` are checked again, and a new key set
    (rotation, a key removed) invalidates every remembered token.

    With a ``shared`` cache (Redis, ``GATEWAY_TOKEN_CACHE_URL``) verified claims are also
    stored for other workers and replicas, keyed by the token's hash and by what decides its
    acceptance here (issuer, audiences, algorithms, ``kid``/``typ`` requirements), with the
    thumbprint of the key that verified them. Another validator takes such an entry only while
    that key is in its own current key set and the ``alg`` is allowed; it re-checks the times.

    ``clock`` (monotonic) paces JWKS refreshes; ``wall_clock`` (epoch seconds) is what
    ``exp``/``nbf``/``iat`` are compared with.
    """

    def __init__(self, settings: JwtSettings, *, session: requests.Session | None = None,
                 min_fetch_interval: float = DEFAULT_MIN_FETCH_INTERVAL,
                 clock: t.Callable[[], float] = time.monotonic, shared: CacheBackend | None = None,
                 wall_clock: t.Callable[[], float] = time.time, spawn: Spawn = start_daemon_thread) -> None:
        self.settings = settings
        self._shared = shared
        self._shared_key = KeyHasher("shared-verified-jwt/v1", acceptance_fingerprint(settings))
        self.keys = build_key_source(settings.jwks, timeout=settings.timeout, session=session,
                                     min_fetch_interval=min_fetch_interval, clock=clock, spawn=spawn)
        self._allowed = frozenset(settings.algorithms)
        self._audiences = frozenset(settings.audiences)
        self._jws = jwt.PyJWS(options={"verify_signature": True, "enforce_minimum_key_length": True})
        self._now = wall_clock
        self._verified: TTLCache[tuple[KeySet, TokenInfo]] = TTLCache(VERIFIED_CACHE_ENTRIES)
        self._key = KeyHasher("verified-jwt/v1")

    def ready(self) -> bool:
        """Whether keys are available."""
        return self.keys.ready()

    def not_ready_reason(self) -> str | None:
        """What readiness waits for (``"not fetched: ..."``, no URLs), or None when ready."""
        return self.keys.not_ready_reason()

    def warm_up(self) -> None:
        """Fetch the keys now if they are remote; failures are logged and retried in the background."""
        self.keys.warm_up()

    def close(self) -> None:
        """Stop the key source's background work (a reload no longer uses these settings)."""
        self.keys.close()
    def state(self) -> dict[str, t.Any]:
        """For the admin view: the key source's state and the verified-token cache's size."""
        keys = getattr(self.keys, "state", None)
        return {**(keys() if callable(keys) else {}), "issuer": self.settings.issuer,
                "verified_cache_entries": len(self._verified)}

    def validate(self, token: str) -> TokenInfo:
        """Verify ``token`` and return its claims.

        :raises InvalidTokenError: the token is refused; ``reason`` says why.
        :raises IdentityProviderError: no keys could ever be fetched.
        """
        key = self._key(token)
        remembered = self._verified.get(key)
        key_set = self.keys.current()
        if remembered is not None and remembered[0] is key_set:
            info = remembered[1]
            info.check_times(self._now(), self.settings.clock_skew)
            return info
        info = self._shared_info(token, key_set) if self._shared is not None else None
        if info is None:
            check_token_shape(token)                 # a remembered token had this shape when verified
            header = _read_header(token)
            alg = self._check_header(header)
            candidates = self._candidate_keys(header.get("kid"), alg)
            payload, verifier = self._verify_with_any(token, alg, candidates)
            info = self._accept(_read_claims(payload))
            self._share(token, info, verifier, alg)
        self._remember(key, key_set, info)
        return info

    def _accept(self, claims: dict[str, t.Any]) -> TokenInfo:
        """Verified claims -> TokenInfo: types, ``exp`` required, times, issuer, audience (RFC 7519 §4.1)."""
        info = TokenInfo.from_claims(claims, "jwt")
        if info.expires_at is None:
            raise InvalidTokenError("the token has no exp claim", reason="exp_missing")
        info.check_times(self._now(), self.settings.clock_skew)
        issuer = self.settings.issuer
        if issuer is not None and claims.get("iss") != issuer:
            log.info("JWT refused: issuer %s, expected %r", _show(claims.get("iss")), issuer)
            raise InvalidTokenError("the token's issuer is not accepted here", reason="issuer_mismatch")
        if self._audiences:
            aud = claims.get("aud")
            audiences = {aud} if isinstance(aud, str) else set(aud or ())
            if not audiences & self._audiences:
                log.info("JWT refused: audience %s, expected one of %s", _show(aud), sorted(self._audiences))
                raise InvalidTokenError("the token's audience is not accepted here", reason="audience_mismatch")
        return info

    def _shared_info(self, token: str, key_set: KeySet) -> TokenInfo | None:
        """Claims another process verified, if the key that verified them is one of ours."""
        assert self._shared is not None
        entry = self._shared.get(self._shared_key(token))
        if not isinstance(entry, dict):
            return None
        claims, thumbprint, alg = entry.get("claims"), entry.get("key"), entry.get("alg")
        if not (isinstance(claims, dict) and isinstance(thumbprint, str) and isinstance(alg, str)):
            return None
        verifier = key_set.with_thumbprint(thumbprint)
        if verifier is None or alg not in self._allowed or not verifier.fits(alg):
            return None
        try:
            info = TokenInfo.from_claims(claims, "jwt")
        except InvalidTokenError:
            return None                                  # not an entry this gateway wrote: verify the token
        if info.expires_at is None:
            return None
        info.check_times(self._now(), self.settings.clock_skew)
        return info

    def _share(self, token: str, info: TokenInfo, verifier: VerificationKey, alg: str) -> None:
        if self._shared is None or not verifier.thumbprint or info.expires_at is None:
            return
        entry = {"claims": dict(info.claims), "key": verifier.thumbprint, "alg": alg}
        self._shared.set(self._shared_key(token), entry, min(VERIFIED_CACHE_TTL, info.expires_at - self._now()))

    def _remember(self, key: str, key_set: KeySet, info: TokenInfo) -> None:
        if self.keys.current() is not key_set:       # the set changed while verifying: don't pin the old one
            return
        if info.expires_at is not None:
            self._verified.set(key, (key_set, info), min(VERIFIED_CACHE_TTL, info.expires_at - self._now()))

    def _check_header(self, header: dict[str, t.Any]) -> str:
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise InvalidTokenError("the token header has no alg", reason="token_malformed")
        if alg.lower() == "none":
            raise InvalidTokenError("unsigned tokens (alg none) are never accepted", reason="alg_not_allowed")
        if alg.upper().startswith("HS"):
            raise InvalidTokenError(f"HMAC alg {_show(alg)} is never accepted with a JWKS of public keys",
                                    reason="alg_not_allowed")
        if alg not in self._allowed:
            raise InvalidTokenError(f"alg {_show(alg)} is not allowed; allowed: "
                                    f"{', '.join(self.settings.algorithms)}", reason="alg_not_allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidTokenError("the token header kid is not a string", reason="token_malformed")
        if self.settings.require_typ:
            typ = header.get("typ")
            if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
                raise InvalidTokenError(f"the token header typ must be at+jwt (RFC 9068), got {_show(typ)}",
                                        reason="typ_invalid")
        return alg

    def _candidate_keys(self, kid: str | None, alg: str) -> tuple[VerificationKey, ...]:
        key_set = self.keys.current()
        if kid is None:
            return self._keys_without_kid(key_set, alg)
        keys = key_set.with_kid(kid) or self.keys.refetch().with_kid(kid)
        if not keys:
            raise InvalidTokenError(f"no published key has kid {_show(kid)}", reason="kid_unknown")
        fitting = tuple(key for key in keys if key.fits(alg))
        if not fitting:
            raise InvalidTokenError(f"alg {alg} does not fit the key it names ({keys[0].describe()})",
                                    reason="alg_not_allowed")
        return fitting

    def _keys_without_kid(self, key_set: KeySet, alg: str) -> tuple[VerificationKey, ...]:
        if self.settings.require_kid:
            raise InvalidTokenError("the token has no kid and requireKid is set", reason="kid_unknown")
        fitting = key_set.fitting(alg)
        if not fitting:
            raise InvalidTokenError(f"the token has no kid and no published key fits alg {alg}",
                                    reason="kid_unknown")
        return fitting

    def _verify_with_any(self, token: str, alg: str,
                         keys: tuple[VerificationKey, ...]) -> tuple[bytes, VerificationKey]:
        """The payload, verified with the first key whose signature matches (one key when the token
        names a kid), and that key."""
        for key in keys[:-1]:
            try:
                return self._verify(token, alg, key), key
            except InvalidTokenError as e:
                if e.reason != "signature_invalid":
                    raise
        return self._verify(token, alg, keys[-1]), keys[-1]

    def _verify(self, token: str, alg: str, key: VerificationKey) -> bytes:
        """The JWS payload once its signature verified with ``key`` (RFC 7515 §5.2)."""
        try:
            return self._jws.decode_complete(token, key.key, algorithms=[alg])["payload"]
        except jwt.PyJWTError as e:
            raise _translate(e) from e


# -- PyJWT's exceptions -> ours (the one boundary) -------------------------

def _translate(error: jwt.PyJWTError) -> InvalidTokenError:
    if isinstance(error, jwt.InvalidSignatureError):
        return InvalidTokenError("signature verification failed", reason="signature_invalid")
    if isinstance(error, (jwt.InvalidAlgorithmError, jwt.InvalidKeyError)):
        return InvalidTokenError(f"alg does not fit the key: {error}", reason="alg_not_allowed")
    return InvalidTokenError(f"malformed token: {error}", reason="token_malformed")


# -- cheap checks before cryptography ------------------------------------------

def _read_header(token: str) -> dict[str, t.Any]:
    """The decoded JOSE header, after checking the token's shape.

    Each segment must be *canonical* base64url without padding (RFC 7515 §2, §7.1): one token
    has one spelling, so ``<jwt>==`` or a signature whose last character carries other unused
    bits is refused rather than accepted as the same token under another cache key.
    """
    segments = token.split(".")
    if len(segments) != 3:
        raise InvalidTokenError(f"a JWT has 3 dot-separated segments, this token has {len(segments)}",
                                reason="token_malformed")
    for name, segment in zip(("header", "payload", "signature"), segments):
        if not _canonical_b64(segment):
            raise InvalidTokenError(f"the token {name} is not canonical base64url without padding",
                                    reason="token_malformed")
    try:
        header = loads(_b64decode(segments[0]))
    except ValueError as e:
        raise InvalidTokenError(f"the token header is not base64url-encoded JSON: {e}",
                                reason="token_malformed") from None
    if not isinstance(header, dict):
        raise InvalidTokenError("the token header is not a JSON object", reason="token_malformed")
    return header


def _read_claims(payload: bytes) -> dict[str, t.Any]:
    """The verified payload as a claims object (RFC 7519 §7.2 step 10)."""
    try:
        claims = loads(payload)
    except ValueError as e:
        raise InvalidTokenError(f"the token payload is not JSON: {e}", reason="token_malformed") from None
    if not isinstance(claims, dict):
        raise InvalidTokenError("the token payload is not a JSON object", reason="token_malformed")
    return claims


def _b64decode(segment: str) -> bytes:
    """Strict base64url without padding. :raises ValueError: not base64url."""
    if not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error as e:
        raise ValueError("not base64url") from e


def _canonical_b64(segment: str) -> bool:
    """Whether ``segment`` is base64url without padding, spelled as its bytes encode back."""
    try:
        decoded = _b64decode(segment)
    except ValueError:
        return False
    return base64.urlsafe_b64encode(decoded).rstrip(b"=").decode() == segment


def _show(value: t.Any, limit: int = 80) -> str:
    """A claim or header value for a message: repr, truncated (attacker-controlled)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
