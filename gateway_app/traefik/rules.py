"""Traefik's rule language (``IngressRoute`` ``spec.routes[].match``), compiled once into a
condition that :class:`gateway_app.routing.Matcher` evaluates against the normalized
:class:`IncomingRequest` (the same one auth, policy and forwarding see).

Matchers (Traefik v3 "Routing rules"; v2's several-argument forms of ``Host``, ``Path``,
``PathPrefix``, ``Method`` are accepted as "any of")::

    Host(`example.com`)            the host, port removed, case-insensitive
    HostRegexp(`^.+\\.example\\.com$`) Go regexp searched in the host (case-insensitive)
    Path(`/products`)              the normalized path, exactly
    PathPrefix(`/products`)        the normalized path starts with the text
    PathRegexp(`\\.(jpg|png)$`)     regexp searched in the normalized path
    Method(`GET`)                  the method
    Header(`X-Env`, `prod`)        a header equals the value
    HeaderRegexp(`X-Env`, `^pr`)   a header matches the regexp
    Query(`mobile`, `true`)        a query parameter has the value (one argument: is present)
    QueryRegexp(`mobile`, `^t`)    a query parameter value matches the regexp
    ClientIP(`10.0.0.0/8`)         the connection's address is the IP or in the CIDR

combined with ``&&``, ``||``, ``!`` and parentheses; arguments are `backtick` or "double-quoted"
strings. Regexps are searched (not anchored), as Go's ``MatchString``.

A route's default priority is the length of its rule, Traefik's default; ``priority`` overrides.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import typing as t

from ..boolean_language import Call
from ..boolean_language import Function
from ..boolean_language import Predicate
from ..boolean_language import Source
from ..boolean_language import compile_calls
from ..boolean_language import tokenize
from ..incoming import IncomingRequest
from ..routing import domain_key

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
# v2 names and other matchers Traefik users meet, and what to write instead
_RENAMED = {"Headers": "Header", "HeadersRegexp": "HeaderRegexp", "HostHeader": "Host",
            "HostSNI": "Host", "ClientIp": "ClientIP", "Queries": "Query"}


@dataclasses.dataclass(frozen=True, eq=False)
class Rule:
    """A compiled rule: ``matches(request)``; ``hosts`` are the exact hosts its top level requires.

    ``hosts`` is empty when the rule is host-less (no ``Host(...) && ...`` at its top level);
    the router then offers it for every host that no ``VirtualService`` owns.
    """

    text: str
    predicate: Predicate
    hosts: tuple[str, ...]

    def matches(self, request: IncomingRequest) -> bool:
        return self.predicate(request)

    def describe(self) -> str:
        return f"rule {' '.join(self.text.split())}"

    @property
    def default_priority(self) -> int:
        """Traefik's default: the length of the rule text."""
        return len(self.text)


def compile_rule(text: str, where: str, label: str = "match") -> Rule:
    """Compile one rule.

    :raises ConfigError: malformed rule, unknown matcher, bad regexp/IP/method, with line and column.
    """
    predicate = compile_calls(text, _FUNCTIONS, label, where, "matcher", _hint)
    return Rule(text=text, predicate=predicate, hosts=_top_level_hosts(Source(text, label, where)))


def _hint(name: str) -> str:
    better = _RENAMED.get(name) or next((f for f in _FUNCTIONS if f.lower() == name.lower()), None)
    return f" (did you mean {better}?)" if better else ""


def _top_level_hosts(source: Source) -> tuple[str, ...]:
    """The hosts of a leading ``Host(...)`` that every match needs (``Host(`a`) && ...``), else ()."""
    tokens = tokenize(source)
    if tokens[0].kind != "name" or tokens[0].text != "Host":
        return ()
    depth, hosts, index = 0, [], 1
    while tokens[index].kind != ")":
        if tokens[index].kind == "string":
            hosts.append(domain_key(tokens[index].text))
        index += 1
    for token in tokens[index + 1:]:
        depth += {"(": 1, ")": -1}.get(token.kind, 0)
        if depth == 0 and token.kind == "||":
            return ()
    return tuple(hosts)


# -- matchers ----------------------------------------------------------------------------
def _regex(call: Call, source: Source, index: int, flags: int = 0) -> re.Pattern[str]:
    try:
        return re.compile(call.arguments[index], flags)
    except re.error as e:
        raise source.error(call.argument_positions[index], f"bad regexp {call.arguments[index]!r}: {e}") from e


