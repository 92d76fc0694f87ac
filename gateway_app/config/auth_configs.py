"""``AuthConfig`` specs (and ExtAuthPolicy ``glooAuth``) -> :class:`AuthPipeline`.

Validators are taken from a :class:`~gateway_app.auth.registry.ValidatorRegistry` keyed by
their settings, so one JWKS is fetched once for every route that uses it and token caches
survive a reload when the IdP settings did not change.
"""

from __future__ import annotations

import dataclasses
import typing as t

from ..auth.claims_check import RegoClaimsCheck
from ..auth.expressions import compile_boolean_expr
from ..auth.introspection import IntrospectionValidator
from ..auth.introspection import parse_introspection_settings
from ..auth.jwt_validation import JwtValidator
from ..auth.jwt_validation import parse_jwt_settings
from ..auth.pipeline import AuthPipeline
from ..auth.registry import ValidatorRegistry
from ..auth.remembered import rememberable
from ..auth.stale import StaleIfErrorValidator
from ..auth.stale import parse_stale_if_error
from ..auth.steps import AuthStep
from ..auth.steps import ClaimHeader
from ..auth.steps import OAuth2Step
from ..auth.steps import OpaStep
from ..auth.tokens import parse_token_source
from ..errors import ConfigError
from ..policy.engine import PolicyEngine
from ..policy.loader import RegoModule
from .fields import Node
from .secrets import SecretStore


@dataclasses.dataclass
class AuthBuildContext:
    """What parsing an AuthConfig needs from the rest of the config being built: its secrets,
    the ``opaAuth.modules`` resolver, the validator registry, and what this build used
    (validator keys, to retire the others; policy engines by module names, to share them)."""

    secrets: SecretStore
    modules: t.Callable[[Node, str], list[RegoModule]]      # resolves opaAuth.modules in a namespace
    validators: ValidatorRegistry
    used_validator_keys: set[t.Any] = dataclasses.field(default_factory=set)
    engines: dict[tuple[str, ...], PolicyEngine] = dataclasses.field(default_factory=dict)


def parse_auth_pipeline(spec: Node, name: str, namespace: str, ctx: AuthBuildContext) -> AuthPipeline:
    """Read ``configs``, ``booleanExpr`` and the failure options of one AuthConfig spec
    (Gloo Enterprise ``AuthConfig``; ``authenticationFailureStatus`` is 403 unless set to 401,
    ``statusOnError`` 503, as the seeds expect).

    :raises ConfigError: naming the field, for any config, expression or option that is invalid.
    """
    entries = spec.children("configs", required=True)
    if not entries:
        raise spec.error("configs", "needs at least one config")
    steps: list[AuthStep] = [_parse_entry(entry, index, namespace, ctx) for index, entry in enumerate(entries)]
    names = [step.name for step in steps]
    if len(set(names)) != len(names):
        raise spec.error("configs", "config names must be unique")
    expr_text = spec.str("booleanExpr")
    expr = _boolean_expr(spec, expr_text, names) if expr_text else None
    status = spec.int("authenticationFailureStatus", default=403)
    if status not in (401, 403):
        raise spec.error("authenticationFailureStatus", "must be 401 or 403")
    realm = spec.str("realm")
    failure_mode_allow = spec.bool("failureModeAllow")
    status_on_error = spec.int("statusOnError", default=503, minimum=400, maximum=599)
    spec.raw("server")           # ExtAuthPolicy's ext-auth server reference: in-process here
    spec.done()
    return AuthPipeline(name=name, steps=tuple(steps), boolean_expr=expr, boolean_expr_text=expr_text,
                        authentication_failure_status=status, realm=realm,
                        failure_mode_allow=failure_mode_allow, status_on_error=status_on_error,
                        remember_outcomes=rememberable(steps, expr is not None))


def _boolean_expr(spec: Node, text: str, names: list[str]) -> t.Any:
    try:
        return compile_boolean_expr(text, names, spec.where)
    except ConfigError as e:
        raise spec.error("booleanExpr", e.detail) from e


def _parse_entry(entry: Node, index: int, namespace: str, ctx: AuthBuildContext) -> AuthStep:
    name = entry.str("name", default=f"config_{index}")
    kind = entry.one_of("oauth2", "opaAuth")
    entry.raw("name")
    node = entry.child(kind)
    assert node is not None
    entry.done()
    if kind == "oauth2":
        return _parse_oauth2(node, index, name, namespace, ctx)
    return _parse_opa(node, index, name, namespace, ctx)


