"""Traefik ``IngressRoute`` resources compiled into the one route table.

Each ``spec.routes[]`` entry (``kind: Rule``) becomes a :class:`Route` whose matcher is the
compiled rule, whose auth is its middlewares' steps in order, and whose targets are the
``Upstream`` its ``services[].name`` names (a Kubernetes Service becomes an ``Upstream``: the
one change a Traefik user makes) or an ``http(s)://`` URL written as the service name.

How Traefik routes join ``VirtualService`` virtual hosts (the router picks a host first):

- a rule that starts with ``Host(...) &&`` (or is only ``Host(...)``) is filed under those hosts;
- any other rule is host-less and filed under ``*``, and also joins every host of the first kind;
- within a host, routes are tried by priority (Traefik's: the rule length unless ``priority`` is set),
  highest first, then in file order;
- a host (or ``*``) claimed by a ``VirtualService`` and by IngressRoutes is a config error, and so
  are two routes with the same rule and priority (Traefik would pick one arbitrarily).
"""

from __future__ import annotations

import collections
import dataclasses
import typing as t

from ..config.fields import Node
from ..config.loader import RawResource
from ..config.managed_headers import managed_headers
from ..config.refs import resolve_ref
from ..config.upstreams import target_from_url
from ..errors import ConfigError
from ..routing import Matcher
from ..routing import Route
from ..routing import VirtualHost
from ..transform import HeaderTransforms
from .middlewares import Middleware
from .middlewares import check_api_version
from .middlewares import pipeline_for
from .middlewares import refuse_unknown
from .rewrites import PathChanges
from .rewrites import PathStep
from .rules import Rule
from .rules import compile_rule

Targets = tuple[t.Any, ...]
_ROUTE_FIELDS = ("kind", "match", "priority", "middlewares", "services", "syntax")
_SERVICE_FIELDS = ("name", "namespace", "port", "kind")


@dataclasses.dataclass(frozen=True)
class TraefikRoute:
    """A compiled IngressRoute route with what orders it among the others."""

    route: Route
    rule: Rule
    priority: int
    owner: str                      # "IngressRoute apps/whoami"
    order: tuple[str, int, int]     # file, document, route index: declaration order


def compile_ingress_route(resource: RawResource, upstreams: dict[tuple[str, str], Targets],
                          middlewares: dict[tuple[str, str], Middleware]) -> list[TraefikRoute]:
    """Every route of one IngressRoute. ``entryPoints`` and ``tls`` are accepted and ignored
    (one listener; TLS is terminated by gunicorn or in front of it).

    :raises ConfigError: bad rule, unknown field, dangling Middleware or Upstream reference.
    """
    check_api_version(resource)
    spec = Node(resource.body.get("spec"), resource.where)
    spec.str_list("entryPoints")
    spec.raw("tls")
    routes = [_compile_route(node, index, resource, upstreams, middlewares)
              for index, node in enumerate(spec.children("routes", required=True))]
    _done(spec, ("entryPoints", "tls", "routes"))
    if not routes:
        raise spec.error("routes", "needs at least one route")
    return routes


def ignored_fields_note(resource: RawResource) -> str | None:
    """What ``validate`` says of accepted but ignored fields: ``entryPoints`` and ``tls``."""
    spec = resource.body.get("spec")
    if not isinstance(spec, dict):
        return None
    notes = []
    entry_points = spec.get("entryPoints")
    if entry_points:
        names = ", ".join(map(str, entry_points)) if isinstance(entry_points, list) else str(entry_points)
        notes.append(f"entryPoints {names} ignored: the gateway has one listener")
    if spec.get("tls"):
        notes.append("tls ignored: TLS ends at gunicorn or in front of it")
    return "; ".join(notes) or None


def _done(node: Node, known: t.Sequence[str]) -> None:
    refuse_unknown(node, known)
    node.done()


def _compile_route(node: Node, index: int, resource: RawResource, upstreams: dict[tuple[str, str], Targets],
                   middlewares: dict[tuple[str, str], Middleware]) -> TraefikRoute:
    kind = node.str("kind", default="Rule")
    if kind != "Rule":
        raise node.error("kind", f"must be Rule, got {kind!r}")
    node.str("syntax")
    rule = _rule(node)
    priority = node.int("priority", minimum=0)
    chain = [resolve_ref(ref, resource.namespace, middlewares, "Middleware") for ref in node.children("middlewares")]
    targets = _services(node, resource, upstreams)
    _done(node, _ROUTE_FIELDS)
    auth = pipeline_for(chain)
    transforms = HeaderTransforms(tuple(h for m in chain for h in m.headers)) if any(m.headers for m in chain) \
        else None
    route = Route(name=f"{resource.namespace}/{resource.name}/routes[{index}]",
                  source=f"{resource.where}: routes[{index}]", matchers=(Matcher(condition=rule),),
                  targets=targets, auth=auth, transforms=transforms, path_rewrite=_path_changes(chain),
                  managed_headers=managed_headers(auth, transforms))
    return TraefikRoute(route=route, rule=rule, priority=rule.default_priority if priority is None else priority,
                        owner=f"IngressRoute {resource.namespace}/{resource.name}",
                        order=(resource.file, resource.index, index))


