"""Traefik Hub's templated ``clientConfig.headers``: Go-template forms over the incoming request,
compiled once by :func:`gateway_app.transform.compile_template` with this dialect.

Traefik Hub renders the values with a variable ``.Request`` (Go's ``*http.Request``). The forms
accepted here, and what they give::

    {{ .Request.Host }}                  the Host header as sent (port included)
    {{ .Request.Method }}                GET, POST, ...
    {{ .Request.URL }}                   the normalized path, then ?query when there is one
    {{ .Request.URL.Path }}              the normalized path
    {{ .Request.URL.RawQuery }}          the raw query string
    {{ .Request.Header.Get "X-Name" }}   a request header ("" when absent)

Anything else (pipelines, functions, other fields, ``{{-`` trimming) is a config error: no Go
template engine runs here, so nothing else could be evaluated safely.
"""

from __future__ import annotations

import re
import typing as t

from ..errors import BadRequestError
from ..errors import ConfigError
from ..incoming import IncomingRequest
from ..transform import Part
from ..transform import compile_template

_HEADER_GET = re.compile(r'^\.Request\.Header\.Get\s+"([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)"$')
_FIELDS: dict[str, t.Callable[[IncomingRequest], str]] = {
    ".Request.Host": lambda request: request.host,
    ".Request.Method": lambda request: request.method,
    ".Request.URL": lambda request: request.path + (f"?{request.query_string}" if request.query_string else ""),
    ".Request.URL.Path": lambda request: request.path,
    ".Request.URL.RawQuery": lambda request: request.query_string,
}
FORMS = (*_FIELDS, '.Request.Header.Get "X-Name"')


def _compile_call(expression: str, where: str) -> Part:
    field = _FIELDS.get(expression)
    if field is not None:
        return lambda request, state: field(request)
    match = _HEADER_GET.match(expression)
    if match:
        name = match.group(1).lower()
        return lambda request, state: request.headers.get(name, "")
    raise ConfigError(f"unsupported template {{{{ {expression} }}}} (supported: "
                      f"{', '.join('{{ ' + f + ' }}' for f in FORMS)})", where=where)


class RequestHeaders:
    """Header values rendered per request: ``render(request) -> {name: value}``."""

    def __init__(self, templates: t.Mapping[str, str], where: str) -> None:
        self._parts = {name: compile_template(text, where, _compile_call) for name, text in templates.items()}

    def render(self, request: IncomingRequest) -> dict[str, str]:
        """:raises BadRequestError: a value that cannot be sent in a header (never from a parsed request)."""
        rendered = {}
        for name, parts in self._parts.items():
            value = "".join(part(request, None) for part in parts)   # type: ignore[arg-type]
            if any(c in value for c in "\r\n\0"):
                raise BadRequestError(f"a header for the IdP ({name}) would hold a line break",
                                      reason="bad_header")
            rendered[name] = value
        return rendered


def is_template(value: str) -> bool:
    return "{{" in value or "}}" in value
