"""Gloo Platform ``RouteTable`` delegation and ``ExtAuthPolicy`` attachment by route labels.

A table with ``hosts`` is a root: it becomes a virtual host. Its ``delegate`` routes pull
in the routes of child tables (by name/namespace or by table labels), each child route
matching only where the parent's matchers also match. The API product of a route is the
``portalMetadata.apiProductId`` of the nearest table that sets one. An ``ExtAuthPolicy``
attaches its ``glooAuth`` to every route whose labels contain all of a selector's labels;
routes no policy selects stay open.
"""

from __future__ import annotations

import dataclasses
import typing as t
import urllib.parse

from ..auth.pipeline import AuthPipeline
from ..errors import ConfigError
from ..routing import Matcher
from ..routing import PathRewrite
from ..routing import Route
from ..routing import VirtualHost
from .auth_configs import AuthBuildContext
from .auth_configs import parse_auth_pipeline
from .fields import Node
from .loader import RawResource
from .managed_headers import managed_headers
from .matchers import CATCH_ALL
from .matchers import parse_header_matchers
from .matchers import parse_methods
from .matchers import parse_path
from .refs import lookup
from .refs import resolve_ref
from .upstreams import target_from_url
from .usage_plans import check_plan_label

Guard = t.Callable[[RawResource, t.Callable[[], t.Any]], t.Any]
Reject = t.Callable[[RawResource, ConfigError], None]
Targets = tuple[t.Any, ...]
MAX_DEPTH = 8


@dataclasses.dataclass(frozen=True)
class TableRoute:
    """One entry of a RouteTable's ``http`` list: its matchers and either a ``forwardTo``
    (``targets``, ``path_rewrite``) or ``delegate`` selectors still to resolve."""

    name: str
    index: int
    labels: dict[str, str]
    matchers: tuple[Matcher, ...]
    targets: Targets | None
    path_rewrite: str | None
    delegate: tuple[Node, ...]


@dataclasses.dataclass(frozen=True)
class Table:
    """A parsed RouteTable: a root when it has ``hosts``, else a delegation target."""

    resource: RawResource
    hosts: tuple[str, ...]
    labels: dict[str, str]
    api_product_id: str | None
    routes: tuple[TableRoute, ...]


@dataclasses.dataclass(frozen=True)
class PolicyAttachment:
    """An ExtAuthPolicy: its ``glooAuth`` pipeline and the route label selectors it applies to."""

    name: str
    selectors: tuple[dict[str, str], ...]
    pipeline: AuthPipeline


