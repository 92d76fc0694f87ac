"""Gloo Edge ``VirtualService`` -> :class:`~gateway_app.routing.VirtualHost` of routes.

What only a VirtualService says lives here: its matcher shape (``prefix``/``exact``/``regex``,
``methods``, ``headers``, ``caseSensitive``; the parsing of each part is :mod:`.matchers`'),
``routeAction.single`` (an ``upstream`` reference or a ``url``), and the route and virtual
host ``options``: ``extauth`` (``configRef`` / ``disable``), ``stagedTransformations``
(header templates), ``prefixRewrite``, ``timeout``, ``hostRewrite`` and
``maxRequestBodyBytes``. Route options override the virtual host's (Gloo's rule).
"""

from __future__ import annotations

import dataclasses
import typing as t

from ..auth.pipeline import AuthPipeline
from ..errors import ConfigError
from ..routing import Matcher
from ..routing import PathRewrite
from ..routing import Route
from ..routing import VirtualHost
from ..transform import HeaderTemplate
from ..transform import HeaderTransforms
from ..transform import compile_template
from .fields import Node
from .loader import RawResource
from .managed_headers import managed_headers
from .matchers import CATCH_ALL
from .matchers import parse_header_matchers
from .matchers import parse_methods
from .matchers import parse_path
from .refs import resolve_ref
from .upstreams import target_from_url

Targets = tuple[t.Any, ...]


@dataclasses.dataclass(frozen=True)
class _RouteOptions:
    auth: AuthPipeline | None
    auth_disabled: bool
    transforms: HeaderTransforms | None
    timeout: float | None
    max_body_bytes: int | None
    host_rewrite: str | None


def _resolve_upstream(node: Node, field: str, namespace: str, upstreams: dict[tuple[str, str], Targets]) -> Targets:
    ref = node.child(field, required=True)
    assert ref is not None
    return resolve_ref(ref, namespace, upstreams, "Upstream")


def _resolve_auth(node: Node, namespace: str, pipelines: dict[tuple[str, str], AuthPipeline]) -> AuthPipeline:
    return resolve_ref(node, namespace, pipelines, "AuthConfig")


def _route_options(node: Node | None, namespace: str,
                        pipelines: dict[tuple[str, str], AuthPipeline]) -> _RouteOptions:
    if node is None:
        return _RouteOptions(None, False, None, None, None, None)
    auth, disabled = None, False
    extauth = node.child("extauth")
    if extauth is not None:
        disabled = extauth.bool("disable")
        ref = extauth.child("configRef")
        if ref is not None:
            auth = _resolve_auth(ref, namespace, pipelines)
        extauth.raw("customAuth")
        extauth.done()
    transforms = _transformations(node.child("stagedTransformations"))
    timeout = node.duration("timeout", minimum=0.001)
    max_body = node.int("maxRequestBodyBytes", minimum=0)
    host_rewrite = node.str("hostRewrite")
    return _RouteOptions(auth, disabled, transforms, timeout, max_body, host_rewrite)


def _apply_target_options(targets: Targets, options: _RouteOptions) -> Targets:
    changes: dict[str, t.Any] = {}
    if options.timeout is not None:
        changes["read_timeout"] = options.timeout
    if options.host_rewrite is not None:
        changes["host_rewrite"] = options.host_rewrite
    return tuple(dataclasses.replace(target, **changes) for target in targets) if changes else targets


def _route_auth(route_options: _RouteOptions, host_options: _RouteOptions) -> AuthPipeline | None:
    if route_options.auth_disabled:
        return None
    return route_options.auth or host_options.auth


def _merge_transforms(host: HeaderTransforms | None, route: HeaderTransforms | None) -> HeaderTransforms | None:
    if host is None:
        return route
    return host.merged_with(route)


def compile_virtual_service(resource: RawResource, upstreams: dict[tuple[str, str], Targets],
                            pipelines: dict[tuple[str, str], AuthPipeline]) -> VirtualHost:
    """One VirtualService as a virtual host: ``virtualHost.domains`` (none: ``*``) and its routes
    in order (Gloo matches the first route that matches). ``upstreams`` and ``pipelines`` are the
    accepted Upstreams and AuthConfigs by ``(namespace, name)``.

    :raises ConfigError: naming the field, for anything invalid or a reference that does not resolve.
    """
    spec = Node(resource.body.get("spec"), resource.where)
    vhost_node = spec.child("virtualHost", required=True)
    assert vhost_node is not None
    spec.raw("displayName")
    spec.done()
    domains = tuple(vhost_node.str_list("domains")) or ("*",)
    host_options = _route_options(vhost_node.child("options"), resource.namespace, pipelines)
    routes = []
    for index, route_node in enumerate(vhost_node.children("routes", required=True)):
        routes.append(_compile_route(route_node, index, resource, upstreams, pipelines, host_options))
    vhost_node.done()
    return VirtualHost(name=f"VirtualService {resource.namespace}/{resource.name}", domains=domains,
                       routes=tuple(routes))


