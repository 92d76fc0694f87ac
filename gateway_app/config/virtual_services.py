"""Compile one ``VirtualService`` into a :class:`VirtualHost` of routes."""

from __future__ import annotations

import dataclasses
import typing as t

from ..auth.pipeline import AuthPipeline
from ..routing import Matcher
from ..routing import PathMatcher
from ..routing import Route
from ..routing import VirtualHost
from ..transform import HeaderTransforms
from .fields import Node
from .loader import RawResource
from .refs import resolve_ref
from .upstreams import target_from_url
from .matchers import parse_prefix_rewrite
from .matchers import parse_transformations
from .matchers import parse_vs_matcher

Targets = tuple[t.Any, ...]
CATCH_ALL = Matcher(paths=(PathMatcher("prefix", "/"),))


@dataclasses.dataclass(frozen=True)
class RouteOptions:
    auth: AuthPipeline | None
    auth_disabled: bool
    transforms: HeaderTransforms | None
    timeout: float | None
    max_body_bytes: int | None
    host_rewrite: str | None


def resolve_upstream(node: Node, field: str, namespace: str, upstreams: dict[tuple[str, str], Targets]) -> Targets:
    ref = node.child(field, required=True)
    assert ref is not None
    return resolve_ref(ref, namespace, upstreams, "Upstream")


def resolve_auth(node: Node, namespace: str, pipelines: dict[tuple[str, str], AuthPipeline]) -> AuthPipeline:
    return resolve_ref(node, namespace, pipelines, "AuthConfig")


def parse_route_options(node: Node | None, namespace: str,
                        pipelines: dict[tuple[str, str], AuthPipeline]) -> RouteOptions:
    if node is None:
        return RouteOptions(None, False, None, None, None, None)
    auth, disabled = None, False
    extauth = node.child("extauth")
    if extauth is not None:
        disabled = extauth.bool("disable")
        ref = extauth.child("configRef")
        if ref is not None:
            auth = resolve_auth(ref, namespace, pipelines)
        extauth.raw("customAuth")
        extauth.done()
    transforms = parse_transformations(node.child("stagedTransformations"))
    timeout = node.duration("timeout", minimum=0.001)
    max_body = node.int("maxRequestBodyBytes", minimum=0)
    host_rewrite = node.str("hostRewrite")
    return RouteOptions(auth, disabled, transforms, timeout, max_body, host_rewrite)


def apply_target_options(targets: Targets, options: RouteOptions) -> Targets:
    changes: dict[str, t.Any] = {}
    if options.timeout is not None:
        changes["read_timeout"] = options.timeout
    if options.host_rewrite is not None:
        changes["host_rewrite"] = options.host_rewrite
    return tuple(dataclasses.replace(target, **changes) for target in targets) if changes else targets


def route_auth(route_options: RouteOptions, host_options: RouteOptions) -> AuthPipeline | None:
    if route_options.auth_disabled:
        return None
    return route_options.auth or host_options.auth


def merge_transforms(host: HeaderTransforms | None, route: HeaderTransforms | None) -> HeaderTransforms | None:
    if host is None:
        return route
    return host.merged_with(route)


def managed_headers(auth: AuthPipeline | None, transforms: HeaderTransforms | None) -> frozenset[str]:
    names = set(transforms.header_names) if transforms else set()
    if auth is not None:
        names |= auth.managed_headers()
    return frozenset(names)


def share_managed_headers(vhosts: t.Sequence[VirtualHost]) -> list[VirtualHost]:
    """``vhosts`` with every route's ``managed_headers`` set to those of the whole config.

    A header any route's auth or transformation writes (``claimsToHeaders``, ``forwardHeaders``,
    a ``dynamic_metadata`` template, a Traefik OPA header) is one an upstream behind it trusts;
    an open route to the same upstream must not let a client send it, so every route strips
    them all. Computed once per config generation.
    """
    names = frozenset().union(*(route.managed_headers for vhost in vhosts for route in vhost.routes))
    return [dataclasses.replace(vhost, routes=tuple(dataclasses.replace(route, managed_headers=names)
                                                    for route in vhost.routes)) for vhost in vhosts]


def compile_virtual_service(resource: RawResource, upstreams: dict[tuple[str, str], Targets],
                            pipelines: dict[tuple[str, str], AuthPipeline]) -> VirtualHost:
    spec = Node(resource.body.get("spec"), resource.where)
    vhost_node = spec.child("virtualHost", required=True)
    assert vhost_node is not None
    spec.raw("displayName")
    spec.done()
    domains = tuple(vhost_node.str_list("domains")) or ("*",)
    host_options = parse_route_options(vhost_node.child("options"), resource.namespace, pipelines)
    routes = []
    for index, route_node in enumerate(vhost_node.children("routes", required=True)):
        routes.append(_compile_route(route_node, index, resource, upstreams, pipelines, host_options))
    vhost_node.done()
    return VirtualHost(name=f"VirtualService {resource.namespace}/{resource.name}", domains=domains,
                       routes=tuple(routes))


def _compile_route(node: Node, index: int, resource: RawResource, upstreams: dict[tuple[str, str], Targets],
                   pipelines: dict[tuple[str, str], AuthPipeline], host_options: RouteOptions) -> Route:
    name = node.str("name", default=f"{resource.namespace}/{resource.name}/routes[{index}]")
    matchers = tuple(parse_vs_matcher(m) for m in node.children("matchers")) or (CATCH_ALL,)
    action = node.child("routeAction", required=True)
    assert action is not None
    targets = _route_action(action, resource, upstreams)
    options_node = node.child("options")
    options = parse_route_options(options_node, resource.namespace, pipelines)
    rewrite = None
    if options_node is not None:
        matchers, rewrite = parse_prefix_rewrite(options_node, "prefixRewrite", matchers)
    if options_node is not None:
        options_node.done()
    labels = node.str_map("labels")
    node.done()
    auth = route_auth(options, host_options)
    transforms = merge_transforms(host_options.transforms, options.transforms)
    return Route(name=name, source=f"{resource.where}: routes[{index}]", matchers=matchers,
                 targets=apply_target_options(targets, options), auth=auth, transforms=transforms,
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
        targets = resolve_upstream(single, "upstream", resource.namespace, upstreams)
    single.done()
    return targets
