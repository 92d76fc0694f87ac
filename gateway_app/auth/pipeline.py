"""An AuthConfig compiled into an ordered pipeline of steps, or a ``booleanExpr`` over them.

Steps run in order and the first failing step decides the answer. With ``booleanExpr``
each named step runs at most once, lazily, and the state of earlier steps is visible to
later ones. How failures become statuses is set per AuthConfig:

- ``authenticationFailureStatus``: 403 (Gloo's behaviour, default) or 401 (RFC 6750);
- ``failureModeAllow``: when the IdP is unreachable, let the request through (dangerous);
- ``statusOnError``: the status when the IdP is unreachable (default 503).

A pipeline whose allowed outcome depends only on the token and the route
(``remember_outcomes``, see :mod:`gateway_app.auth.remembered`) reuses that outcome for as
long as the token's validation is cached.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import typing as t

from ..errors import AccessDeniedError
from ..errors import AuthenticationError
from ..errors import GatewayError
from ..errors import IdentityProviderError
from ..observability import DEFAULT_CREDENTIAL_LOCATIONS
from ..observability import CredentialLocations
from . import remembered
from .expressions import Evaluate
from .steps import AuthContext
from .steps import AuthStep
from .steps import OAuth2Step

log = logging.getLogger("gateway_app.auth")


@dataclasses.dataclass(frozen=True, eq=False)
class AuthPipeline:
    name: str                                  # "gloo-system/oidc-hydra"
    steps: tuple[AuthStep, ...]
    boolean_expr: Evaluate | None = None
    boolean_expr_text: str | None = None
    authentication_failure_status: int = 403
    realm: str | None = None
    failure_mode_allow: bool = False
    status_on_error: int = 503
    remember_outcomes: bool = False
    serial: int = dataclasses.field(default_factory=lambda: next(remembered.pipeline_serials))

    def run(self, ctx: AuthContext) -> None:
        """Pass, or raise the error that decides the answer, with this config's status.

        :raises AuthenticationError: with ``authenticationFailureStatus`` and ``realm``.
        :raises IdentityProviderError: with ``statusOnError`` (unless ``failureModeAllow``).
        :raises AccessDeniedError: a scope, claims, policy or ``booleanExpr`` denial.
        """
        try:
            if self.boolean_expr is not None:
                self._run_expression(ctx)
            elif self.remember_outcomes and ctx.remember:
                self._run_remembering(ctx)
            else:
                for step in self.steps:
                    step.run(ctx)
        except AuthenticationError as e:
            raise e.with_status(self.authentication_failure_status, realm=self.realm) from None
        except IdentityProviderError as e:
            if self.failure_mode_allow:
                log.warning("IdP unavailable, failureModeAllow lets the request through: %s", e)
                ctx.state.reason = "failure_mode_allow"
                return
            raise e.with_status(self.status_on_error) from None

    def _run_remembering(self, ctx: AuthContext) -> None:
        """Validate the token; answer from its remembered outcome, or run the rest and remember it."""
        first = self.steps[0]
        assert isinstance(first, OAuth2Step)
        info = first.authenticate(ctx)
        key = (self.serial, ctx.route.policy_key)
        outcome = info.memo.get(key)
        if outcome is not None:
            outcome.apply(ctx)
            return
        first.admit(info, ctx)
        for step in self.steps[1:]:
            step.run(ctx)
        remembered.remember(info, key, remembered.Outcome.capture(ctx))

    @functools.cached_property
    def steps_by_name(self) -> dict[str, AuthStep]:
        return {step.name: step for step in self.steps}

    @functools.cached_property
    def credential_locations(self) -> CredentialLocations:
        """Every place this config's token sources read, plus the defaults: what log redaction hides."""
        sources = self.token_sources
        return DEFAULT_CREDENTIAL_LOCATIONS.including(
            headers=[s.header for s in sources if s.header], query=[s.query for s in sources if s.query],
            cookies=[s.cookie for s in sources if s.cookie])

    @functools.cached_property
    def token_sources(self) -> tuple[t.Any, ...]:
        """The token sources of the oauth2 steps (for ``removeFromRequest``)."""
        return tuple(step.token_source for step in self.steps if hasattr(step, "token_source"))

    def _run_expression(self, ctx: AuthContext) -> None:
        by_name = self.steps_by_name
        results: dict[str, bool] = {}
        failures: list[GatewayError] = []

        def run(name: str) -> bool:
            if name not in results:
                try:
                    by_name[name].run(ctx)
                    results[name] = True
                except (AuthenticationError, AccessDeniedError) as e:
                    failures.append(e)
                    results[name] = False
            return results[name]

        assert self.boolean_expr is not None
        if not self.boolean_expr(run):
            if failures:
                raise failures[-1]
            raise AccessDeniedError(f"booleanExpr {self.boolean_expr_text!r} is false", reason="auth_expr_false")

    def managed_headers(self) -> frozenset[str]:
        names: set[str] = set()
        for step in self.steps:
            names |= step.managed_headers()
        return frozenset(names)

    @property
    def summary(self) -> str:
        kinds = []
        for step in self.steps:
            kinds.append(getattr(step, "validator_kind", None) or "opa")
        text = " -> ".join(kinds)
        return f"{self.name} [{text}]" + (f" expr={self.boolean_expr_text}" if self.boolean_expr_text else "")
