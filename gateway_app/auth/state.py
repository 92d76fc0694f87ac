"""What token validation produces and what flows between auth steps."""

from __future__ import annotations

import dataclasses
import typing as t

from ..errors import GatewayError
from ..errors import InvalidTokenError
from .claim_types import check_claim_types


@dataclasses.dataclass(frozen=True)
class TokenInfo:
    """A validated token's state: its claims and how long they may be trusted.

    ``kind`` is ``"jwt"`` or ``"introspection"``. ``expires_at`` is the token's ``exp`` and
    ``not_before`` its ``nbf`` (for a JWT, the later of ``nbf`` and ``iat``), epoch seconds,
    when known. Build one with :meth:`from_claims`, which checks the claims' types; check its
    times with :meth:`check_times`, the one home of the exp/nbf rule.

    Validators hand out the same TokenInfo for as long as they trust a cached validation, so
    it is shared between requests and threads: nobody changes ``claims``. ``memo`` holds what
    pure functions derived from it (:mod:`gateway_app.auth.remembered`); it lives and dies
    with the cached validation.
    """

    claims: t.Mapping[str, t.Any]
    kind: str
    expires_at: float | None = None
    not_before: float | None = None
    memo: dict[t.Any, t.Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_claims(cls, claims: t.Mapping[str, t.Any], kind: str) -> TokenInfo:
        """A TokenInfo over ``claims`` (not copied), after checking their types (RFC 7519 §4.1).

        :raises InvalidTokenError: reason ``token_claims_invalid``.
        """
        check_claim_types(claims)
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        starts = [float(v) for v in (nbf, iat if kind == "jwt" else None) if v is not None]
        return cls(claims=claims, kind=kind, expires_at=float(exp) if exp is not None else None,
                   not_before=max(starts) if starts else None)

    @property
    def subject(self) -> str | None:
        """The ``sub`` claim when it is a string (RFC 7519 §4.1.2, RFC 7662 §2.2)."""
        sub = self.claims.get("sub")
        return sub if isinstance(sub, str) else None

    @property
    def scopes(self) -> list[str]:
        """The granted scopes (:func:`scopes_of`)."""
        return scopes_of(self.claims)

    def expired(self, now: float, leeway: float = 0.0) -> bool:
        """Whether ``exp`` has passed at ``now`` (epoch seconds), ``leeway`` seconds allowed (RFC 7519 §4.1.4)."""
        return self.expires_at is not None and now >= self.expires_at + leeway

    def check_times(self, now: float, leeway: float = 0.0) -> None:
        """Refuse a token outside its validity window: ``exp`` passed or ``nbf`` (``iat``) ahead.

        :param now: epoch seconds. :param leeway: seconds of clock skew allowed either way.
        :raises InvalidTokenError: reason ``token_expired`` or ``token_not_yet_valid``.
        """
        if self.expired(now, leeway):
            assert self.expires_at is not None
            raise InvalidTokenError(f"token expired {now - self.expires_at:.0f}s ago",
                                    reason="token_expired")
        if self.not_before is not None and now < self.not_before - leeway:
            raise InvalidTokenError(f"token not valid for another {self.not_before - now:.0f}s",
                                    reason="token_not_yet_valid")


def scopes_of(claims: t.Mapping[str, t.Any]) -> list[str]:
    """Scopes from a space-delimited ``scope`` claim or an ``scp`` array (Okta, Azure)."""
    scope = claims.get("scope")
    if isinstance(scope, str):
        return [s for s in scope.split(" ") if s]
    if isinstance(scope, list):
        return [s for s in scope if isinstance(s, str) and s]
    scp = claims.get("scp")
    if isinstance(scp, list):
        return [s for s in scp if isinstance(s, str) and s]
    if isinstance(scp, str):
        return [s for s in scp.split(" ") if s]
    return []


@dataclasses.dataclass
class AuthState:
    """Threads through the auth steps of one request (oathkeeper's AuthenticationSession).

    ``metadata`` holds Gloo's dynamic metadata: ``{"config_0": {"sub": "my-client"}}``.
    ``jwt_access_token`` / ``introspection`` hold verified claims for policies
    (``input.state.jwtAccessToken``). ``upstream_headers`` is the one dict of headers the
    gateway sets upstream (lower-cased name -> value): auth steps write it, then the route's
    transforms and the credential removal (:func:`gateway_app.gateway.prepare_upstream`).
    ``token_location`` is where the validated token was found; ``remove_from_request`` lists
    every ``(kind, name)`` location a ``removeFromRequest`` token source read for it, which
    is what the forward stage removes (as Oathkeeper's session tells its mutators).
    ``outcome`` (``none`` | ``allowed`` | ``denied`` | ``error``) and ``reason`` go to the
    access record and the metrics.
    """

    subject: str | None = None
    claims: dict[str, t.Any] = dataclasses.field(default_factory=dict)
    metadata: dict[str, dict[str, t.Any]] = dataclasses.field(default_factory=dict)
    jwt_access_token: dict[str, t.Any] | None = None
    introspection: dict[str, t.Any] | None = None
    token_location: tuple[str, str] | None = None   # ("header"|"query"|"cookie", name)
    remove_from_request: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    upstream_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    outcome: str = "none"                            # none | allowed | denied | error
    reason: str = ""

    @property
    def authenticated(self) -> bool:
        """Whether a token was validated for this request (:meth:`accept_token`)."""
        return self.jwt_access_token is not None or self.introspection is not None

    def refuse(self, error: GatewayError) -> None:
        """Record a refusal: ``error`` for a 5xx (the gateway or the IdP failed), else ``denied``."""
        self.outcome, self.reason = ("error" if error.status_code >= 500 else "denied"), error.reason

    def accept_token(self, info: TokenInfo) -> None:
        """Record a validated token's claims: for policies, for later steps and as the subject."""
        claims = dict(info.claims)
        self.claims.update(claims)
        if info.kind == "jwt":
            self.jwt_access_token = claims
        else:
            self.introspection = claims
        self.subject = info.subject or self.subject