class RouteTableCompiler:
    """RouteTables and ExtAuthPolicies of one config -> virtual hosts (one per root table).

    ``upstreams`` are the accepted Upstreams by ``(namespace, name)``; ``usage_plans`` the
    names a ``usagePlan`` route label may take.
    """

    def __init__(self, tables: list[RawResource], policies: list[RawResource],
                 upstreams: dict[tuple[str, str], Targets], ctx: AuthBuildContext,
                 usage_plans: t.Container[str] = frozenset()) -> None:
        self.table_resources = tables
        self.usage_plans = usage_plans
        self.policy_resources = policies
        self.upstreams = upstreams
        self.ctx = ctx
        self.tables: dict[tuple[str, str], Table] = {}
        self.policies: list[PolicyAttachment] = []

    def compile(self, guard: Guard, reject: Reject) -> list[VirtualHost]:
        """Parse policies and tables under ``guard``; flattening errors go to the root via ``reject``."""
        for resource in self.policy_resources:
            policy = guard(resource, lambda r=resource: self._parse_policy(r))
            if policy is not None:
                self.policies.append(policy)
        roots = []
        for resource in self.table_resources:
            table = guard(resource, lambda r=resource: self._parse_table(r))
            if table is not None:
                self.tables[(resource.namespace, resource.name)] = table
                if table.hosts:
                    roots.append(table)
        vhosts = []
        for table in roots:
            try:
                vhosts.append(self._virtual_host(table))
            except ConfigError as e:
                reject(table.resource, e)
        return vhosts

    # -- parsing -----------------------------------------------------------------
    def _parse_policy(self, resource: RawResource) -> PolicyAttachment:
        spec = Node(resource.body.get("spec"), resource.where)
        selectors = []
        for item in spec.children("applyToRoutes", required=True):
            route = item.child("route", required=True)
            item.done()
            assert route is not None
            labels = route.str_map("labels")
            route.done()
            if not labels:
                raise route.error("labels", "select routes by at least one label")
            selectors.append(labels)
        config = spec.child("config", required=True)
        assert config is not None
        spec.done()
        gloo_auth = config.child("glooAuth", required=True)
        assert gloo_auth is not None
        config.raw("server")
        config.done()
        pipeline = parse_auth_pipeline(gloo_auth, f"{resource.namespace}/{resource.name}", resource.namespace,
                                       self.ctx)
        return PolicyAttachment(f"ExtAuthPolicy {resource.namespace}/{resource.name}", tuple(selectors), pipeline)

    def _parse_table(self, resource: RawResource) -> Table:
        spec = Node(resource.body.get("spec"), resource.where)
        hosts = tuple(spec.str_list("hosts"))
        spec.raw("virtualGateways")
        spec.raw("workloadSelectors")
        portal = spec.child("portalMetadata")
        product = None
        if portal is not None:
            product = portal.str("apiProductId")
            for field in list(portal.data):
                portal.raw(str(field))
        default = spec.child("defaultDestination")
        default_targets = self._destination(default, resource.namespace) if default else None
        routes = tuple(self._parse_route(node, index, resource, default_targets)
                       for index, node in enumerate(spec.children("http", required=True)))
        spec.done()
        metadata = resource.body.get("metadata") or {}
        labels = {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()}
        return Table(resource, hosts, labels, product, routes)

    def _parse_route(self, node: Node, index: int, resource: RawResource, default: Targets | None) -> TableRoute:
        name = node.str("name", default=f"{resource.name}-{index}")
        labels = node.str_map("labels")
        check_plan_label(node, labels, self.usage_plans)
        matchers = tuple(self._matcher(m) for m in node.children("matchers")) or (CATCH_ALL,)
        kind = node.one_of("forwardTo", "delegate")
        targets, rewrite, delegate = None, None, ()
        if kind == "forwardTo":
            forward = node.child("forwardTo")
            assert forward is not None
            destinations = forward.children("destinations")
            if len(destinations) > 1:
                raise forward.error("destinations", "only one destination per route is supported")
            targets = self._destination(destinations[0], resource.namespace) if destinations else default
            if targets is None:
                raise forward.error("destinations", "no destination and no defaultDestination on the table")
            rewrite = forward.str("pathRewrite")
            if rewrite is not None and not rewrite.startswith("/"):
                raise forward.error("pathRewrite", "must start with '/'")
            forward.done()
        else:
            delegate_node = node.child("delegate")
            assert delegate_node is not None
            delegate = tuple(delegate_node.children("routeTables", required=True))
            delegate_node.raw("sortMethod")
            delegate_node.done()
        node.done()
        return TableRoute(name, index, labels, matchers, targets, rewrite, delegate)

    @staticmethod
    def _matcher(node: Node) -> Matcher:
        uri = node.child("uri")
        paths = ()
        if uri is not None:
            ignore_case = uri.bool("ignoreCase")
            path = parse_path(uri, "prefix", "exact", "regex", not ignore_case)
            uri.done()
            paths = (path,) if path else ()
        methods = parse_methods(node, "method") | parse_methods(node, "methods")
        headers = parse_header_matchers(node)
        node.raw("queryParameters")
        if node.has("queryParameters"):
            raise node.error("queryParameters", "query parameter matchers are not supported")
        node.done()
        return Matcher(paths=paths, methods=methods, headers=headers)

    def _destination(self, node: Node, namespace: str) -> Targets:
        if node.has("url"):
            targets = target_from_url(node, "url", f"url:{node.data['url']}")
            node.done()
            return targets
        ref = node.child("ref", required=True)
        assert ref is not None
        ref.raw("cluster")
        kind = node.str("kind", default="UPSTREAM")
        if kind.upper() not in ("UPSTREAM", "EXTERNAL_SERVICE"):
            raise node.error("kind", f"{kind} destinations need a cluster; declare an Upstream and use kind UPSTREAM")
        port_node = node.child("port")
        port = None
        if port_node is not None:
            port = port_node.int("number", minimum=1, maximum=65535)
            port_node.done()
        node.done()
        targets = resolve_ref(ref, namespace, self.upstreams, "Upstream")
        return tuple(_with_port(target, port) for target in targets) if port else targets

    # -- flattening --------------------------------------------------------------
    def _virtual_host(self, table: Table) -> VirtualHost:
        routes = self._routes_of(table, parents=(), product=None, chain=())
        return VirtualHost(name=f"RouteTable {table.resource.namespace}/{table.resource.name}",
                           domains=table.hosts, routes=tuple(routes))

    def _routes_of(self, table: Table, parents: tuple[Matcher, ...], product: str | None,
                   chain: tuple[tuple[str, str], ...]) -> list[Route]:
        key = (table.resource.namespace, table.resource.name)
        if key in chain:
            raise ConfigError(f"delegation cycle: {' -> '.join('/'.join(k) for k in chain + (key,))}",
                              where=table.resource.where)
        if len(chain) > MAX_DEPTH:
            raise ConfigError("delegation deeper than 8 tables", where=table.resource.where)
        product = table.api_product_id or product
        routes: list[Route] = []
        for table_route in table.routes:
            matchers = _combine(parents, table_route.matchers)
            if table_route.delegate:
                for child in self._children(table_route.delegate):
                    routes.extend(self._routes_of(child, matchers, product, chain + (key,)))
                continue
            routes.append(self._route(table, table_route, matchers, product))
        return routes

    def _children(self, refs: tuple[Node, ...]) -> list[Table]:
        children: list[Table] = []
        for ref in refs:
            name = ref.str("name")
            namespace = ref.str("namespace")
            labels = ref.str_map("labels")
            ref.done()
            if name and namespace is not None:
                children.append(lookup(self.tables, (namespace, name), ref, "RouteTable"))
            elif name:      # no namespace: every namespace (Gloo Platform's ObjectSelector), see config/refs.py
                named = sorted((tb for (_, n), tb in self.tables.items() if n == name),
                               key=lambda tb: tb.resource.namespace)
                if not named:
                    raise ref.error("name", f"RouteTable */{name} not found (or rejected)")
                children.extend(named)
            elif labels:
                matched = sorted((tb for tb in self.tables.values()
                                  if all(tb.labels.get(k) == v for k, v in labels.items())),
                                 key=lambda tb: (tb.resource.namespace, tb.resource.name))
                children.extend(tb for tb in matched if not tb.hosts)
            else:
                raise ref.error(None, "name or labels is required")
        return children

    def _route(self, table: Table, table_route: TableRoute, matchers: tuple[Matcher, ...],
               product: str | None) -> Route:
        auth = self._policy_for(table_route, table)
        rewrite = None
        if table_route.path_rewrite is not None:
            matchers, rewrite = PathRewrite.for_route(matchers, table_route.path_rewrite)
        assert table_route.targets is not None
        return Route(
            name=table_route.name,
            source=f"{table.resource.where}: http[{table_route.index}]",
            matchers=matchers, targets=table_route.targets, auth=auth, transforms=None, path_rewrite=rewrite,
            labels=table_route.labels, api_product_id=product,
            usage_plan=table_route.labels.get("usagePlans"),
            managed_headers=managed_headers(auth, None),
        )

    def _policy_for(self, table_route: TableRoute, table: Table) -> AuthPipeline | None:
        matching = [p for p in self.policies
                    if any(all(table_route.labels.get(k) == v for k, v in selector.items())
                           for selector in p.selectors)]
        if len(matching) > 1:
            names = ", ".join(p.name for p in matching)
            raise ConfigError(f"route {table_route.name} is selected by several ExtAuthPolicies: {names}",
                              where=table.resource.where)
        return matching[0].pipeline if matching else None


def _combine(parents: tuple[Matcher, ...], children: tuple[Matcher, ...]) -> tuple[Matcher, ...]:
    """Child matchers that also satisfy one of the parent's matchers (methods: the intersection)."""
    if not parents:
        return children
    combined = []
    for parent in parents:
        for child in children:
            methods = _common_methods(parent.methods, child.methods)
            if methods is None:
                continue                      # no method satisfies both: this pair can never match
            combined.append(Matcher(paths=parent.paths + child.paths, methods=methods,
                                    headers=parent.headers + child.headers))
    return tuple(combined)


def _common_methods(parent: frozenset[str], child: frozenset[str]) -> frozenset[str] | None:
    """Methods both allow (empty: any); None when they have none in common."""
    if parent and child:
        return (parent & child) or None
    return parent or child


def _with_port(target: t.Any, port: int) -> t.Any:
    parts = urllib.parse.urlsplit(target.base_url)
    host = parts.hostname or ""
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return dataclasses.replace(target, base_url=urllib.parse.urlunsplit(parts._replace(netloc=netloc)))