def _parse_oauth2(node: Node, index: int, name: str, namespace: str, ctx: AuthBuildContext) -> OAuth2Step:
    validation = node.child("accessTokenValidation", required=True)
    assert validation is not None
    node.done()
    kind = validation.one_of("introspection", "introspectionUrl", "jwt")
    cache_timeout = validation.raw("cacheTimeout")
    if kind == "introspectionUrl":
        data = {"introspectionUrl": validation.str("introspectionUrl", required=True), "disableClientSecret": True}
        validator_node = Node(data, validation.where, validation.field_path("introspectionUrl"))
    else:
        validator_node = validation.child(kind)
    assert validator_node is not None
    if cache_timeout is not None:
        if kind == "jwt":
            raise validation.error("cacheTimeout", "applies to introspection only")
        validator_node.data = dict(validator_node.data)
        validator_node.data.setdefault("cacheTimeout", cache_timeout)
    validator, user_id_claim = token_validator(kind, validator_node, namespace, ctx)
    validator = _with_stale_if_error(validation, kind, validator, ctx)
    token_source = parse_token_source(validation.child("tokenSource"))
    step = OAuth2Step(
        index=index, name=name, token_source=token_source, validator=validator,
        validator_kind="jwt" if kind == "jwt" else "introspection",
        required_scopes=_required_scopes(validation),
        metadata_from_claims=validation.str_map("dynamicMetadataFromClaims"),
        claim_headers=_claim_headers(validation),
        username_claim=validation.str("usernameClaim") or validation.str("userIdAttributeName") or user_id_claim,
        claims_check=None, claims_expression=None,
    )
    claims = validation.str("claims")
    validation.done()
    if claims:
        step = dataclasses.replace(step, claims_check=_claims_check(validation, claims), claims_expression=claims)
    return step


def _claims_check(validation: Node, expression: str) -> RegoClaimsCheck:
    try:
        return RegoClaimsCheck(expression, validation.where)
    except ConfigError as e:
        raise validation.error("claims", e.detail) from e


def token_validator(kind: str, node: Node, namespace: str, ctx: AuthBuildContext) -> tuple[t.Any, str | None]:
    """The shared validator for a ``jwt`` or ``introspection`` mapping, and its user id claim.

    :raises ConfigError: from the settings' parser.
    """
    if kind == "jwt":
        settings = parse_jwt_settings(node)
        key = ("jwt", settings)
        ctx.used_validator_keys.add(key)
        shared = ctx.validators.shared_jwt_cache()
        return ctx.validators.get(key, lambda: JwtValidator(settings, shared=shared,
                                                             **ctx.validators.clock_options("wall_clock"),
                                                             **ctx.validators.clock_options("clock"))), None
    settings = parse_introspection_settings(node, ctx.secrets, namespace)
    key = ("introspection", settings.config_digest)
    ctx.used_validator_keys.add(key)
    cache = ctx.validators.token_cache(settings.fingerprint, settings.max_cache_entries)
    validator = ctx.validators.get(key, lambda: IntrospectionValidator(
        settings, cache=cache, **ctx.validators.clock_options("clock")))
    return validator, getattr(settings, "user_id_attribute_name", None)


def _with_stale_if_error(validation: Node, kind: str, validator: t.Any, ctx: AuthBuildContext) -> t.Any:
    """``staleIfError``: wrap an introspection validator; shared and kept across reloads like it."""
    window = parse_stale_if_error(validation, "jwt" if kind == "jwt" else "introspection")
    if window is None:
        return validator
    key = ("stale-if-error", id(validator), window)
    ctx.used_validator_keys.add(key)
    return ctx.validators.get(key, lambda: StaleIfErrorValidator(validator, window,
                                                                 **ctx.validators.clock_options("clock")))


def _required_scopes(node: Node) -> tuple[str, ...]:
    raw = node.raw("requiredScopes")
    if raw is None:
        return ()
    if isinstance(raw, dict):
        scopes = Node(raw, node.where, node.field_path("requiredScopes"))
        values = scopes.str_list("scope")
        scopes.done()
        return tuple(values)
    if isinstance(raw, str):
        return tuple(s for s in raw.split(" ") if s)
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        return tuple(raw)
    raise node.error("requiredScopes", "expected a list of scopes or {scope: [...]}")


def _claim_headers(node: Node) -> tuple[ClaimHeader, ...]:
    headers = []
    for item in node.children("claimsToHeaders"):
        claim = item.str("claim", required=True)
        header = item.str("header", required=True)
        append = item.bool("append")
        item.done()
        headers.append(ClaimHeader(claim=claim, header=header.lower(), append=append))
    for header, claim in node.str_map("forwardHeaders").items():
        headers.append(ClaimHeader(claim=claim, header=header.lower()))
    return tuple(headers)


def _parse_opa(node: Node, index: int, name: str, namespace: str, ctx: AuthBuildContext) -> OpaStep:
    return _opa_step(node, index, name, namespace, ctx, allow_shadow=True)


def _opa_step(node: Node, index: int, name: str, namespace: str, ctx: AuthBuildContext,
              allow_shadow: bool) -> OpaStep:
    modules = ctx.modules(node, namespace)
    query = node.str("query", required=True)
    shadow_node = node.child("shadow") if allow_shadow else None
    node.raw("options")
    node.done()
    key = tuple(m.name for m in modules)
    engine = ctx.engines.get(key)
    if engine is None:
        engine = ctx.engines[key] = PolicyEngine(modules)
    try:
        engine.prepare(query)
    except Exception as e:  # ConfigError from the engine, re-raised with the field's location
        raise node.error("query", str(e)) from e
    shadow = _opa_step(shadow_node, index, f"{name}.shadow", namespace, ctx, allow_shadow=False) if shadow_node else None
    return OpaStep(index=index, name=name, engine=engine, query=query, shadow=shadow)
