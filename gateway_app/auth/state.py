"""What token validation produces and what flows between auth steps."""

from __future__ import annotations

import dataclasses
import time
import typing as t


@dataclasses.dataclass(frozen=True)
class TokenInfo:
    """A validated token's state: its claims and how long they may be trusted.

    ``kind`` is ``"jwt"`` or ``"introspection"``. ``expires_at`` is the token's ``exp``
    (epoch seconds) when known.

    Validators hand out the same TokenInfo for as long as they trust a cached validation, so
    it is shared between requests and threads: nobody changes ``claims``. ``memo`` holds what
    pure functions derived from it (:mod:`gateway_app.auth.remembered`); it lives and dies
    with the cached validation.
    """

    claims: t.Mapping[str, t.Any]
    kind: str
    expires_at: float | None = None
    memo: dict[t.Any, t.Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def subject(self) -> str | None:
        sub = self.claims.get("sub")
        return sub if isinstance(sub, str) else None

    @property
    def scopes(self) -> list[str]:
        return scopes_of(self.claims)

    def expired(self, now: float | None = None, leeway: float = 0.0) -> bool:
        if self.expires_at is None:
            return False
        return (now if now is not None else time.time()) >= self.expires_at + leeway


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
    (``input.state.jwtAccessToken``). ``upstream_headers`` are headers steps ask to add.
    """

    subject: str | None = None
    claims: dict[str, t.Any] = dataclasses.field(default_factory=dict)
    metadata: dict[str, dict[str, t.Any]] = dataclasses.field(default_factory=dict)
    jwt_access_token: dict[str, t.Any] | None = None
    introspection: dict[str, t.Any] | None = None
    token_source: str | None = None
    token_location: tuple[str, str] | None = None   # ("header"|"query"|"cookie", name)
    upstream_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    outcome: str = "none"                            # none | allowed | denied | error
    reason: str = ""
    api_product_id: str | None = None

    def accept_token(self, info: TokenInfo) -> None:
        claims = dict(info.claims)
        self.claims.update(claims)
        if info.kind == "jwt":
            self.jwt_access_token = claims
        else:
            self.introspection = claims
        self.subject = info.subject or self.subject
