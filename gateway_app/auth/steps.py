"""The auth steps of one AuthConfig: ``oauth2`` (token validation) and ``opaAuth`` (policy).

Each step is built once from config and has one method, ``run(ctx)``: it returns when the
step passes and raises a :mod:`gateway_app.errors` error when it does not.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import typing as t

from ..errors import AccessDeniedError
from ..errors import InsufficientScopeError
from ..errors import MissingTokenError
from ..errors import PolicyError
from ..header_values import header_text
from ..incoming import IncomingRequest
from ..policy.decision import Decision
from ..policy.input_document import RouteMeta
from ..policy.input_document import build_input
from .state import AuthState
from .state import TokenInfo
from .state import scopes_of
from .tokens import TokenSource

if t.TYPE_CHECKING:
    from ..policy.engine import PolicyEngine

log = logging.getLogger("gateway_app.decision")


class TokenValidator(t.Protocol):
    """What an oauth2 step validates tokens with: RFC 7662 introspection, JWT/JWKS, or a
    stale-if-error wrapper of either."""

    def validate(self, token: str) -> TokenInfo:
        """The validated token's state.

        :raises InvalidTokenError: the token is not valid (malformed, inactive, expired...).
        :raises IdentityProviderError: validity cannot be decided (the IdP or JWKS failed).
        """


class RouteView(RouteMeta, t.Protocol):
    """What the auth steps read of the matched route (:class:`gateway_app.routing.Route` is one):
    the policy input's metadata, and ``policy_key``, which keys remembered outcomes."""

    @property
    def policy_key(self) -> str:
        """The route metadata a policy can see, as one string."""


@dataclasses.dataclass
class AuthContext:
    """Everything a step sees for one request."""

    request: IncomingRequest
    route: RouteView
    state: AuthState
    policy_input: dict[str, t.Any] | None = None     # set when a policy was evaluated
    policy_duration: float = 0.0
    query: str | None = None
    remember: bool = True                            # may a remembered outcome answer?


@dataclasses.dataclass(frozen=True)
class ClaimHeader:
    """Copy a claim into an upstream header (Gloo ``claimsToHeaders``, Traefik ``forwardHeaders``)."""

    claim: str
    header: str            # lower-cased
    append: bool = False


def claim_value(claims: t.Mapping[str, t.Any], name: str) -> t.Any:
    """A claim by exact name, else by a dotted path into nested objects; None when absent."""
    if name in claims:
        return claims[name]
    value: t.Any = claims
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class ClaimsCheck(t.Protocol):
    """A ``claims`` condition (:mod:`gateway_app.auth.claims_check`, Traefik's
    :mod:`gateway_app.traefik.claims`)."""

    def allows(self, claims: t.Mapping[str, t.Any]) -> bool:
        """Whether ``claims`` satisfy the condition. :raises PolicyError: it could not be evaluated."""