def _path_changes(chain: t.Sequence[Middleware]) -> PathChanges | None:
    with_path = [m for m in chain if m.path_step is not None]
    if not with_path:
        return None
    return PathChanges(steps=tuple(t.cast(PathStep, m.path_step) for m in with_path),
                       replacement=", ".join(m.path_description for m in with_path))


def _rule(node: Node) -> Rule:
    text = node.str("match", required=True)
    try:
        return compile_rule(text, node.where, node.field_path("match"))
    except ConfigError as e:
        raise ConfigError(e.detail, where=node.where, line=node.data.key_lines.get("match")) from e


def _services(node: Node, resource: RawResource, upstreams: dict[tuple[str, str], Targets]) -> Targets:
    services = node.children("services", required=True)
    if not services:
        raise node.error("services", "needs at least one service")
    targets: list[t.Any] = []
    for service in services:
        kind = service.str("kind", default="Service")
        if kind != "Service":
            raise service.error("kind", f"only kind Service is supported (an Upstream of that name), got {kind!r}")
        port = service.raw("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, (int, str))):
            raise service.error("port", "expected a port number or name")
        name = service.str("name", required=True)
        if name.startswith(("http://", "https://")):
            service.raw("namespace")
            targets.extend(target_from_url(service, "name", f"{resource.namespace}/{resource.name}"))
            _done(service, _SERVICE_FIELDS)
            continue
        ref = Node({k: v for k, v in service.data.items() if k in ("name", "namespace")}, service.where,
                   service.path)
        for field in ("name", "namespace"):
            service.raw(field)
        _done(service, _SERVICE_FIELDS)
        targets.extend(_upstream(service, ref, resource.namespace, upstreams))
    return tuple(targets)


def _upstream(service: Node, ref: Node, namespace: str, upstreams: dict[tuple[str, str], Targets]) -> Targets:
    try:
        return resolve_ref(ref, namespace, upstreams, "Upstream")
    except ConfigError:
        name = service.data["name"]
        raise service.error("name", f"Upstream {service.data.get('namespace', namespace)}/{name} not found: "
                                    f"declare the Kubernetes Service {name} as an Upstream with static.hosts, "
                                    f"or write the service name as an http:// URL") from None


def traefik_virtual_hosts(routes: t.Sequence[TraefikRoute]) -> list[VirtualHost]:
    """Group routes by the hosts their rules require (see the module docstring).

    :raises ConfigError: two routes with the same rule and priority.
    """
    _check_overlaps(routes)
    hostless = [r for r in routes if not r.rule.hosts]
    by_host: dict[str, list[TraefikRoute]] = collections.defaultdict(list)
    for route in routes:
        for host in route.rule.hosts:
            by_host[host].append(route)
    vhosts = [_virtual_host(host, listed + hostless) for host, listed in sorted(by_host.items())]
    if hostless:
        vhosts.append(_virtual_host("*", hostless))
    return vhosts


def _virtual_host(domain: str, routes: list[TraefikRoute]) -> VirtualHost:
    ordered = sorted(routes, key=lambda r: (-r.priority, r.order))
    owners = sorted({r.owner.split(" ", 1)[1] for r in ordered})
    name = f"IngressRoute{'s' if len(owners) > 1 else ''} {', '.join(owners)}"
    return VirtualHost(name=name, domains=(domain,), routes=tuple(r.route for r in ordered))


def _check_overlaps(routes: t.Sequence[TraefikRoute]) -> None:
    seen: dict[tuple[str, int], TraefikRoute] = {}
    for route in routes:
        key = (" ".join(route.rule.text.split()), route.priority)
        first = seen.setdefault(key, route)
        if first is not route:
            raise ConfigError(f"{first.route.name} and {route.route.name} have the same rule and priority "
                              f"{route.priority}: which one answers would be arbitrary; set a different priority",
                              where=route.route.source)
