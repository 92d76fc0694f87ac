"""Routes and the compiled route table: host -> virtual host -> first matching route.

Hosts are matched as Envoy does: an exact domain wins over a ``*.suffix`` wildcard
(longest suffix first), which wins over ``*``; ports are ignored. Domains and the request's
host name are compared in one form: lower-case, one trailing root dot removed (RFC 1034 §3.1;
the request's is :func:`gateway_app.incoming.normalize_host`). Within a virtual host, routes
are tried in declaration order and the first match wins.

A route that rewrites its path (Gloo ``prefixRewrite``, route-table ``pathRewrite``) matches
its prefix on segment boundaries only, and the rewritten path must already be in the normal
form of :func:`gateway_app.paths.normalize_path`, so a rewrite never produces a path that an
upstream resolves to another route's.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import re
import typing as t

from .errors import BadRequestError
from .errors import RouteNotFoundError
from .incoming import IncomingRequest
from .incoming import split_port
from .paths import normalize_path

if t.TYPE_CHECKING:
    from .auth.pipeline import AuthPipeline
    from .config.upstreams import UpstreamTarget
    from .transform import HeaderTransforms


@dataclasses.dataclass(frozen=True)
class HeaderMatcher:
    name: str                       # lower-cased
    value: str | None = None        # None: the header must be present
    regex: re.Pattern[str] | None = None
    invert: bool = False

    def matches(self, headers: t.Mapping[str, str]) -> bool:
        actual = headers.get(self.name)
        if actual is None:
            found = False
        elif self.regex is not None:
            found = self.regex.fullmatch(actual) is not None
        elif self.value is not None:
            found = actual == self.value
        else:
            found = True
        return found != self.invert


@dataclasses.dataclass(frozen=True)
class PathMatcher:
    """One of prefix / exact / regex (full match, as Envoy's RE2 safe_regex).

    ``segment_boundary``: a prefix matches only a whole segment run (``/assets`` matches
    ``/assets`` and ``/assets/x``, not ``/assets..`` or ``/assetsx``); set on the matchers
    of routes that rewrite their path (:meth:`PathRewrite.for_route`).
    """

    kind: str                       # "prefix" | "exact" | "regex"
    value: str
    regex: re.Pattern[str] | None = None
    case_sensitive: bool = True
    segment_boundary: bool = False

    def matches(self, path: str) -> bool:
        if self.kind == "regex":
            assert self.regex is not None
            return self.regex.fullmatch(path) is not None
        candidate = path if self.case_sensitive else path.lower()
        if self.kind == "exact":
            # One trailing slash either way: upstreams such as Express and Spring serve /admin/ as
            # /admin, so a path that reads as the exact one is matched (and guarded) as it.
            return candidate == self.value or _without_trailing_slash(candidate) == _without_trailing_slash(self.value)
        if not candidate.startswith(self.value):
            return False
        end = len(self.value)
        return (not self.segment_boundary or end == len(candidate) or self.value.endswith("/")
                or candidate[end] == "/")

    def describe(self) -> str:
        return f"{self.kind} {self.value}"


class Condition(t.Protocol):
    """A compiled condition over the whole request, such as a Traefik rule."""

    def matches(self, request: IncomingRequest) -> bool: ...

    def describe(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class Matcher:
    """All conditions of one matcher must hold; a route matches if any of its matchers does."""

    paths: tuple[PathMatcher, ...] = ()          # all must match (delegation adds the parent's)
    methods: frozenset[str] = frozenset()        # empty: any method
    headers: tuple[HeaderMatcher, ...] = ()
    condition: "Condition | None" = None          # a compiled rule (Traefik ``match``)

    def matches(self, request: IncomingRequest) -> bool:
        if self.condition is not None and not self.condition.matches(request):
            return False
        if self.methods and request.method not in self.methods:
            return False
        for path in self.paths:
            if not path.matches(request.path):
                return False
        for header in self.headers:
            if not header.matches(request.headers):
                return False
        return True

    def describe(self) -> str:
        if self.condition is not None and not (self.paths or self.methods or self.headers):
            return self.condition.describe()
        parts = [p.describe() for p in self.paths] or ["prefix /"]
        if self.methods:
            parts.append("methods " + ",".join(sorted(self.methods)))
        parts.extend(f"header {h.name}" for h in self.headers)
        return " & ".join(parts)


@dataclasses.dataclass(frozen=True)
class PathRewrite:
    """Replace the matched prefix (Gloo ``prefixRewrite`` / route-table ``pathRewrite``).

    ``prefixes`` are the prefix/exact matchers whose match is replaced, longest first.
    """

    prefixes: tuple[PathMatcher, ...]
    replacement: str                   # starts with '/'
    whole_path: bool = False           # a regex matcher: the whole path is the matched part (Envoy)

    @classmethod
    def for_route(cls, matchers: t.Sequence[Matcher],
                  replacement: str) -> tuple[tuple[Matcher, ...], "PathRewrite"]:
        """A route's matchers, their rewritten prefixes bound to segment boundaries, and its rewrite.

        Each matcher's last path condition is the one replaced (delegation puts the parent's
        first). A path matched by a regex matcher is replaced whole, as Envoy's
        ``prefix_rewrite`` does on a ``safe_regex`` route (the matched "prefix" is the path); a
        matcher without a path condition rewrites from ``/``.
        """
        bounded = tuple(dataclasses.replace(m, paths=m.paths[:-1] + tuple(
            dataclasses.replace(p, segment_boundary=True) if p.kind == "prefix" else p for p in m.paths[-1:]))
            for m in matchers)
        rewritten = {p for m in bounded for p in m.paths[-1:] if p.kind in ("prefix", "exact")}
        whole_path = any(p.kind == "regex" for m in bounded for p in m.paths[-1:])
        if any(not m.paths for m in bounded) or not (rewritten or whole_path):
            rewritten.add(PathMatcher("prefix", "/"))
        ordered = tuple(sorted(rewritten, key=lambda p: (-len(p.value), p.kind, p.value)))
        return bounded, cls(ordered, replacement, whole_path)

    def apply(self, path: str) -> str:
        """The upstream path for ``path`` (a normalized path), unchanged when no prefix matches.

        The matched part is replaced on segment boundaries: what followed it stays a segment of
        its own (prefix ``/`` rewritten to ``/api`` sends ``/pets`` as ``/api/pets``, where a
        plain string swap would send ``/apipets``).

        :raises BadRequestError: ``rewrite_invalid``: the result is not in normal form (it would
            hold a dot-segment or an empty segment that the upstream resolves on its own).
        """
        for prefix in self.prefixes:
            if prefix.matches(path):
                break
        else:
            return checked_rewrite(self.replacement) if self.whole_path else path
        rest = path[len(prefix.value):]
        if prefix.value.endswith("/") and rest:
            rest = "/" + rest           # the rest starts a segment: never glued onto the replacement
        result = self.replacement + rest
        if self.replacement.endswith("/") and rest.startswith("/"):
            result = self.replacement + rest[1:]
        if not result.startswith("/"):
            result = "/" + result
        return checked_rewrite(result)


def checked_rewrite(path: str) -> str:
    """A rewritten upstream path, refused unless it is already in normal form (Gloo rewrites and
    Traefik's path middlewares alike).

    :raises BadRequestError: ``rewrite_invalid``: it would hold a dot-segment, an empty segment or
        an escape that the upstream resolves on its own.
    """
    if normalize_path(path) != path:
        raise BadRequestError("the rewritten path is not a normal path", reason="rewrite_invalid")
    return path


@dataclasses.dataclass(frozen=True, eq=False)
class Route:
    """A compiled route: what it matches, where it goes and what guards it."""

    name: str
    source: str                                   # "conf/vs.yaml: VirtualService ns/name: routes[0]"
    matchers: tuple[Matcher, ...]
    targets: tuple["UpstreamTarget", ...]
    auth: "AuthPipeline | None" = None
    transforms: "HeaderTransforms | None" = None
    path_rewrite: PathRewrite | None = None
    labels: t.Mapping[str, str] = dataclasses.field(default_factory=dict)
    api_product_id: str | None = None
    usage_plan: str | None = None
    max_body_bytes: int | None = None
    managed_headers: frozenset[str] = frozenset()  # headers the gateway sets: client copies are removed
    next_target: t.Callable[[], "UpstreamTarget | None"] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Chosen when the config is built: the one target (None for a table without any), or
        # each in turn (round robin, as Envoy's default load balancer). itertools' iterators
        # step atomically under the GIL.
        pick: t.Iterator[UpstreamTarget | None] = (itertools.cycle(self.targets) if len(self.targets) > 1
                                                   else itertools.repeat(self.targets[0] if self.targets else None))
        object.__setattr__(self, "next_target", pick.__next__)

    def matches(self, request: IncomingRequest) -> bool:
        return any(m.matches(request) for m in self.matchers)

    @functools.cached_property
    def policy_key(self) -> str:
        """The route metadata a policy can see: routes with equal keys get equal answers.

        A string, so its hash is computed once (it keys remembered outcomes on every request).
        """
        return json.dumps([self.api_product_id, self.usage_plan, sorted(self.labels.items())])

    def upstream_path(self, path: str) -> str:
        """The path to forward for the (normalized) request path.

        :raises BadRequestError: the rewrite would produce a path not in normal form.
        """
        return self.path_rewrite.apply(path) if self.path_rewrite else path


@dataclasses.dataclass(frozen=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]


@dataclasses.dataclass(frozen=True)
class RouteMatch:
    """The route a request matched, its virtual host, and the upstream target it goes to."""

    route: Route
    virtual_host: VirtualHost
    target: "UpstreamTarget | None"


class Router:
    """The compiled table. Build once per config generation; :meth:`match` per request."""

    def __init__(self, virtual_hosts: t.Sequence[VirtualHost]) -> None:
        self.virtual_hosts = tuple(virtual_hosts)
        self._exact: dict[str, VirtualHost] = {}
        self._suffixes: list[tuple[str, VirtualHost]] = []
        self._prefixes: list[tuple[str, VirtualHost]] = []
        self._any: VirtualHost | None = None
        for vhost in self.virtual_hosts:
            for domain in vhost.domains:
                self._index(domain_key(domain), vhost)
        self._suffixes.sort(key=lambda item: -len(item[0]))
        self._prefixes.sort(key=lambda item: -len(item[0]))
        self._host_cache: dict[str, VirtualHost | None] = {}

    def _index(self, domain: str, vhost: VirtualHost) -> None:
        if domain == "*":
            self._any = vhost
        elif domain.startswith("*"):
            self._suffixes.append((domain[1:], vhost))
        elif domain.endswith("*"):
            self._prefixes.append((domain[:-1], vhost))
        else:
            self._exact[domain] = vhost

    def virtual_host_for(self, hostname: str) -> VirtualHost | None:
        cached = self._host_cache.get(hostname, False)
        if cached is not False:
            return t.cast("VirtualHost | None", cached)
        vhost = self._lookup(hostname)
        if len(self._host_cache) < 4096:
            self._host_cache[hostname] = vhost
        return vhost

    def _lookup(self, hostname: str) -> VirtualHost | None:
        vhost = self._exact.get(hostname)
        if vhost is not None:
            return vhost
        for suffix, candidate in self._suffixes:
            if hostname.endswith(suffix) and len(hostname) > len(suffix):
                return candidate
        for prefix, candidate in self._prefixes:
            if hostname.startswith(prefix):
                return candidate
        return self._any

    def match(self, request: IncomingRequest) -> RouteMatch:
        """The first route of the request's virtual host that matches, and its next target.

        :raises RouteNotFoundError: no virtual host or no route matches.
        """
        vhost = self.virtual_host_for(request.hostname)
        if vhost is not None:
            for route in vhost.routes:
                if route.matches(request):
                    return RouteMatch(route, vhost, route.next_target())
        raise RouteNotFoundError()


def domain_key(domain: str) -> str:
    """A configured domain as hosts are matched against it: ``API.example.com.:8080`` ->
    ``api.example.com`` (lower-case, port ignored, one root dot removed as from the request's
    host, RFC 1034 §3.1; wildcards kept)."""
    domain = split_port(domain.lower())[0]
    return domain[:-1] if domain.endswith(".") and domain != "." else domain


def _without_trailing_slash(path: str) -> str:
    """``path`` without one trailing ``/`` (the root stays ``/``)."""
    return path[:-1] if len(path) > 1 and path.endswith("/") else path
