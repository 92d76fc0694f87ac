"""What the tests build the same way everywhere: config trees, resource snippets, requests, headers.

One home per helper, so a resource's shape or a request's defaults are written once.
"""

from __future__ import annotations

import pathlib
import textwrap
import typing as t

from gateway_app.auth.introspection import IntrospectionSettings
from gateway_app.auth.introspection import parse_introspection_settings
from gateway_app.auth.jwt_validation import JwtSettings
from gateway_app.auth.jwt_validation import parse_jwt_settings
from gateway_app.config.fields import Node
from gateway_app.config.secrets import SecretStore
from gateway_app.incoming import IncomingRequest


def write_tree(root: pathlib.Path, files: t.Mapping[str, str]) -> pathlib.Path:
    """Write ``files`` (relative name -> text, dedented) under ``root``; parents are created.

    :returns: ``root``, to pass on as a config or Rego directory.
    """
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def upstream_yaml(name: str, namespace: str, addr: str = "upstream.test", port: int = 8000) -> str:
    """An ``Upstream`` with one static host (requests-mock answers for ``http://addr:port``)."""
    return f"""
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  static:
    hosts: [{{addr: {addr}, port: {port}}}]
"""


def open_route_yaml(url: str, name: str = "api", namespace: str = "gloo-system") -> str:
    """A ``VirtualService`` for any domain with one route, prefix ``/``, forwarding to ``url``
    (``routeAction.single.url``) with no auth."""
    return f"""
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{{prefix: /}}]
      routeAction: {{single: {{url: '{url}'}}}}
"""


def bearer(token: str, **headers: str) -> dict[str, str]:
    """Request headers carrying ``token`` as an RFC 6750 §2.1 bearer credential, plus ``headers``."""
    return {"Authorization": f"Bearer {token}", **headers}


AUTH_CONFIG_WHERE = "conf/auth.yaml: AuthConfig gloo-system/oauth"
INTROSPECTION_PATH = "spec.configs[0].oauth2.accessTokenValidation.introspection"


def introspection_settings(secrets: SecretStore | None = None, **fields: t.Any) -> IntrospectionSettings:
    """``accessTokenValidation.introspection`` parsed as the config loader does, from YAML-style
    ``fields`` (``introspectionUrl=...``); a field given as None is left out. Secret references
    resolve in ``gloo-system`` against ``secrets`` (none by default).

    :raises ConfigError: as :func:`parse_introspection_settings` does.
    """
    data = {key: value for key, value in fields.items() if value is not None}
    return parse_introspection_settings(Node(data, AUTH_CONFIG_WHERE, INTROSPECTION_PATH),
                                        secrets or SecretStore([]), "gloo-system")


JWT_WHERE = "conf/authconfig.yaml: AuthConfig gloo-system/jwt"
JWT_PATH = "spec.configs[0].oauth2.accessTokenValidation.jwt"


def jwt_settings(fields: t.Mapping[str, t.Any]) -> JwtSettings:
    """``accessTokenValidation.jwt`` parsed as the config loader does, from a YAML-style mapping
    (``{"localJwks": {"inlineString": ...}}``).

    :raises ConfigError: as :func:`parse_jwt_settings` does.
    """
    return parse_jwt_settings(Node(dict(fields), JWT_WHERE, JWT_PATH))


def incoming_request(path: str = "/", *, method: str = "GET", host: str = "api.example.com",
                     headers: t.Mapping[str, str] | None = None, send_host: bool = True,
                     cookies: t.Mapping[str, str | t.Sequence[str]] | None = None,
                     **fields: t.Any) -> IncomingRequest:
    """An :class:`IncomingRequest` shaped as :func:`gateway_app.incoming.from_environ` builds one:
    header names lower-cased, a ``host`` header equal to ``host`` unless ``headers`` has one or
    ``send_host`` is false, each cookie's values a tuple. ``fields`` sets the other fields;
    ``scheme`` defaults to ``http`` and ``query_string`` to empty.
    """
    lowered = {name.lower(): value for name, value in (headers or {}).items()}
    if send_host:
        lowered.setdefault("host", host)
    fields.setdefault("scheme", "http")
    fields.setdefault("query_string", "")
    return IncomingRequest(method=method, host=host, path=path, headers=lowered,
                           cookies={name: (value,) if isinstance(value, str) else tuple(value)
                                    for name, value in (cookies or {}).items()}, **fields)
