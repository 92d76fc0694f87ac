"""Traefik Hub's OPA middleware (``spec.plugin.opa``) on the gateway's policy engine.

- ``policy``: Rego source inline, or the path of a ``.rego`` file (v0 or v1, detected per module);
- ``bundlePath``: an OPA bundle (``.tar.gz``) whose ``.rego`` files are loaded; a bundle carrying
  data (``data.json``/``data.yaml``) is refused, since data documents are not loaded here;
- ``allow``: the query that decides (``data.example.policies.allow``); true lets the request
  through, anything else is 403. Without ``allow`` the middleware only forwards headers;
- ``forwardHeaders``: header -> query; a defined value is sent upstream in the one header
  encoding of claims and policies (:func:`gateway_app.header_values.header_text`), an undefined
  one sends nothing; the client's copy is always removed.

The ``input`` document is Traefik's shape (:func:`traefik_input`), built once per request from
the same normalized request that routing, auth and forwarding use.
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
import typing as t

from ..auth.state import AuthState
from ..auth.steps import AuthContext
from ..auth.steps import OpaStep
from ..config.auth_configs import AuthBuildContext
from ..config.fields import Node
from ..errors import ConfigError
from ..errors import PolicyError
from ..header_values import header_text
from ..incoming import IncomingRequest
from ..policy.engine import PolicyEngine
from ..policy.loader import RegoModule
from ..policy.loader import load_module

FIELDS = ("policy", "bundlePath", "allow", "forwardHeaders")
MAX_BUNDLE_BYTES = 8 << 20


def canonical_header_name(name: str) -> str:
    """Go's ``http.CanonicalHeaderKey``: ``x-forwarded-for`` -> ``X-Forwarded-For``."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def traefik_input(request: IncomingRequest, route: t.Any, state: AuthState) -> dict[str, t.Any]:
    """The ``input`` of a Traefik OPA policy::

        {"method": "GET", "host": "api.example.com", "path": "/products/1",
         "query": {"page": ["2"]}, "headers": {"Authorization": "Bearer …", "Accept": "*/*"},
         "remoteAddr": "10.0.0.1"}

    ``path`` is the normalized path (no query); ``headers`` use Go's canonical names (as
    ``input.headers.Authorization`` in Traefik Hub's examples), repeated headers joined by ", ".
    """
    return {
        "method": request.method,
        "host": request.host,
        "path": request.path,
        "query": {name: list(values) for name, values in request.query.items()},
        "headers": {canonical_header_name(name): value for name, value in request.headers.items()},
        "remoteAddr": request.remote_addr,
    }


@dataclasses.dataclass(frozen=True, eq=False)
class TraefikOpaStep(OpaStep):
    """An ``opaAuth``-style step over Traefik's input, with ``forwardHeaders`` queries."""

    header_queries: tuple[tuple[str, str], ...] = ()      # (lower-cased header, query)

    def run(self, ctx: AuthContext) -> None:
        """Evaluate ``allow`` (when set) over Traefik's input, then each ``forwardHeaders`` query;
        a header query that errors or yields nothing sends no header.

        :raises AccessDeniedError: ``allow`` denies; :raises PolicyError: it fails (as :meth:`OpaStep.run`).
        """
        if ctx.policy_input is None:
            ctx.policy_input = traefik_input(ctx.request, ctx.route, ctx.state)
        if self.query:
            super().run(ctx)
        for header, query in self.header_queries:
            try:
                value = self.engine.evaluate(query, ctx.policy_input)
            except PolicyError:
                continue                   # an erroring header query sends nothing; it never allows
            text = header_text(value)
            if text:
                ctx.state.upstream_headers[header] = text

    def managed_headers(self) -> frozenset[str]:
        """The ``forwardHeaders`` names (lower-cased): no client may send them."""
        return frozenset(header for header, _ in self.header_queries)


def opa_step(node: Node, name: str, ctx: AuthBuildContext) -> TraefikOpaStep:
    """``spec.plugin.opa`` -> a policy step. :raises ConfigError: no policy, bad Rego or query."""
    source = node.one_of("policy", "bundlePath")
    modules = _policy_modules(node, name) if source == "policy" else _bundle_modules(node, name)
    allow = node.str("allow") or ""
    headers = node.str_map("forwardHeaders")
    node.done()
    if not allow and not headers:
        raise node.error(None, "needs 'allow' or 'forwardHeaders'")
    key = tuple(m.name for m in modules)
    engine = ctx.engines.get(key)
    if engine is None:
        engine = ctx.engines[key] = PolicyEngine(modules)
    for field, query in [("allow", allow), *((f"forwardHeaders.{h}", q) for h, q in headers.items())]:
        if query:
            _prepare(node, engine, field, query)
    return TraefikOpaStep(index=0, name="opa", engine=engine, query=allow,
                          header_queries=tuple((h.lower(), q) for h, q in headers.items()))


def _prepare(node: Node, engine: PolicyEngine, field: str, query: str) -> None:
    try:
        engine.prepare(query)
    except ConfigError as e:
        raise node.error(field, e.detail) from e


def _policy_modules(node: Node, name: str) -> list[RegoModule]:
    text = node.str("policy", required=True)
    origin = f"{node.where}: {node.field_path('policy')}"
    if "\n" not in text.strip() and text.strip().endswith(".rego"):
        if not os.path.isfile(text.strip()):
            raise node.error("policy", f"file {text.strip()!r} does not exist")
        with open(text.strip(), encoding="utf-8") as handle:
            return [_module(node, "policy", f"{name}/{os.path.basename(text.strip())}", handle.read(), text.strip())]
    return [_module(node, "policy", f"{name}/policy.rego", text, origin)]


def _module(node: Node, field: str, name: str, source: str, origin: str) -> RegoModule:
    try:
        return load_module(name, source, origin)
    except ConfigError as e:
        raise node.error(field, e.detail) from e


def _bundle_modules(node: Node, name: str) -> list[RegoModule]:
    path = node.str("bundlePath", required=True)
    try:
        with tarfile.open(path, "r:*") as bundle:
            members = [m for m in bundle.getmembers() if m.isfile()]
            if sum(m.size for m in members) > MAX_BUNDLE_BYTES:
                raise node.error("bundlePath", f"bundle larger than {MAX_BUNDLE_BYTES} bytes")
            data = [m.name for m in members if os.path.basename(m.name) in ("data.json", "data.yaml")]
            if data:
                raise node.error("bundlePath", f"bundle carries data documents ({', '.join(data)}), which are "
                                               f"not loaded here; put the data in a Rego module")
            modules = []
            for member in sorted((m for m in members if m.name.endswith(".rego")), key=lambda m: m.name):
                handle = bundle.extractfile(member)
                assert handle is not None
                source = handle.read().decode("utf-8")
                modules.append(_module(node, "bundlePath", f"{name}/{member.name}", source, f"{path}:{member.name}"))
    except (OSError, tarfile.TarError, UnicodeDecodeError) as e:
        raise node.error("bundlePath", f"cannot read the bundle {path!r}: {e}") from e
    if not modules:
        raise node.error("bundlePath", "the bundle has no .rego file")
    return modules
