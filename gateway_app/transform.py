"""Upstream header transformations (Gloo ``stagedTransformations``), compiled at load time.

A template is literal text with ``{{ ... }}`` calls. Supported calls:

- ``dynamic_metadata("config_0:sub", "envoy.filters.http.ext_authz")`` — the auth
  metadata at that ``:``-separated path (the namespace argument is optional);
- ``header("x-name")`` / ``request_header("x-name")`` — a request header.

Metadata values become header text by :func:`gateway_app.header_values.header_text` (the
encoding of claims everywhere). A template that renders empty sets no header. Every header a transformation sets is
first removed from the client's request, so a client cannot forge it.
"""

from __future__ import annotations

import dataclasses
import re
import typing as t

from .auth.state import AuthState
from .errors import ConfigError
from .header_values import header_text
from .incoming import IncomingRequest

EXT_AUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"
_CALL = re.compile(r"\{\{\s*(.*?)\s*\}\}", re.S)
_FUNCTION = re.compile(r'^(\w+)\(\s*"([^"]*)"\s*(?:,\s*"([^"]*)"\s*)?\)$')

Part = t.Callable[[IncomingRequest, AuthState], str]


def _literal(text: str) -> Part:
    return lambda request, state: text


def _metadata_lookup(path: list[str]) -> Part:
    def lookup(request: IncomingRequest, state: AuthState) -> str:
        value: t.Any = state.metadata
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return ""
            value = value[key]
        return header_text(value) or ""
    return lookup


def _header_lookup(name: str) -> Part:
    lowered = name.lower()
    return lambda request, state: request.headers.get(lowered, "")


def compile_template(text: str, where: str = "template",
                     compile_call: t.Callable[[str, str], Part] | None = None) -> tuple[Part, ...]:
    """Split a template into callables; ``compile_call(expression, where)`` compiles each
    ``{{ expression }}`` (default: the Gloo calls above; Traefik's Go-template forms use another).

    :raises ConfigError: unknown call or bad syntax.
    """
    parts: list[Part] = []
    position = 0
    for call in _CALL.finditer(text):
        if call.start() > position:
            parts.append(_literal(text[position:call.start()]))
        parts.append((compile_call or _compile_call)(call.group(1), where))
        position = call.end()
    tail = text[position:]
    if "{{" in tail or "}}" in tail:
        raise ConfigError(f"unbalanced '{{{{' or '}}}}' in {text!r}", where=where)
    if tail:
        parts.append(_literal(tail))
    return tuple(parts)


def _compile_call(expression: str, where: str) -> Part:
    match = _FUNCTION.match(expression)
    if not match:
        raise ConfigError(f"unsupported template expression {{{{ {expression} }}}}", where=where)
    function, first, second = match.groups()
    if function == "dynamic_metadata":
        if second not in (None, "", EXT_AUTHZ_NAMESPACE):
            raise ConfigError(f"dynamic_metadata namespace must be {EXT_AUTHZ_NAMESPACE!r}, got {second!r}",
                              where=where)
        if not first:
            raise ConfigError("dynamic_metadata needs a key such as \"config_0:sub\"", where=where)
        return _metadata_lookup(first.split(":"))
    if function in ("header", "request_header") and second is None:
        return _header_lookup(first)
    raise ConfigError(f"unsupported template function {function}()", where=where)


@dataclasses.dataclass(frozen=True)
class HeaderTemplate:
    """One header a route sets (Gloo ``requestTransformation.transformationTemplate.headers``,
    ``headersToAppend`` when ``append``): ``name`` lower-cased, ``parts`` from :func:`compile_template`."""

    name: str                    # lower-cased
    parts: tuple[Part, ...]
    append: bool = False

    def render(self, request: IncomingRequest, state: AuthState) -> str:
        """The header's text for this request and auth state (``""``: set no header)."""
        if len(self.parts) == 1:
            return self.parts[0](request, state)
        return "".join(part(request, state) for part in self.parts)


@dataclasses.dataclass(frozen=True)
class HeaderTransforms:
    """The headers a route sets upstream, in order."""

    templates: tuple[HeaderTemplate, ...] = ()

    @property
    def header_names(self) -> frozenset[str]:
        """The (lower-cased) headers set: the client's copies are removed before forwarding."""
        return frozenset(t.name for t in self.templates)

    def render(self, request: IncomingRequest, state: AuthState, into: dict[str, str]) -> None:
        """Set each rendered header in ``into``; a ``headersToAppend`` template (``append``) adds
        its value after the one already set there (``a,b``, one header as Envoy's append sends it)."""
        for template in self.templates:
            value = template.render(request, state)
            if value:
                current = into.get(template.name) if template.append else None
                into[template.name] = f"{current},{value}" if current else value

    def merged_with(self, other: "HeaderTransforms | None") -> "HeaderTransforms":
        """Route-level templates win over virtual-host ones for the same header."""
        if other is None or not other.templates:
            return self
        names = {t.name for t in other.templates}
        return HeaderTransforms(tuple(t for t in self.templates if t.name not in names) + other.templates)