@dataclasses.dataclass(frozen=True, eq=False)
class OAuth2Step:
    """Extract the token, validate it, check scopes and claims, publish claims as metadata."""

    index: int
    name: str
    token_source: TokenSource
    validator: TokenValidator
    validator_kind: str                                   # "introspection" | "jwt"
    required_scopes: tuple[str, ...] = ()
    metadata_from_claims: t.Mapping[str, str] = dataclasses.field(default_factory=dict)
    claim_headers: tuple[ClaimHeader, ...] = ()
    username_claim: str | None = None
    claims_check: ClaimsCheck | None = None
    claims_expression: str | None = None
    # extra IdP headers rendered from the request (Traefik Hub's templated clientConfig.headers)
    request_headers: t.Callable[[IncomingRequest], t.Mapping[str, str]] | None = None

    @property
    def metadata_key(self) -> str:
        """Where this step's dynamic metadata lives: ``config_<index>`` (Gloo's key)."""
        return f"config_{self.index}"

    def run(self, ctx: AuthContext) -> None:
        """:meth:`authenticate`, then :meth:`admit`.

        :raises GatewayError: the token is missing, invalid, lacks a scope or fails ``claims``.
        """
        self.admit(self.authenticate(ctx), ctx)

    def authenticate(self, ctx: AuthContext) -> TokenInfo:
        """Find the token and validate it. Where it was found goes into the state, and with
        ``removeFromRequest`` every location the source read, for the forward stage to remove.

        :raises MissingTokenError: no token in any location the source reads.
        :raises GatewayError: as :meth:`TokenSource.extract` and the validator raise.
        """
        found = self.token_source.extract(ctx.request)
        if found is None:
            raise MissingTokenError()
        if self.request_headers is None:
            info = self.validator.validate(found.value)
        else:
            info = self.validator.validate(found.value, self.request_headers(ctx.request))
        ctx.state.token_location = found.location
        if self.token_source.remove_from_request:
            ctx.state.remove_from_request.extend(self.token_source.locations(ctx.request))
        return info

    def admit(self, info: TokenInfo, ctx: AuthContext) -> None:
        """Check the validated token's scopes and claims, then publish its claims (metadata,
        subject, claim headers).

        :raises InsufficientScopeError: a required scope is missing.
        :raises AccessDeniedError: ``claims_mismatch``. :raises PolicyError: the claims check failed.
        """
        ctx.state.accept_token(info)
        self._check_scopes(info)
        self._check_claims(info)
        self._publish(info, ctx.state)

    def _check_scopes(self, info: TokenInfo) -> None:
        if not self.required_scopes:
            return
        granted = set(scopes_of(info.claims))
        missing = [scope for scope in self.required_scopes if scope not in granted]
        if missing:
            raise InsufficientScopeError(f"missing required scope(s): {' '.join(missing)}")

    def _check_claims(self, info: TokenInfo) -> None:
        """:raises AccessDeniedError: ``claims_mismatch``; :raises PolicyError: the check failed (logged)."""
        if self.claims_check is None:
            return
        try:
            allowed = self.claims_check.allows(info.claims)
        except PolicyError as e:
            log.warning("claims check %s of config %s failed: %s", self.claims_expression, self.name, e)
            raise
        if not allowed:
            log.info("token claims do not satisfy %s (config %s)", self.claims_expression, self.name)
            raise AccessDeniedError("the token's claims do not satisfy this route's condition",
                                    reason="claims_mismatch")

    def _publish(self, info: TokenInfo, state: AuthState) -> None:
        claims = info.claims
        if self.metadata_from_claims:
            metadata = state.metadata.setdefault(self.metadata_key, {})
            for key, claim in self.metadata_from_claims.items():
                value = claim_value(claims, claim)
                if value is not None:
                    metadata[key] = value
        if self.username_claim:
            user = claim_value(claims, self.username_claim)
            if isinstance(user, str) and user:
                state.subject = user
        for mapping in self.claim_headers:
            value = header_text(claim_value(claims, mapping.claim))
            if value is None:
                continue
            current = state.upstream_headers.get(mapping.header)
            state.upstream_headers[mapping.header] = f"{current},{value}" if mapping.append and current else value

    def managed_headers(self) -> frozenset[str]:
        """The headers this step sets upstream (lower-cased): client copies are removed."""
        return frozenset(h.header for h in self.claim_headers)


@dataclasses.dataclass(frozen=True, eq=False)
class OpaStep:
    """Evaluate a Rego query over the OPA-style input document (Gloo ``opaAuth``)."""

    index: int
    name: str
    engine: "PolicyEngine"
    query: str
    shadow: "OpaStep | None" = None

    def run(self, ctx: AuthContext) -> None:
        """Decide; on allow, add the decision's headers and dynamic metadata to the state.

        :raises AccessDeniedError: the policy denied (with its status, headers and body).
        :raises PolicyError: the result was undefined, invalid, or the evaluation failed (logged).
        """
        ctx.query = self.query
        decision = self.decide(ctx)
        if self.shadow is not None:
            self._compare_with_shadow(ctx, decision)
        error = decision.to_error()
        if error is not None:
            if isinstance(error, PolicyError):
                log.warning("policy %s denied route %s: %s %s", self.query, ctx.route.name, decision.reason,
                            decision.detail)
            raise error
        ctx.state.upstream_headers.update(decision.headers)
        if decision.dynamic_metadata:
            ctx.state.metadata.setdefault(f"config_{self.index}", {}).update(decision.dynamic_metadata)

    def decide(self, ctx: AuthContext) -> Decision:
        """The policy's :class:`Decision` over the request's input document (built once per
        request); an evaluation error is a deny (fail closed), never raised."""
        if ctx.policy_input is None:
            ctx.policy_input = build_input(ctx.request, ctx.route, ctx.state)
        started = time.perf_counter()
        try:
            value = self.engine.evaluate(self.query, ctx.policy_input)
        except PolicyError as e:
            return Decision.from_error(e)
        finally:
            ctx.policy_duration += time.perf_counter() - started
        return Decision.from_result(value)

    def _compare_with_shadow(self, ctx: AuthContext, enforced: Decision) -> None:
        assert self.shadow is not None
        shadow = self.shadow.decide(ctx)
        if shadow.allowed != enforced.allowed:
            log.warning(json.dumps({
                "event": "shadow_policy_disagreement", "route": ctx.route.name,
                "request_id": ctx.request.request_id, "enforced_query": self.query,
                "enforced_allowed": enforced.allowed, "shadow_query": self.shadow.query,
                "shadow_allowed": shadow.allowed, "shadow_reason": shadow.reason,
                "sub": ctx.state.subject,
            }))

    def managed_headers(self) -> frozenset[str]:
        """None: a policy's headers are its decision's, not known in advance."""
        return frozenset()


AuthStep = t.Union[OAuth2Step, OpaStep]
