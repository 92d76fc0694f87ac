"""``gateway-app explain``: why does this request get that answer?

One request, typed as a user would (``GET https://api.example.com/pets -H 'Authorization:
Bearer …'``), goes through the *real* stages against the config on disk, without forwarding:
the request parse of :class:`~gateway_app.gateway.Gateway`, the :class:`~gateway_app.routing.Router`,
the route's :class:`~gateway_app.auth.pipeline.AuthPipeline` (real IdP and JWKS calls included),
the header transforms, the credential stripping and the :class:`~gateway_app.proxy.Forwarder`'s
outgoing headers and URL. No stage is re-implemented here: this module only runs them in
:meth:`Gateway.handle`'s order and records what each one did.

Each stage is reported: the route that matched and why each earlier route did not; where the
token came from; the validation result (claims, cache hits and misses, IdP calls); the policy
input and decision with its reason; the headers that would be set and removed; the upstream
URL. Credentials never appear: the report goes through the one redactor of request data,
:func:`~gateway_app.observability.redact_input`, with the tokens found as its secrets.
"""

from __future__ import annotations

import dataclasses
import json
import typing as t
import urllib.parse

from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from .auth.state import AuthState
from .auth.steps import AuthContext
from .errors import GatewayError
from .gateway import Gateway
from .gateway import prepare_upstream
from .metrics import REGISTRY
from .observability import redact
from .observability import redact_input
from .observability import request_id
from .request_body import client_body
from .routing import Matcher
from .routing import Route

if t.TYPE_CHECKING:
    from .incoming import IncomingRequest

_COUNTERS = {"cache_hits": "gateway_token_cache_hits", "cache_misses": "gateway_token_cache_misses",
             "idp_calls": "gateway_idp_requests"}


@dataclasses.dataclass
class Explanation:
    """What the gateway would do with one request: ``stages`` in order, the final ``status``
    (``None`` when the request would be forwarded) and ``reason``."""

    stages: list[dict[str, t.Any]] = dataclasses.field(default_factory=list)
    status: int | None = None
    reason: str | None = None
    secrets: set[str] = dataclasses.field(default_factory=set)   # values to redact in the output

    def add(self, stage: str, **facts: t.Any) -> None:
        """Record what ``stage`` did: JSON-ready ``facts`` (redacted by :meth:`to_dict`)."""
        self.stages.append({"stage": stage, **facts})

    def stop(self, error: GatewayError) -> None:
        """The request would be answered with ``error``'s status and reason, without forwarding."""
        self.status, self.reason = error.status_code, error.reason

    def to_dict(self) -> dict[str, t.Any]:
        """JSON-ready, every credential redacted."""
        verdict = {"forwarded": self.status is None, "status": self.status, "reason": self.reason}
        return redact_input({"stages": self.stages, "result": verdict}, secrets=self.secrets)


