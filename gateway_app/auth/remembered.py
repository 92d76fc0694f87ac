"""Remembered auth outcomes: the answer an AuthConfig gave a token, reused while its validation stands.

An AuthConfig made of one ``oauth2`` step followed by ``opaAuth`` steps gives the same answer
for the same validated token on routes with the same metadata when every policy (and the
oauth2 ``claims`` check) is deterministic and reads only the token's state and the route:
``input.state``, ``metadata_context``, ``context_extensions`` and ``version``. Nothing else
in the request can change its answer. :func:`rememberable` decides that once per config.

For such a pipeline the outcome of an *allowed* request (the auth state its steps built and
the query that decided) is kept in ``TokenInfo.memo``. Validators hand out the same
:class:`~gateway_app.auth.state.TokenInfo` for as long as their cached validation stands, so a
remembered outcome ends exactly when that does: at ``exp``, when the introspection cache entry
times out (a revocation becomes visible), or when a new JWKS arrives. Per request the token is
still extracted and validated (times checked every time); only the scope and claims checks,
the policy input and the evaluation are skipped. Denials and errors are never remembered.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing as t

from ..policy.input_shape import ALL
from .state import TokenInfo
from .steps import AuthContext
from .steps import AuthStep
from .steps import OAuth2Step
from .steps import OpaStep

MAX_OUTCOMES_PER_TOKEN = 32      # (pipeline, route metadata) pairs one token has been seen on

# The input branches whose values depend on nothing but the token's validation and the route.
TOKEN_AND_ROUTE_INPUT: dict[str, t.Any] = {
    "state": ALL,
    "version": ALL,
    "check_request": {"attributes": {"metadata_context": ALL, "context_extensions": ALL}},
    "attributes": {"metadata_context": ALL, "context_extensions": ALL},
}

pipeline_serials = itertools.count(1)    # remembered outcomes are keyed by pipeline serial, never by id()


def rememberable(steps: t.Sequence[AuthStep], has_boolean_expr: bool) -> bool:
    """Whether the pipeline's allowed outcome is a function of the token's validation and the route."""
    if has_boolean_expr or not steps or not isinstance(steps[0], OAuth2Step):
        return False
    check = steps[0].claims_check
    if check is not None and not getattr(check, "deterministic", False) \
            and not _deterministic(getattr(check, "engine", None), getattr(check, "query", None)):
        return False
    for step in steps[1:]:
        if not isinstance(step, OpaStep) or step.shadow is not None:
            return False
        shape = step.engine.reads(step.query)
        if shape is None or not within(shape, TOKEN_AND_ROUTE_INPUT):
            return False
    return True


def _deterministic(engine: t.Any, query: str | None) -> bool:
    return engine is not None and query is not None and engine.reads(query) is not None


def within(shape: t.Any, allowed: t.Any) -> bool:
    """Whether an input shape reads only branches of ``allowed`` (both trees with :data:`ALL` leaves)."""
    if allowed is ALL:
        return True
    if shape is ALL:
        return False
    return all(key in allowed and within(sub, allowed[key]) for key, sub in shape.items())


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What an allowed run of a pipeline left in the request's auth state."""

    subject: str | None
    claims: dict[str, t.Any]
    metadata: dict[str, dict[str, t.Any]]
    jwt_access_token: dict[str, t.Any] | None
    introspection: dict[str, t.Any] | None
    upstream_headers: dict[str, str]
    reason: str
    query: str | None

    @classmethod
    def capture(cls, ctx: AuthContext) -> Outcome:
        """The allowed outcome of ``ctx``'s pipeline, as :meth:`apply` puts it back."""
        state = ctx.state
        return cls(state.subject, state.claims, state.metadata, state.jwt_access_token, state.introspection,
                   dict(state.upstream_headers), state.reason, ctx.query)

    def apply(self, ctx: AuthContext) -> None:
        """Put the outcome in this request's state; the containers later code may change are copies."""
        state = ctx.state
        state.subject = self.subject
        state.claims = self.claims
        state.metadata = dict(self.metadata)
        state.jwt_access_token = self.jwt_access_token
        state.introspection = self.introspection
        state.upstream_headers = dict(self.upstream_headers)
        state.reason = self.reason
        ctx.query = self.query


def remember(info: TokenInfo, key: t.Hashable, outcome: Outcome) -> None:
    """Keep ``outcome`` on the token's cached validation under ``key`` (pipeline serial, route
    metadata); past :data:`MAX_OUTCOMES_PER_TOKEN` the token's outcomes start over."""
    memo = info.memo
    if len(memo) >= MAX_OUTCOMES_PER_TOKEN:
        memo.clear()
    memo[key] = outcome