def _host(call: Call, source: Source) -> Predicate:
    hosts = frozenset(domain_key(h) for h in call.arguments)
    return lambda request: request.hostname in hosts


def _host_regexp(call: Call, source: Source) -> Predicate:
    pattern = _regex(call, source, 0, re.IGNORECASE)
    return lambda request: pattern.search(request.hostname) is not None


def _check_paths(call: Call, source: Source) -> None:
    for value, position in zip(call.arguments, call.argument_positions):
        if not value.startswith("/"):
            raise source.error(position, f"{call.name} must start with '/'")
        if "{" in value:
            raise source.error(position, "path templates such as {id:[0-9]+} are Traefik v2; "
                                         "use PathRegexp(`^/products/[0-9]+$`)")


def _path(call: Call, source: Source) -> Predicate:
    _check_paths(call, source)
    paths = frozenset(call.arguments)
    return lambda request: request.path in paths


def _path_prefix(call: Call, source: Source) -> Predicate:
    _check_paths(call, source)
    prefixes = tuple(call.arguments)
    return lambda request: request.path.startswith(prefixes)


def _path_regexp(call: Call, source: Source) -> Predicate:
    pattern = _regex(call, source, 0)
    return lambda request: pattern.search(request.path) is not None


def _method(call: Call, source: Source) -> Predicate:
    methods = frozenset(m.upper() for m in call.arguments)
    for value, position in zip(call.arguments, call.argument_positions):
        if value.upper() not in HTTP_METHODS:
            raise source.error(position, f"unknown HTTP method {value!r}")
    return lambda request: request.method in methods


def _field_values(request: t.Any, name: str) -> tuple[str, ...]:
    """The values a repeated header may have been sent as: the server joined the fields with
    ``,``, so the whole value and each comma-separated element are candidates. Traefik matches
    when any field matches (Go's ``req.Header[key]``): ``X-Internal: 1`` sent twice still
    matches ``Header(`X-Internal`, `1`)`` (and does not slip past ``!Header(...)``)."""
    value = request.headers.get(name)
    if value is None:
        return ()
    return (value, *(element.strip() for element in value.split(","))) if "," in value else (value,)


def _header(call: Call, source: Source) -> Predicate:
    name, value = call.arguments[0].lower(), call.arguments[1]
    return lambda request: value in _field_values(request, name)


def _header_regexp(call: Call, source: Source) -> Predicate:
    name, pattern = call.arguments[0].lower(), _regex(call, source, 1)
    return lambda request: any(pattern.search(value) is not None for value in _field_values(request, name))


def _query(call: Call, source: Source) -> Predicate:
    key = call.arguments[0]
    if len(call.arguments) == 1:
        return lambda request: key in request.query
    value = call.arguments[1]
    return lambda request: value in request.query.get(key, ())


def _query_regexp(call: Call, source: Source) -> Predicate:
    key, pattern = call.arguments[0], _regex(call, source, 1)
    return lambda request: any(pattern.search(v) for v in request.query.get(key, ()))


def _client_ip(call: Call, source: Source) -> Predicate:
    networks = []
    for value, position in zip(call.arguments, call.argument_positions):
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError as e:
            raise source.error(position, f"not an IP address or CIDR: {value!r}") from e
    return lambda request: _address_in(request.remote_addr, networks)


def _address_in(address: str, networks: list[t.Any]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return any(ip in network for network in networks)


_FUNCTIONS: dict[str, Function] = {
    "Host": Function(_host, 1, None, "Host(`example.com`)"),
    "HostRegexp": Function(_host_regexp, 1, 1, "HostRegexp(`^.+\\.example\\.com$`)"),
    "Path": Function(_path, 1, None, "Path(`/products`)"),
    "PathPrefix": Function(_path_prefix, 1, None, "PathPrefix(`/products`)"),
    "PathRegexp": Function(_path_regexp, 1, 1, "PathRegexp(`^/products/[0-9]+$`)"),
    "Method": Function(_method, 1, None, "Method(`GET`)"),
    "Header": Function(_header, 2, 2, "Header(`X-Env`, `prod`)"),
    "HeaderRegexp": Function(_header_regexp, 2, 2, "HeaderRegexp(`X-Env`, `^prod`)"),
    "Query": Function(_query, 1, 2, "Query(`mobile`, `true`)"),
    "QueryRegexp": Function(_query_regexp, 2, 2, "QueryRegexp(`mobile`, `^(true|yes)$`)"),
    "ClientIP": Function(_client_ip, 1, None, "ClientIP(`10.0.0.0/8`)"),
}
