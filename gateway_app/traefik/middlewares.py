"""Traefik ``Middleware`` resources translated into the gateway's auth model.

``spec.plugin.oAuthIntrospection`` (Traefik Hub's OAuth 2.0 Token Introspection middleware)
becomes one :class:`OAuth2Step` built by the same parsers as an ``AuthConfig``'s
``oauth2.accessTokenValidation.introspection``: the same token sources, introspection client,
token cache, claim headers and forwarding. Only names change:

- ``tokenSource.{header, headerAuthScheme, query, cookie}`` -> ``tokenSource`` (same names);
- ``clientConfig.url`` -> ``introspection.introspectionUrl``;
- ``clientConfig.headers`` -> ``introspection.headers``; ``urn:k8s:secret:NAME:KEY`` values are
  read from a Secret; Go-template values (``{{ .Request.Host }}``, :mod:`.request_templates`)
  are rendered per request and are part of the token cache key;
- ``clientConfig.tokenTypeHint`` / ``timeoutSeconds`` / ``maxRetries`` -> ``tokenTypeHint`` /
  ``timeout`` / ``retries``;
- ``clientConfig.tls.{ca, cert, key, insecureSkipVerify}`` -> ``tls.{caBundle, clientCertificate,
  clientKey, insecureSkipVerify}``: a file path, PEM text or ``urn:k8s:secret:NAME:KEY``
  (the last two written to a private file, :mod:`.pem_files`);
- ``claims`` -> a :class:`TraefikClaimsCheck` (Traefik's claims language, no Rego);
- ``forwardHeaders`` (header -> claim) -> claim headers;
- ``forwardAuthorization`` (default false) -> ``tokenSource.removeFromRequest`` = not it;
- ``usernameClaim`` -> ``usernameClaim`` (the subject of the access record).

A missing or invalid token is answered 401, as Traefik Hub does; a ``claims`` expression that
does not hold is 403.
"""

from __future__ import annotations

import dataclasses
import re
import typing as t

from ..auth.pipeline import AuthPipeline
from ..auth.remembered import rememberable
from ..auth.steps import AuthStep
from ..auth.steps import ClaimHeader
from ..auth.steps import OAuth2Step
from ..auth.tokens import TokenSource
from ..auth.tokens import parse_token_source
from ..config.auth_configs import AuthBuildContext
from ..config.auth_configs import token_validator
from ..config.fields import Node
from ..config.loader import LineMap
from ..config.loader import RawResource
from ..describe import did_you_mean
from ..errors import ConfigError
from ..transform import HeaderTemplate
from . import jwt_plugin
from . import opa_plugin
from .claims import TraefikClaimsCheck
from .pem_files import pem_file
from .request_templates import RequestHeaders
from .request_templates import is_template
from .rewrites import PATH_KINDS
from .rewrites import PathStep
from .rewrites import parse_headers

API_VERSIONS = ("traefik.io/v1alpha1", "traefik.containo.us/v1alpha1")
TRAEFIK_GROUPS = ("traefik.io", "traefik.containo.us")
README_SECTION = "README.md, section 'Coming from Traefik Hub'"
SUPPORTED_PLUGINS = ("oAuthIntrospection", "jwt", "opa")
SUPPORTED_KINDS = (*(f"plugin.{p}" for p in SUPPORTED_PLUGINS), "headers", *PATH_KINDS)
TRAEFIK_STATUS_ON_AUTHENTICATION_FAILURE = 401

# Traefik Hub's names -> the introspection settings' names (and back, for error messages)
_CLIENT_CONFIG = {"url": "introspectionUrl", "headers": "headers", "tokenTypeHint": "tokenTypeHint",
                  "timeoutSeconds": "timeout", "maxRetries": "retries", "tls": "tls"}
_TLS = {"ca": "caBundle", "cert": "clientCertificate", "key": "clientKey", "insecureSkipVerify": "insecureSkipVerify"}
_SECRET_URN = re.compile(r"^urn:k8s:secret:([^:]+):([^:]+)$")


@dataclasses.dataclass(frozen=True)
class Middleware:
    """One compiled Middleware: what it adds to a route that lists it."""

    name: str                                   # "apps/oauth2-token-introspection"
    kind: str                                   # "plugin.oAuthIntrospection", "stripPrefix"
    steps: tuple[AuthStep, ...] = ()
    headers: tuple[HeaderTemplate, ...] = ()
    path_step: PathStep | None = None
    path_description: str = ""


def check_api_version(resource: RawResource) -> None:
    """:raises ConfigError: not one of Traefik's CRD API versions."""
    if resource.api_version not in API_VERSIONS:
        raise ConfigError(f"apiVersion must be {' or '.join(API_VERSIONS)}, got {resource.api_version!r}",
                          where=resource.where, line=resource.line)


