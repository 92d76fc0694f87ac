"""Route matchers as Gloo writes them, shared by every route source that reads them.

Path (prefix / exact / regex, optionally case-insensitive), method and header matchers are
parsed here once for Gloo Edge ``VirtualService`` matchers (:mod:`.virtual_services`) and
Gloo Platform ``RouteTable`` matchers (:mod:`.route_tables`), which spell the same matchers
with different field names. :data:`CATCH_ALL` is the matcher of a route that declares none
(Gloo: a route without matchers matches every path).
"""

from __future__ import annotations

import re

from ..routing import HeaderMatcher
from ..routing import Matcher
from ..routing import PathMatcher
from .fields import Node

CATCH_ALL = Matcher(paths=(PathMatcher("prefix", "/"),))
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def _compile_regex(node: Node, field: str, value: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as e:
        raise node.error(field, f"bad regex {value!r}: {e}") from e


def parse_path(node: Node, prefix_field: str, exact_field: str, regex_field: str,
               case_sensitive: bool) -> PathMatcher | None:
    """The one path matcher of ``node`` under whichever of the three field names is set (Gloo
    Edge: ``prefix``/``exact``/``regex``; Gloo Platform: ``uri.prefix``/...); ``None`` when none is.
    A case-insensitive regex is wrapped in ``(?i:...)``; a prefix or exact path is lower-cased.

    :raises ConfigError: two are set, a prefix/exact path not starting with ``/``, or a bad regex.
    """
    kind = node.one_of(prefix_field, exact_field, regex_field, required=False)
    if kind is None:
        return None
    value = node.str(kind, required=True)
    if kind == regex_field:
        flags_value = value if case_sensitive else f"(?i:{value})"
        return PathMatcher("regex", value, _compile_regex(node, kind, flags_value))
    if not value.startswith("/"):
        raise node.error(kind, "must start with '/'")
    simple = "prefix" if kind == prefix_field else "exact"
    return PathMatcher(simple, value if case_sensitive else value.lower(), case_sensitive=case_sensitive)


def parse_methods(node: Node, field: str) -> frozenset[str]:
    """Upper-cased methods from one method or a list (empty: any method). RFC 9110 §9 methods only.

    :raises ConfigError: not a string or a list of strings, or an unknown method.
    """
    raw = node.raw(field)
    if raw is None:
        return frozenset()
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise node.error(field, "expected a method or a list of methods")
    methods = frozenset(v.upper() for v in values)
    unknown = sorted(methods - HTTP_METHODS)
    if unknown:
        raise node.error(field, f"unknown HTTP method {unknown[0]}")
    return methods


def parse_header_matchers(node: Node, field: str = "headers") -> tuple[HeaderMatcher, ...]:
    """``[{name, value?, regex?, invertMatch?}]`` as Gloo's ``HeaderMatcher``: no value means
    "present"; names are lower-cased (HTTP field names are case-insensitive, RFC 9110 §5.1).

    :raises ConfigError: a missing name, an unknown field, or a bad regex.
    """
    matchers = []
    for item in node.children(field):
        name = item.str("name", required=True).lower()
        value = item.str("value")
        is_regex = item.bool("regex")
        invert = item.bool("invertMatch")
        item.done()
        pattern = _compile_regex(item, "value", value) if is_regex and value is not None else None
        matchers.append(HeaderMatcher(name=name, value=None if pattern else value, regex=pattern, invert=invert))
    return tuple(matchers)
