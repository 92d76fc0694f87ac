"""JWT access tokens verified against a JWKS (``oauth2.accessTokenValidation.jwt``).

:func:`parse_jwt_settings` reads the config once; :class:`JwtValidator` checks the header
itself (size, shape, ``alg``, ``typ``, ``kid``) before any cryptography, picks the key,
and lets PyJWT verify the signature and the time, issuer and audience claims. PyJWT's
exceptions are translated here, and only here, into :class:`InvalidTokenError` with a
stable ``reason``. Scopes, claim checks and header mapping are the caller's job.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
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

if t.TYPE_CHECKING:
    import requests

MAX_TOKEN_LENGTH = 16 * 1024
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
    """

    def __init__(self, settings: JwtSettings, *, session: requests.Session | None = None,
                 min_fetch_interval: float = DEFAULT_MIN_FETCH_INTERVAL,
                 clock: t.Callable[[], float] = time.monotonic, shared: CacheBackend | None = None,
                 spawn: Spawn = start_daemon_thread) -> None:
        self.settings = settings
        self._shared = shared
        self._shared_key = KeyHasher("shared-verified-jwt/v1", acceptance_fingerprint(settings))
        self.keys = build_key_source(settings.jwks, timeout=settings.timeout, session=session,
                                     min_fetch_interval=min_fetch_interval, clock=clock, spawn=spawn)
        self._allowed = frozenset(settings.algorithms)
        self._audience = list(settings.audiences) or None
        self._options: dict[str, t.Any] = {
            "require": ["exp"],
            "verify_aud": bool(settings.audiences),
            "enforce_minimum_key_length": True,
        }
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
            self._check_times(info)
            return info
        info = self._shared_info(token, key_set) if self._shared is not None else None
        if info is None:
            header = _read_header(token)
            alg = self._check_header(header)
            candidates = self._candidate_keys(header.get("kid"), alg)
            claims, verifier = self._decode_with_any(token, alg, candidates)
            info = TokenInfo(claims=claims, kind="jwt", expires_at=float(claims["exp"]))
            self._share(token, info, verifier, alg)
        self._remember(key, key_set, info)
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
        exp = _number(claims.get("exp"))
        if verifier is None or alg not in self._allowed or not verifier.fits(alg) or exp is None:
            return None
        info = TokenInfo(claims=claims, kind="jwt", expires_at=exp)
        self._check_times(info)
        return info

    def _share(self, token: str, info: TokenInfo, verifier: VerificationKey, alg: str) -> None:
        if self._shared is None or not verifier.thumbprint or info.expires_at is None:
            return
        entry = {"claims": dict(info.claims), "key": verifier.thumbprint, "alg": alg}
        self._shared.set(self._shared_key(token), entry, min(VERIFIED_CACHE_TTL, info.expires_at - time.time()))

    def _remember(self, key: str, key_set: KeySet, info: TokenInfo) -> None:
        if self.keys.current() is not key_set:       # the set changed while verifying: don't pin the old one
            return
        exp = _number(info.claims.get("exp"))
        if exp is not None:
            self._verified.set(key, (key_set, info), min(VERIFIED_CACHE_TTL, exp - time.time()))

    def _check_times(self, info: TokenInfo) -> None:
        """The time checks ``jwt.decode`` makes, for a remembered token."""
        now, leeway = time.time(), self.settings.clock_skew
        exp = info.expires_at
        if exp is not None and exp <= now - leeway:
            raise InvalidTokenError(f"token expired {now - exp:.0f}s ago", reason="token_expired")
        if "nbf" in info.claims:
            nbf = _number(info.claims["nbf"])
            if nbf is not None and nbf > now + leeway:
                raise InvalidTokenError("token not valid yet (nbf)", reason="token_not_yet_valid")

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

    def _decode_with_any(self, token: str, alg: str,
                         keys: tuple[VerificationKey, ...]) -> tuple[dict[str, t.Any], VerificationKey]:
        """The claims, decoded with the first key whose signature matches (one key when the token
        names a kid), and that key."""
        for key in keys[:-1]:
            try:
                return self._decode(token, alg, key), key
            except InvalidTokenError as e:
                if e.reason != "signature_invalid":
                    raise
        return self._decode(token, alg, keys[-1]), keys[-1]

    def _decode(self, token: str, alg: str, key: VerificationKey) -> dict[str, t.Any]:
        try:
            return jwt.decode(token, key.key, algorithms=[alg], options=self._options,
                              audience=self._audience, issuer=self.settings.issuer,
                              leeway=self.settings.clock_skew)
        except jwt.PyJWTError as e:
            raise self._translate(e, token) from e

    # -- PyJWT's exceptions -> ours (the one boundary) -------------------------
    def _translate(self, error: jwt.PyJWTError, token: str) -> InvalidTokenError:
        if isinstance(error, jwt.ExpiredSignatureError):
            exp = _number(_verified_claims(token).get("exp"))
            ago = f" {time.time() - exp:.0f}s ago" if exp is not None else ""
            return InvalidTokenError(f"token expired{ago}", reason="token_expired")
        if isinstance(error, jwt.ImmatureSignatureError):
            return InvalidTokenError(_not_yet_valid_message(error, token), reason="token_not_yet_valid")
        if isinstance(error, jwt.MissingRequiredClaimError):
            return self._missing_claim(error.claim)
        if isinstance(error, jwt.InvalidIssuerError):
            got = _verified_claims(token).get("iss")
            return InvalidTokenError(f"issuer mismatch: expected {self.settings.issuer!r}, got {_show(got)}",
                                     reason="issuer_mismatch")
        if isinstance(error, jwt.InvalidAudienceError):
            got = _verified_claims(token).get("aud")
            return InvalidTokenError(f"audience mismatch: expected one of {list(self.settings.audiences)}, "
                                     f"got {_show(got)}", reason="audience_mismatch")
        if isinstance(error, jwt.InvalidSignatureError):
            return InvalidTokenError("signature verification failed", reason="signature_invalid")
        if isinstance(error, (jwt.InvalidAlgorithmError, jwt.InvalidKeyError)):
            return InvalidTokenError(f"alg does not fit the key: {error}", reason="alg_not_allowed")
        return InvalidTokenError(f"malformed token: {error}", reason="token_malformed")

    def _missing_claim(self, claim: str) -> InvalidTokenError:
        if claim == "exp":
            return InvalidTokenError("the token has no exp claim", reason="exp_missing")
        if claim == "iss":
            return InvalidTokenError(f"the token has no iss claim; expected {self.settings.issuer!r}",
                                     reason="issuer_mismatch")
        if claim == "aud":
            return InvalidTokenError(f"the token has no aud claim; expected one of {list(self.settings.audiences)}",
                                     reason="audience_mismatch")
        return InvalidTokenError(f"the token has no {claim} claim", reason="token_malformed")