def parse_middleware(resource: RawResource, ctx: AuthBuildContext) -> Middleware:
    """One ``Middleware``; its kind is the one key of ``spec``.

    :raises ConfigError: wrong apiVersion, unsupported kind, or a bad option of a supported one.
    """
    check_api_version(resource)
    spec = Node(resource.body.get("spec"), resource.where)
    kinds = [str(k) for k in spec.data]
    if len(kinds) != 1:
        raise spec.error(None, f"needs exactly one middleware kind, found {len(kinds)} ({', '.join(kinds)})")
    name, kind = f"{resource.namespace}/{resource.name}", kinds[0]
    if kind == "headers":
        return Middleware(name=name, kind=kind, headers=parse_headers(_child(spec, kind)))
    if kind in PATH_KINDS:
        step, description = PATH_KINDS[kind](_child(spec, kind))
        return Middleware(name=name, kind=kind, path_step=step, path_description=description)
    if kind != "plugin":
        raise spec.error(kind, f"Middleware kind {kind!r} is not supported{did_you_mean(kind, SUPPORTED_KINDS)} "
                               f"(supported: {', '.join(SUPPORTED_KINDS)}); see {README_SECTION}")
    plugin = spec.child("plugin")
    assert plugin is not None
    plugins = [str(k) for k in plugin.data]
    if len(plugins) != 1 or plugins[0] not in SUPPORTED_PLUGINS:
        found = plugins[0] if len(plugins) == 1 else ", ".join(plugins) or "none"
        raise plugin.error(plugins[0] if len(plugins) == 1 else None,
                           f"Middleware plugin {found!r} is not supported{did_you_mean(found, SUPPORTED_PLUGINS)} "
                           f"(supported: {', '.join(SUPPORTED_KINDS)}); see {README_SECTION}")
    node = plugin.child(plugins[0], required=True)
    assert node is not None
    step: AuthStep
    if plugins[0] == "jwt":
        refuse_unknown(node, jwt_plugin.FIELDS)
        step = jwt_plugin.jwt_step(node, resource.namespace, ctx, oauth2_step)
    elif plugins[0] == "opa":
        refuse_unknown(node, opa_plugin.FIELDS)
        step = opa_plugin.opa_step(node, name, ctx)
    else:
        step = introspection_step(node, resource.namespace, ctx)
    return Middleware(name=name, kind=f"plugin.{plugins[0]}", steps=(step,))


def _child(spec: Node, kind: str) -> Node:
    node = spec.child(kind, required=True)
    assert node is not None
    return node


def introspection_step(node: Node, namespace: str, ctx: AuthBuildContext) -> OAuth2Step:
    """``spec.plugin.oAuthIntrospection`` -> an oauth2 step with an introspection validator."""
    refuse_unknown(node, ("tokenSource", "clientConfig", *_STEP_FIELDS))
    token_source = parse_token_source(node.child("tokenSource"))
    client = node.child("clientConfig", required=True)
    assert client is not None
    settings_node = _introspection_node(client, namespace, ctx)
    templates = {name: value for name, value in settings_node.data.get("headers", {}).items() if is_template(value)}
    validator, _ = token_validator("introspection", settings_node, namespace, ctx)
    step = oauth2_step(node, token_source, validator, "introspection")
    if templates:
        step = dataclasses.replace(step, request_headers=RequestHeaders(templates, client.where).render)
    return step


_STEP_FIELDS = ("claims", "forwardHeaders", "forwardAuthorization", "usernameClaim")


def oauth2_step(node: Node, token_source: TokenSource, validator: t.Any, kind: str) -> OAuth2Step:
    """The options every Traefik Hub token middleware shares: ``claims``, ``forwardHeaders``,
    ``forwardAuthorization`` (default false: the credential is removed) and ``usernameClaim``."""
    forward_authorization = node.bool("forwardAuthorization")
    claims = node.str("claims")
    headers = tuple(ClaimHeader(claim=claim, header=header.lower())
                    for header, claim in node.str_map("forwardHeaders").items())
    username_claim = node.str("usernameClaim")
    node.done()
    return OAuth2Step(index=0, name=kind, validator=validator, validator_kind=kind, claim_headers=headers,
                      token_source=dataclasses.replace(token_source, remove_from_request=not forward_authorization),
                      username_claim=username_claim, claims_expression=claims,
                      claims_check=_claims(node, claims) if claims else None)


def _claims(node: Node, expression: str) -> TraefikClaimsCheck:
    try:
        return TraefikClaimsCheck(expression, node.where, node.field_path("claims"))
    except ConfigError as e:
        raise ConfigError(e.detail, where=node.where, line=node.data.key_lines.get("claims")) from e


