"""Traefik Middlewares that only change the request sent upstream: ``headers``
(``customRequestHeaders``), ``stripPrefix``, ``addPrefix``, ``replacePath`` and
``replacePathRegex``.

Headers become the route's :class:`HeaderTransforms` (an empty value removes the header, as in
Traefik: every header a route sets is first removed from the client's request). Path changes
apply, in the route's middleware order, to the path sent upstream only: rules, auth and
policies see the request's normalized path. The rewritten path must already be in normal form
(:func:`gateway_app.routing.checked_rewrite`, the rule Gloo rewrites follow), else 400
``rewrite_invalid``: a rewrite cannot smuggle ``..``, ``//`` or ``%2F`` to the upstream.
"""

from __future__ import annotations

import dataclasses
import re
import typing as t

from ..config.fields import Node
from ..routing import checked_rewrite
from ..transform import HeaderTemplate
from ..transform import compile_template

PathStep = t.Callable[[str], str]
_GO_GROUP = re.compile(r"\$(?:\{(\w+)\}|(\d+))")


@dataclasses.dataclass(frozen=True)
class PathChanges:
    """The path steps of a route's middlewares, in order; ``apply`` as a route's ``path_rewrite``."""

    steps: tuple[PathStep, ...]
    replacement: str                 # what ``routes`` shows: "stripPrefix /api, addPrefix /v1"

    def apply(self, path: str) -> str:
        """:raises BadRequestError: ``rewrite_invalid``, the rewritten path is not in normal form."""
        for step in self.steps:
            path = step(path)
        return checked_rewrite(path)


def parse_headers(node: Node) -> tuple[HeaderTemplate, ...]:
    """``headers.customRequestHeaders``: name -> value; "" removes the header."""
    values = node.str_map("customRequestHeaders")
    node.done()
    if not values:
        raise node.error("customRequestHeaders", "is required (other headers options are not supported)")
    templates = []
    for name, value in values.items():
        if "{{" in value or "}}" in value:
            raise node.error(f"customRequestHeaders.{name}", "is a literal value; templates are not supported")
        templates.append(HeaderTemplate(name=name.lower(), parts=compile_template(value, node.where)))
    return tuple(templates)


def parse_strip_prefix(node: Node) -> tuple[PathStep, str]:
    """``stripPrefix.prefixes``: remove the first prefix the path starts with ("" becomes "/").

    A prefix is stripped only on a segment boundary (the path is the prefix, or continues with
    ``/`` after it). Traefik strips characters: with ``PathPrefix(`/api`)`` and
    ``stripPrefix: /api``, ``/apiadmin`` would reach the upstream as ``/admin``, a path another,
    protected route guards, although the route that matched and was authorized is the open
    ``/api`` one. Here ``/apiadmin`` goes upstream as ``/apiadmin`` (what was authorized).
    """
    prefixes = tuple(node.str_list("prefixes", required=True))
    node.raw("forceSlash")                      # deprecated in Traefik; the result always starts with "/"
    node.done()
    for index, prefix in enumerate(prefixes):
        if not prefix.startswith("/"):
            raise node.error(f"prefixes[{index}]", "must start with '/'")

    def strip(path: str) -> str:
        for prefix in prefixes:
            if path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/"):
                rest = path[len(prefix):]
                return rest if rest.startswith("/") else "/" + rest
        return path
    return strip, f"stripPrefix {','.join(prefixes)}"


def parse_add_prefix(node: Node) -> tuple[PathStep, str]:
    prefix = node.str("prefix", required=True)
    node.done()
    if not prefix.startswith("/"):
        raise node.error("prefix", "must start with '/'")
    return (lambda path: prefix.rstrip("/") + path), f"addPrefix {prefix}"


def parse_replace_path(node: Node) -> tuple[PathStep, str]:
    replacement = node.str("path", required=True)
    node.done()
    if not replacement.startswith("/"):
        raise node.error("path", "must start with '/'")
    return (lambda path: replacement), f"replacePath {replacement}"


def parse_replace_path_regex(node: Node) -> tuple[PathStep, str]:
    """``regex`` searched in the path, every match replaced; ``$1``/``${name}`` as in Go."""
    text = node.str("regex", required=True)
    replacement = node.str("replacement", required=True)
    node.done()
    try:
        pattern = re.compile(text)
    except re.error as e:
        raise node.error("regex", f"bad regexp {text!r}: {e}") from e
    python_replacement = _GO_GROUP.sub(lambda m: f"\\g<{m.group(1) or m.group(2)}>",
                                       replacement.replace("\\", "\\\\"))
    try:
        pattern.sub(python_replacement, "")        # a group the regex does not have is an error now
    except (re.error, IndexError) as e:
        raise node.error("replacement", f"bad replacement {replacement!r}: {e}") from e
    return (lambda path: pattern.sub(python_replacement, path)), f"replacePathRegex {text} -> {replacement}"


PATH_KINDS: dict[str, t.Callable[[Node], tuple[PathStep, str]]] = {
    "stripPrefix": parse_strip_prefix,
    "addPrefix": parse_add_prefix,
    "replacePath": parse_replace_path,
    "replacePathRegex": parse_replace_path_regex,
}