# -- cheap checks before cryptography ------------------------------------------

def _read_header(token: str) -> dict[str, t.Any]:
    """The decoded JOSE header, after checking the token's size and shape."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidTokenError(f"the token is {len(token)} bytes, more than the {MAX_TOKEN_LENGTH} allowed",
                                reason="token_malformed")
    segments = token.split(".")
    if len(segments) != 3:
        raise InvalidTokenError(f"a JWT has 3 dot-separated segments, this token has {len(segments)}",
                                reason="token_malformed")
    try:
        header = json.loads(_b64decode(segments[0]))
    except ValueError as e:
        raise InvalidTokenError("the token header is not base64url-encoded JSON", reason="token_malformed") from e
    if not isinstance(header, dict):
        raise InvalidTokenError("the token header is not a JSON object", reason="token_malformed")
    return header


def _b64decode(segment: str) -> bytes:
    """Strict base64url without padding. :raises ValueError: not base64url."""
    if not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error as e:
        raise ValueError("not base64url") from e


def _verified_claims(token: str) -> dict[str, t.Any]:
    """The payload, for error messages only: PyJWT checks the signature before any claim."""
    try:
        claims = json.loads(_b64decode(token.split(".")[1]))
    except ValueError:
        return {}
    return claims if isinstance(claims, dict) else {}


def _not_yet_valid_message(error: jwt.PyJWTError, token: str) -> str:
    claims = _verified_claims(token)
    claim = "iat" if "(iat)" in str(error) else "nbf"
    when = _number(claims.get(claim))
    if when is None:
        return f"token not yet valid ({claim})"
    ahead = f"{when - time.time():.0f}s"
    if claim == "iat":
        return f"token issued in the future (iat is {ahead} ahead)"
    return f"token not valid for another {ahead} (nbf)"


def _number(value: t.Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _show(value: t.Any, limit: int = 80) -> str:
    """A claim or header value for a message: repr, truncated (attacker-controlled)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