def _compile_route(node: Node, index: int, resource: RawResource, upstreams: dict[tuple[str, str], Targets],
                   pipelines: dict[tuple[str, str], AuthPipeline], host_options: _RouteOptions) -> Route:
    name = node.str("name", default=f"{resource.namespace}/{resource.name}/routes[{index}]")
    matchers = tuple(_matcher(m) for m in node.children("matchers")) or (CATCH_ALL,)
    action = node.child("routeAction", required=True)
    assert action is not None
    targets = _route_action(action, resource, upstreams)
    options_node = node.child("options")
    options = _route_options(options_node, resource.namespace, pipelines)
    rewrite = None
    if options_node is not None:
        matchers, rewrite = _prefix_rewrite(options_node, "prefixRewrite", matchers)
    if options_node is not None:
        options_node.done()
    labels = node.str_map("labels")
    node.done()
    auth = _route_auth(options, host_options)
    transforms = _merge_transforms(host_options.transforms, options.transforms)
    return Route(name=name, source=f"{resource.where}: routes[{index}]", matchers=matchers,
                 targets=_apply_target_options(targets, options), auth=auth, transforms=transforms,
                 path_rewrite=rewrite, labels=labels, max_body_bytes=options.max_body_bytes or host_options.max_body_bytes,
                 managed_headers=managed_headers(auth, transforms))


def _route_action(action: Node, resource: RawResource, upstreams: dict[tuple[str, str], Targets]) -> Targets:
    single = action.child("single", required=True)
    action.done()
    assert single is not None
    kind = single.one_of("upstream", "url", "kube")
    if kind == "kube":
        single.raw("kube")
        raise single.error("kube", "kube service refs need a Kubernetes cluster; declare an Upstream with "
                                   "static.hosts and use 'upstream: {name, namespace}', or 'url: http://host:port'")
    if kind == "url":
        targets = target_from_url(single, "url", f"{resource.namespace}/{resource.name}")
    else:
        targets = _resolve_upstream(single, "upstream", resource.namespace, upstreams)
    single.done()
    return targets


def _matcher(node: Node) -> Matcher:
    case_sensitive = node.raw("caseSensitive", True)
    if not isinstance(case_sensitive, bool):
        raise node.error("caseSensitive", "expected true or false")
    path = parse_path(node, "prefix", "exact", "regex", case_sensitive)
    methods = parse_methods(node, "methods")
    headers = parse_header_matchers(node)
    node.done()
    return Matcher(paths=(path,) if path else (), methods=methods, headers=headers)


def _transformations(node: Node | None) -> HeaderTransforms | None:
    """``stagedTransformations.{early,regular}.requestTransforms[].requestTransformation.transformationTemplate``."""
    if node is None:
        return None
    templates: list[HeaderTemplate] = []
    for stage_name in ("early", "regular"):
        stage = node.child(stage_name)
        if stage is None:
            continue
        for transform in stage.children("requestTransforms"):
            templates.extend(_request_transform(transform))
        stage.raw("responseTransforms")
        stage.done()
    node.raw("inheritTransformation")
    node.done()
    return HeaderTransforms(tuple(templates))


def _request_transform(node: Node) -> list[HeaderTemplate]:
    node.raw("matcher")
    if node.has("matcher"):
        raise node.error("matcher", "per-transform matchers are not supported; use a separate route")
    transformation = node.child("requestTransformation", required=True)
    node.done()
    assert transformation is not None
    template = transformation.child("transformationTemplate", required=True)
    transformation.done()
    assert template is not None
    results = []
    headers = template.child("headers")
    if headers is not None:
        for header_name in list(headers.data):
            value = headers.child(str(header_name), required=True)
            assert value is not None
            results.append(_template(value, str(header_name), append=False))
        headers.done()
    for item in template.children("headersToAppend"):
        key = item.str("key", required=True)
        value = item.child("value", required=True)
        assert value is not None
        item.done()
        results.append(_template(value, key, append=True))
    template.raw("passthrough")
    template.raw("parseBodyBehavior")
    template.done()
    return results


def _template(node: Node, header: str, append: bool) -> HeaderTemplate:
    text = node.str("text", required=True)
    node.done()
    try:
        parts = compile_template(text, where=node.where)
    except ConfigError as e:
        raise node.error("text", e.detail) from e
    return HeaderTemplate(name=header.lower(), parts=parts, append=append)


def _prefix_rewrite(node: Node, field: str,
                         matchers: tuple[Matcher, ...]) -> tuple[tuple[Matcher, ...], PathRewrite | None]:
    """The route's matchers and its rewrite (:meth:`PathRewrite.for_route`): whichever prefix
    (or exact path) matched is replaced; regex-only routes rewrite from '/'."""
    replacement = node.str(field)
    if replacement is None:
        return matchers, None
    if not replacement.startswith("/"):
        raise node.error(field, "must start with '/'")
    return PathRewrite.for_route(matchers, replacement)
