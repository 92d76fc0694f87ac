"""The request pipeline: parse, match, authorize, forward (the README's diagram).

:class:`Gateway` owns the current :class:`GatewayConfig` (swapped whole on reload), the
forwarder and the validator registry, and sequences the stages in :meth:`Gateway.handle`,
the only place that does. Each stage is its own function, which ``gateway-app explain``
runs too: :meth:`Gateway.parse`, :meth:`gateway_app.routing.Router.match` (route and
upstream target), :func:`gateway_app.request_body.client_body`, the route's
:class:`~gateway_app.auth.pipeline.AuthPipeline`, :func:`prepare_upstream` and
:meth:`gateway_app.proxy.Forwarder.forward`. Nothing here parses config or opens sessions
per request.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import typing as t
from functools import partial

from flask import Request
from flask import Response

from .auth.idp_http import on_behalf_of
from .auth.pipeline import AuthPipeline
from .auth.state import AuthState
from .auth.steps import AuthContext
from .auth.tokens import strip_cookie
from .auth.tokens import strip_query_parameter
from .auth.registry import ValidatorRegistry
from .cache import hash_key
from .config.build import BuildResult
from .config.build import GatewayConfig
from .config.build import build_config
from .config.build import reload_record
from .config.build import load_config
from .errors import GatewayError
from .errors import render_error
from .incoming import IncomingRequest
from .incoming import TrustedProxies
from .incoming import from_environ
from .incoming import sent_path
from .metrics import REQUEST_METRICS
from .metrics import observe_generation
from .metrics import observe_reload
from .observability import log_access
from .observability import log_rejections
from .observability import redact_input
from .observability import request_id
from .policy.engine import release_thread_engines
from .proxy import Forwarder
from .fingerprint import Fingerprint
from .fingerprint import tree_fingerprint
from .request_body import client_body
from .routing import Route
from .settings import Settings
from .preflight import PREFLIGHT
from .preflight import PREFLIGHT_AUTHENTICATED
from .preflight import PREFLIGHT_PASSED
from .preflight import PREFLIGHT_PRINCIPAL
from .preflight import PREFLIGHT_UNFINISHED
from .overload import peer_key
from .usage_plans import UsagePlanEnforcer
from .usage_plans import build_limiter

log = logging.getLogger("gateway_app.gateway")

REQUEST_ID_KEY = "gateway.request_id"      # where the request id lives in the WSGI environ
PRINCIPAL_KEY_CHARS = 16                   # of the subject's SHA-256: the worker's key for its body share


class Gateway:
    """The gateway of one worker: its settings, the served config generation and the stages.

    :raises ConfigError: the first config cannot be loaded (see :func:`load_config`).
    """

    def __init__(self, settings: Settings, forwarder: Forwarder | None = None,
                 clock: t.Callable[[], float] | None = None) -> None:
        self.settings = settings
        self.registry = ValidatorRegistry(settings.token_cache_url, clock=clock)   # clock: epoch seconds
        self.trusted_proxies = TrustedProxies(settings.trusted_proxies)
        # The body limit has one home: each route's max_body_bytes, set when the config is built.
        self.forwarder = forwarder or Forwarder()
        self._body_limit = settings.max_body_bytes or None     # GATEWAY_MAX_BODY_BYTES=0: no limit
        self.usage_plans = UsagePlanEnforcer(build_limiter(settings), self.trusted_proxies.client_address)
        self._lock = threading.Lock()
        # Taken BEFORE the first load (which may wait for a remote JWKS): a file written while this
        # worker boots differs from the snapshot, so the watcher's first check reloads it.
        self.loaded_fingerprint = tree_fingerprint(settings.config_dir, settings.rego_dir)
        self.config: GatewayConfig = self._first_config()
        self.last_reload: dict[str, t.Any] | None = None     # the admin view's "last_reload"
        self._largest_body_limit: tuple[GatewayConfig, int | None] | None = None

    # -- config ------------------------------------------------------------------
    def _first_config(self) -> GatewayConfig:
        try:
            config = load_config(self.settings.config_dir, self.settings.rego_dir, self.registry, 1,
                                 self._body_limit)
        finally:
            release_thread_engines()       # the engines built to check policies, on this thread
        _warm_up(config)
        observe_generation(config.generation)
        return config

    def reload(self, fingerprint: Fingerprint | None = None) -> BuildResult:
        """Build a new generation; swap it in only if every resource is accepted.

        The generation number is the current one plus one: a rejected reload consumes none.
        ``fingerprint`` is the snapshot of the files taken before they were read; it becomes
        :attr:`loaded_fingerprint` (also when rejected: the watcher waits for the next change).
        """
        with self._lock:
            if fingerprint is None:
                fingerprint = tree_fingerprint(self.settings.config_dir, self.settings.rego_dir)
            self.loaded_fingerprint = fingerprint
            try:
                result = build_config(self.settings.config_dir, self.settings.rego_dir, self.registry,
                                      self.config.generation + 1, self._body_limit)
            finally:
                release_thread_engines()   # the building thread (the watcher) serves no requests
            self.last_reload = reload_record(result)
            if result.config is None:
                log_rejections(log, (status.record() for status in result.errors), "config reload rejected")
                observe_reload(accepted=False)
                return result
            _warm_up(result.config)        # new remote JWKS: fetched before they serve (or retried)
            self.config = result.config
            observe_reload(accepted=True, generation=result.config.generation)
            log.info("config generation %d loaded", result.config.generation)
            return result

    def ready(self) -> bool:
        """Whether every route can be served: each remote JWKS was fetched at least once."""
        return not self.waiting_for()

    def waiting_for(self) -> list[str]:
        """What readiness waits for, one line per auth config and key source, without URLs:
        ``"jwks: gloo-system/oauth-okta not fetched: JWKS fetch answered HTTP 503"``."""
        waiting: list[str] = []
        for auth_name, validator in _validators_by_auth_config(self.config):
            reason = getattr(validator, "not_ready_reason", lambda: None)()
            if reason:
                waiting.append(f"jwks: {auth_name} {reason}")
        return waiting

    # -- requests ----------------------------------------------------------------
    def respond(self, request: Request) -> Response:
        """:meth:`handle`, with every error rendered (:func:`render_error`, the request id in the
        body): the WSGI entry for routed traffic. Never raises: a bug is logged once with its
        traceback and answered 500."""
        try:
            return self.handle(request)
        except GatewayError as e:
            return render_error(e, request.environ.get(REQUEST_ID_KEY))
        except Exception:  # a bug: one traceback in the log, a 500 to the client
            log.exception("unhandled error while serving %s", request.environ.get("PATH_INFO", "?"))
            return render_error(GatewayError(), request.environ.get(REQUEST_ID_KEY))

    def handle(self, request: Request) -> Response:
        """The README's diagram: parse, match, authorize, forward; one access record per request.

        Each stage is one call: :meth:`parse` (:func:`gateway_app.incoming.from_environ`), the
        router's match (the route and its upstream target), :func:`client_body` (framing and
        the route's body limit), the route's auth pipeline, the usage plan, then
        :func:`prepare_upstream` (header transforms, credential removal) and the forwarder.
        Auth runs :func:`~gateway_app.auth.idp_http.on_behalf_of` the client's address (the
        trusted proxies' view, an IPv6 address's /64 as :func:`~gateway_app.overload.peer_key`
        groups it), so clients share each IdP endpoint's call slots fairly.

        With ``environ[PREFLIGHT]`` (the worker asks before it reads a body,
        :mod:`gateway_app.worker`), it stops after auth: a refusal is the request's answer and is
        logged as such (a usage plan known to be spent is one: 429, counting nothing); a request
        that would go on is marked ``PREFLIGHT_PASSED`` (with a
        validated token: ``PREFLIGHT_AUTHENTICATED``, its body outranks anonymous ones, and
        ``PREFLIGHT_PRINCIPAL``, a hash of its subject, by which its body's share is counted) and answered
        204 with no access record, no metrics and no usage plan counted (the request comes back
        whole, and is served and recorded then; ``PREFLIGHT_UNFINISHED`` records it if the worker
        ends it first).

        :raises GatewayError: the answer is an error (rendered by :mod:`gateway_app.errors`).
        """
        started = time.perf_counter()
        config = self.config                   # in-flight requests keep the generation they started with
        environ = request.environ
        rid = request_id(environ.get("HTTP_X_REQUEST_ID"), self.settings.trust_request_id)
        environ[REQUEST_ID_KEY] = rid
        route: Route | None = None
        incoming: IncomingRequest | None = None
        ctx: AuthContext | None = None
        state = AuthState()
        decision: dict[str, t.Any] = {}
        status = 500
        failure: str | None = None             # the error's reason, for a request that auth let through
        passed = False
        try:
            incoming = self.parse(environ, rid)
            match = config.router.match(incoming)
            route = match.route
            body = client_body(environ, incoming, route.max_body_bytes)
            if route.auth is not None:
                # The debug route logs its policy input, so its outcomes are never remembered.
                ctx = AuthContext(incoming, route, state, remember=self.settings.debug_route != route.name)
                with on_behalf_of(peer_key(self.trusted_proxies.client_address(incoming))):   # IdP slots, fairly
                    self._authorize(ctx, route.auth, decision)
            if environ.get(PREFLIGHT):
                self.usage_plans.check(incoming, route, state, config.usage_plans, decision)
                passed = True
                environ[PREFLIGHT] = PREFLIGHT_AUTHENTICATED if state.authenticated else PREFLIGHT_PASSED
                if state.authenticated and state.subject:
                    environ[PREFLIGHT_PRINCIPAL] = hash_key("subject", state.subject)[:PRINCIPAL_KEY_CHARS]
                if decision:
                    decision["generation"] = config.generation
                environ[PREFLIGHT_UNFINISHED] = partial(self._record, started, request.method, incoming, route,
                                                        state, rid, decision)
                return Response(status=204)
            limit_headers = self.usage_plans.admit(incoming, route, state, config.usage_plans, decision)
            upstream = prepare_upstream(incoming, route, state)
            forwarding = time.perf_counter()
            response = self.forwarder.forward(upstream.request, body, match.target, path=upstream.path,
                                              add_headers=upstream.add_headers,
                                              remove_headers=upstream.remove_headers)
            response.headers.update(limit_headers)
            REQUEST_METRICS.observe_upstream(route.name, time.perf_counter() - forwarding)
            status = response.status_code
            return response
        except GatewayError as e:
            status, failure = e.status_code, e.reason
            if state.outcome == "none" and route is not None and route.auth is not None:
                state.refuse(e)                # refused by auth, or before it (413): the one place
            raise
        finally:
            if not passed:                     # a passed preflight is recorded when the request comes back
                if ctx is not None:
                    self._debug(ctx)
                if decision:
                    decision["generation"] = config.generation
                self._record(started, request.method, incoming, route, state, rid, decision, status,
                             state.reason or failure, environ=environ)

    @staticmethod
    def _record(started: float, method: str, incoming: IncomingRequest | None, route: Route | None,
                state: AuthState, rid: str, decision: dict[str, t.Any], status: int, reason: str | None, *,
                environ: t.Mapping[str, t.Any] | None = None) -> None:
        """The request's one access record and its metrics. ``started``: its ``time.perf_counter()``;
        ``environ``: for the host and path as sent, when it was refused before it was parsed.
        A request whose head passed (``PREFLIGHT_UNFINISHED``) is recorded here by the worker when
        it ends the request itself before the body is whole."""
        elapsed = time.perf_counter() - started
        route_name = route.name if route else None
        REQUEST_METRICS.observe_request(route_name, status, state.outcome, elapsed)
        environ = environ or {}
        log_access(method=method, host=incoming.host if incoming else environ.get("HTTP_HOST"),
                   path=incoming.path if incoming else sent_path(environ),
                   route=route_name, status=status, latency_ms=round(elapsed * 1000, 2),
                   auth=state.outcome, reason=reason, sub=state.subject, request_id=rid, **decision)

    def parse(self, environ: t.Mapping[str, t.Any], rid: str = "") -> IncomingRequest:
        """The parse stage: :func:`gateway_app.incoming.from_environ` with this gateway's trusted
        proxies and header-count limit (``GATEWAY_MAX_HEADER_COUNT``).

        :raises BadRequestError: the request is refused (400, reasons in :mod:`gateway_app.incoming`).
        """
        return from_environ(environ, request_id=rid, trusted_proxies=self.trusted_proxies,
                            max_header_count=self.settings.max_header_count)

    def largest_body_limit(self) -> int | None:
        """The largest request body any route of the current config allows (bytes); None when one
        has no limit. What the worker reads of a body before the request takes a thread."""
        config = self.config
        cached = self._largest_body_limit
        if cached is None or cached[0] is not config:
            limits = [route.max_body_bytes for vhost in config.router.virtual_hosts for route in vhost.routes]
            largest = None if not limits or None in limits else max(t.cast(list[int], limits))
            cached = self._largest_body_limit = (config, largest if limits else self._body_limit)
        return cached[1]

    @staticmethod
    def _authorize(ctx: AuthContext, auth: AuthPipeline, decision: dict[str, t.Any]) -> None:
        """The auth stage: run the route's pipeline; its fields join the request's access record.

        :raises GatewayError: the pipeline refuses the request.
        """
        started = time.perf_counter()
        try:
            auth.run(ctx)
        finally:
            decision["api_product"] = ctx.route.api_product_id
            decision["auth_config"] = auth.name
            decision["query"] = ctx.query
            decision["auth_ms"] = round((time.perf_counter() - started) * 1000, 3)
            if ctx.policy_input is not None:          # a policy was evaluated, not remembered
                REQUEST_METRICS.observe_policy(ctx.route.name, ctx.policy_duration)
        ctx.state.outcome = "allowed"

    def _debug(self, ctx: AuthContext) -> None:
        state, route = ctx.state, ctx.route
        if (self.settings.debug_route and self.settings.debug_route == route.name and ctx.policy_input is not None
                and route.auth is not None):
            log.info("debug route %s input=%s outcome=%s reason=%s", route.name,
                     json.dumps(redact_input(ctx.policy_input, route.auth.credential_locations), default=str,
                                sort_keys=True), state.outcome, state.reason)
        if state.metadata and log.isEnabledFor(logging.DEBUG):
            log.debug("dynamic metadata on response: request_id=%s metadata=%s", ctx.request.request_id,
                      state.metadata)


@dataclasses.dataclass(frozen=True)
class UpstreamRequest:
    """What the forwarder sends for an authorized request (:func:`prepare_upstream`).

    ``request`` is the parsed request, its query without removed credentials; ``path`` the
    upstream path in wire form (after the route's rewrite); ``add_headers`` the headers the
    gateway sets (lower-cased name -> value); ``remove_headers`` the client's headers dropped
    first (lower-cased names), so a client cannot forge what the gateway sets.
    """

    request: IncomingRequest
    path: str
    add_headers: t.Mapping[str, str]
    remove_headers: frozenset[str]


def prepare_upstream(incoming: IncomingRequest, route: Route, state: AuthState) -> UpstreamRequest:
    """The transform stage, after auth: render the route's header templates into the headers
    the auth steps set, then remove every credential location the auth stage recorded
    (``removeFromRequest``: header, query parameter or cookie).

    :raises BadRequestError: the route's path rewrite gives a path not in normal form.
    """
    headers = state.upstream_headers          # this request's own dict: rendered into, not copied
    if route.transforms is not None:
        route.transforms.render(incoming, state, headers)
    remove = route.managed_headers
    if state.remove_from_request:
        incoming, remove = _remove_credentials(incoming, state.remove_from_request, remove, headers)
    return UpstreamRequest(incoming, route.upstream_path(incoming.path), headers, remove)


def _remove_credentials(incoming: IncomingRequest, locations: t.Iterable[tuple[str, str]], remove: frozenset[str],
                        add_headers: dict[str, str]) -> tuple[IncomingRequest, frozenset[str]]:
    """``removeFromRequest``: the request without its credential in each ``(kind, name)``
    location, and the headers to remove; a cookie is removed from the ``Cookie`` header, which
    is then sent as ``add_headers["cookie"]`` (or not at all when nothing is left)."""
    removed = set(remove)
    query_string = incoming.query_string
    for kind, name in locations:
        if kind == "header":
            removed.add(name)
        elif kind == "query":
            query_string = strip_query_parameter(query_string, name)
        elif kind == "cookie" and "cookie" in incoming.headers:
            remaining = strip_cookie(add_headers.get("cookie", incoming.headers["cookie"]), name)
            removed.add("cookie")
            if remaining:
                add_headers["cookie"] = remaining
            else:
                add_headers.pop("cookie", None)
    if query_string != incoming.query_string:
        incoming = dataclasses.replace(incoming, query_string=query_string)
    return incoming, frozenset(removed)


def _warm_up(config: GatewayConfig) -> None:
    """Fetch what validators need before serving (remote JWKS); failures retry in the background."""
    for validator in config.validators:
        warm_up = getattr(validator, "warm_up", None)
        if warm_up is not None:
            warm_up()


def _validators_by_auth_config(config: GatewayConfig) -> list[tuple[str, t.Any]]:
    """``(auth config name, validator)`` for every token-validating step of every route, once each."""
    pairs: dict[tuple[str, int], tuple[str, t.Any]] = {}
    for vhost in config.router.virtual_hosts:
        for route in vhost.routes:
            if route.auth is None:
                continue
            for step in route.auth.steps:
                validator = getattr(step, "validator", None)
                if validator is not None:
                    pairs.setdefault((route.auth.name, id(validator)), (route.auth.name, validator))
    return sorted(pairs.values(), key=lambda pair: pair[0])