def build_request(method: str, url: str, headers: t.Sequence[tuple[str, str]] = (),
                  body: bytes | None = None) -> Request:
    """A WSGI request as a client would send ``method url`` with ``headers`` and ``body``
    (from 127.0.0.1; the request target is kept raw, as gunicorn's ``RAW_URI``).

    :raises ValueError: ``url`` is not an absolute http(s) URL.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s) URL such as http://localhost:8080/path, got {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    builder = EnvironBuilder(method=method.upper(), base_url=f"{parts.scheme}://{parts.netloc}",
                             path=parts.path or "/", query_string=parts.query, headers=list(headers),
                             data=body)
    environ = builder.get_environ()
    environ["RAW_URI"] = target
    environ["REMOTE_ADDR"] = "127.0.0.1"
    return Request(environ)


def explain(gateway: Gateway, request: Request) -> Explanation:
    """Run ``request`` through ``gateway``'s current config, stage by stage, without forwarding.

    The stages are the gateway's own public ones, in :meth:`Gateway.handle`'s order; an error
    any of them raises ends the explanation with its status and reason (never raised).
    """
    result = Explanation()
    config = gateway.config
    try:
        incoming = gateway.parse(request.environ, request_id(None, trust=False))
        result.add("request", method=incoming.method, scheme=incoming.scheme, host=incoming.host,
                   path=incoming.path, query=incoming.query_string, headers=dict(incoming.headers),
                   generation=config.generation)
        route = _route(config.router, incoming, result)
        client_body(request.environ, incoming, route.max_body_bytes)
        state = _authorize(incoming, route, result)
        _forwarding(gateway, incoming, route, state, result)
    except GatewayError as e:
        result.stop(e)
    return result


def _route(router: t.Any, incoming: IncomingRequest, result: Explanation) -> Route:
    vhost = router.virtual_host_for(incoming.hostname)
    if vhost is None:
        domains = sorted(d for v in router.virtual_hosts for d in v.domains)
        result.add("route", matched=None, why=f"no virtual host serves host {incoming.hostname!r}",
                   domains=domains)
    tried = []
    for route in vhost.routes if vhost is not None else ():
        if route.matches(incoming):
            result.add("route", virtual_host=vhost.name, matched=route.name, source=route.source,
                       matchers=[m.describe() for m in route.matchers], not_matched=tried,
                       auth=route.auth.summary if route.auth else None)
            return route
        tried.append({"route": route.name, "why": _why_not(route, incoming)})
    if vhost is not None:
        result.add("route", virtual_host=vhost.name, matched=None, not_matched=tried)
    return router.match(incoming).route          # raises the gateway's own RouteNotFoundError


def _why_not(route: Route, incoming: IncomingRequest) -> str:
    return "; ".join(_matcher_miss(matcher, incoming) for matcher in route.matchers) or "no matchers"


def _matcher_miss(matcher: Matcher, incoming: IncomingRequest) -> str:
    """The first condition of ``matcher`` the request fails, in the order the matcher checks them."""
    if matcher.methods and incoming.method not in matcher.methods:
        return f"method {incoming.method} not in {','.join(sorted(matcher.methods))}"
    for path in matcher.paths:
        if not path.matches(incoming.path):
            return f"path {incoming.path} does not match {path.describe()}"
    for header in matcher.headers:
        if not header.matches(incoming.headers):
            return f"header {header.name} does not match"
    return "matches"                                   # unreachable for a route that did not match


def _authorize(incoming: IncomingRequest, route: Route, result: Explanation) -> AuthState:
    """The route's AuthPipeline, as :meth:`Gateway.handle` runs it (outcomes never remembered)."""
    state = AuthState()
    if route.auth is None:
        result.add("auth", auth_config=None, decision="allowed", why="the route has no auth config")
    else:
        _token(route, incoming, result)
        ctx = AuthContext(incoming, route, state, remember=False)
        before = _counters()
        error: GatewayError | None = None
        try:
            route.auth.run(ctx)
        except GatewayError as e:
            error = e
        after = _counters()
        result.add("validation", subject=state.subject,
                   token_source=state.token_location[0] if state.token_location else None,
                   jwt_claims=state.jwt_access_token, introspection_claims=state.introspection,
                   metadata=state.metadata, **{name: int(after[name] - before[name]) for name in _COUNTERS})
        if ctx.policy_input is not None or ctx.query is not None:
            result.add("policy", query=ctx.query, input=ctx.policy_input)
        result.add("decision", auth_config=route.auth.name, allowed=error is None,
                   status=error.status_code if error else None,
                   reason=error.reason if error else (state.reason or "allowed"),
                   message=str(error) if error else None)
        if error is not None:
            raise error
    return state


def _token(route: Route, incoming: IncomingRequest, result: Explanation) -> None:
    assert route.auth is not None
    found = []
    for source in route.auth.token_sources:
        token = source.extract(incoming)
        if token is not None:
            found.append({"location": list(token.location), "token": redact(token.value)})
            result.secrets.add(token.value)
    result.add("token", found=found or None,
               looked_in=[list(loc) for s in route.auth.token_sources for loc in s.locations(incoming)])


def _forwarding(gateway: Gateway, incoming: IncomingRequest, route: Route, state: AuthState,
                result: Explanation) -> None:
    """The transform stage and the forwarder's outgoing URL and headers, for the first target
    (the round robin is not advanced)."""
    upstream = prepare_upstream(incoming, route, state)
    target = route.targets[0]
    request_target, headers = gateway.forwarder.outgoing(upstream.request, target, path=upstream.path,
                                                         add_headers=upstream.add_headers,
                                                         remove_headers=upstream.remove_headers)
    result.add("upstream", upstream=target.name, url=target.origin + request_target,
               round_robin_over=len(route.targets),
               headers_set=dict(upstream.add_headers), headers_removed=sorted(upstream.remove_headers),
               headers_sent={k: v for k, v in headers.items() if isinstance(v, str)})


def _counters() -> dict[str, float]:
    """Totals of the token cache and IdP call counters (this process's registry)."""
    totals = dict.fromkeys(_COUNTERS, 0.0)
    wanted = {f"{metric}_total": name for name, metric in _COUNTERS.items()}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name in wanted:
                totals[wanted[sample.name]] += sample.value
    return totals


def _text(value: t.Any) -> str:
    """Strings as they are; other values as JSON, on one line when short."""
    if isinstance(value, str):
        return value
    short = json.dumps(value, ensure_ascii=False, default=str)
    if len(short) <= 100:
        return short
    return json.dumps(value, ensure_ascii=False, indent=2, default=str).replace("\n", "\n    ")


def render_text(explanation: Explanation) -> str:
    """The explanation for a terminal: one block per stage, ``key: value`` lines."""
    data = explanation.to_dict()
    lines = []
    for stage in data["stages"]:
        lines.append(f"== {stage['stage']}")
        for key, value in stage.items():
            if key != "stage" and value not in (None, {}, []):
                lines.append(f"  {key}: " + _text(value))
    verdict = data["result"]
    lines.append("== result")
    lines.append("  forwarded to the upstream" if verdict["forwarded"]
                 else f"  answered {verdict['status']} ({verdict['reason']}) without calling the upstream")
    return "\n".join(lines)