def refuse_unknown(node: Node, known: t.Sequence[str]) -> None:
    """:raises ConfigError: a field not in ``known``, naming the nearest one and the README section."""
    for key in node.data:
        if key not in known:
            raise node.error(str(key), f"unknown field{did_you_mean(str(key), known)} "
                                       f"(known: {', '.join(known)}); see {README_SECTION}")


def _introspection_node(client: Node, namespace: str, ctx: AuthBuildContext) -> Node:
    """``clientConfig`` renamed into an ``introspection`` mapping, lines kept for errors."""
    refuse_unknown(client, tuple(_CLIENT_CONFIG))
    data = _renamed(client.data, _CLIENT_CONFIG)
    for field in _CLIENT_CONFIG:
        client.raw(field)
    if "headers" in data:
        headers = client.child("headers")
        assert headers is not None
        data["headers"] = _header_values(headers, namespace, ctx)
    if "tls" in data:
        tls = client.child("tls")
        assert tls is not None
        refuse_unknown(tls, tuple(_TLS))
        data["tls"] = _renamed(tls.data, _TLS)
        for field in ("ca", "cert", "key"):
            value = tls.data.get(field)
            if isinstance(value, str):
                data["tls"][_TLS[field]] = _pem_path(tls, field, value, namespace, ctx)
    return _TraefikNamedNode(data, client.where, client.path)


def _pem_path(node: Node, field: str, value: str, namespace: str, ctx: AuthBuildContext) -> str:
    """``tls.ca``/``cert``/``key``: a file path as is; PEM text or a Secret reference as a private file."""
    urn = _SECRET_URN.match(value.strip())
    if urn:
        ref = Node({"name": urn.group(1), "key": urn.group(2)}, node.where, node.field_path(field))
        value = ctx.secrets.resolve(ref, namespace).reveal()
    if "-----BEGIN" not in value:
        if urn:
            raise node.error(field, f"Secret {urn.group(1)} key {urn.group(2)} does not hold PEM text")
        return value
    return pem_file(value)


def _renamed(data: t.Mapping[t.Any, t.Any], names: t.Mapping[str, str]) -> LineMap:
    result = LineMap()
    result.line = getattr(data, "line", 0)
    result.key_lines = {}
    lines = getattr(data, "key_lines", {})
    for key, value in data.items():
        new = names.get(str(key), str(key))
        result[new] = value
        result.key_lines[new] = lines.get(str(key))
    return result


def _header_values(node: Node, namespace: str, ctx: AuthBuildContext) -> dict[str, str]:
    """Header values as written, or the value of a ``urn:k8s:secret:NAME:KEY`` reference."""
    result = {}
    for header, value in ((str(k), v) for k, v in node.data.items()):
        if not isinstance(value, str):
            raise node.error(header, "expected a string")
        if is_template(value):
            try:
                RequestHeaders({header: value}, node.where)
            except ConfigError as e:
                raise node.error(header, e.detail) from e
            result[header] = value          # rendered per request; the text keys the validator
            continue
        urn = _SECRET_URN.match(value.strip())
        if urn:
            ref = Node({"name": urn.group(1), "key": urn.group(2)}, node.where, node.field_path(header))
            value = ctx.secrets.resolve(ref, namespace).reveal()
        result[header] = value
    return result


class _TraefikNamedNode(Node):
    """A translated node whose errors name Traefik's fields (``clientConfig.url``, ``tls.ca``)."""

    _BACK = {**{v: k for k, v in _CLIENT_CONFIG.items()}, **{v: k for k, v in _TLS.items()}}

    def error(self, field: str | None, message: str) -> ConfigError:
        error = super().error(field, message)
        detail = error.detail
        for gloo, traefik in self._BACK.items():
            detail = re.sub(rf"\b{gloo}\b", traefik, detail)
        return ConfigError(detail, where=error.where, line=error.line)

    def child(self, field: str, *, required: bool = False) -> Node | None:
        found = super().child(field, required=required)
        return None if found is None else _TraefikNamedNode(found.data, found.where, found.path)


def pipeline_for(middlewares: t.Sequence[Middleware]) -> AuthPipeline | None:
    """The auth steps of a route's middlewares, in order, as one pipeline (401 on a bad token)."""
    with_auth = [m for m in middlewares if m.steps]
    if not with_auth:
        return None
    steps = tuple(dataclasses.replace(step, index=index)
                  for index, step in enumerate(s for m in with_auth for s in m.steps))
    traefik_input = any(isinstance(step, opa_plugin.TraefikOpaStep) for step in steps)
    return AuthPipeline(name="+".join(m.name for m in with_auth), steps=steps,
                        authentication_failure_status=TRAEFIK_STATUS_ON_AUTHENTICATION_FAILURE,
                        remember_outcomes=not traefik_input and rememberable(steps, False))
