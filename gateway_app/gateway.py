"""The request pipeline: match a route, run its auth, set headers, forward.

:class:`Gateway` owns the current :class:`GatewayConfig` (swapped whole on reload), the
forwarder and the validator registry. Nothing here parses config or opens sessions per
request.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import threading
import time
import typing as t

from flask import Request
from flask import Response

from .auth.state import AuthState
from .auth.steps import AuthContext
from .auth.tokens import strip_cookie
from .auth.tokens import strip_query_parameter
from .config.auth_configs import ValidatorRegistry
from .config.build import BuildResult
from .config.build import GatewayConfig
from .config.build import build_config
from .config.build import reload_record
from .config.build import load_config
from .errors import BadRequestError
from .errors import GatewayError
from .errors import PayloadTooLargeError
from .errors import render_error
from .incoming import IncomingRequest
from .incoming import TrustedProxies
from .incoming import from_environ
from .metrics import REQUEST_METRICS
from .metrics import observe_generation
from .metrics import observe_reload
from .observability import log_access
from .observability import log_rejections
from .observability import redact_input
from .observability import request_id
from .policy.engine import release_thread_engines
from .proxy import Forwarder
from .reload import Fingerprint
from .reload import tree_fingerprint
from .routing import Route
from .worker import limit_declared_body
from .settings import Settings
from .usage_plans import UsagePlanEnforcer
from .usage_plans import build_limiter

log = logging.getLogger("gateway_app.gateway")

REQUEST_ID_KEY = "gateway.request_id"      # where the request id lives in the WSGI environ


class Gateway:
    def __init__(self, settings: Settings, forwarder: Forwarder | None = None) -> None:
        self.settings = settings
        self.registry = ValidatorRegistry(settings.token_cache_url)
        self.trusted_proxies = TrustedProxies(settings.trusted_proxies)
        # The body limit has one home: each route's max_body_bytes, set when the config is built.
        self.forwarder = forwarder or Forwarder()
        self._body_limit = settings.max_body_bytes or None     # GATEWAY_MAX_BODY_BYTES=0: no limit
        self.usage_plans = UsagePlanEnforcer(build_limiter(settings), self.trusted_proxies.client_address)
        self._lock = threading.Lock()
        self._round_robin = itertools.count()
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
        """:meth:`handle`, with every error rendered: the WSGI entry for routed traffic."""
        try:
            return self.handle(request)
        except GatewayError as e:
            return render_error(e, request.environ.get(REQUEST_ID_KEY))
        except Exception:  # a bug: one traceback in the log, a 500 to the client
            log.exception("unhandled error while serving %s", request.environ.get("PATH_INFO", "?"))
            return render_error(GatewayError(), request.environ.get(REQUEST_ID_KEY))

    def handle(self, request: Request) -> Response:
        """Route, authorize, forward; one access record per request.

        :raises GatewayError: the answer is an error (rendered by :mod:`gateway_app.errors`).
        """
        started = time.perf_counter()
        config = self.config                   # in-flight requests keep the generation they started with
        environ = request.environ
        rid = request_id(environ.get("HTTP_X_REQUEST_ID"), self.settings.trust_request_id)
        environ[REQUEST_ID_KEY] = rid
        route: Route | None = None
        incoming: IncomingRequest | None = None
        state = AuthState()
        decision: dict[str, t.Any] = {}
        status = 500
        try:
            incoming = self._incoming(request, rid)
            route = config.router.match(incoming).route
            self._check_body(request, route)
            add_headers = self._authorize(incoming, route, state, decision)
            limit_headers = self.usage_plans.admit(incoming, route, state, config.usage_plans, decision)
            forwarding = time.perf_counter()
            response = self._forward(request, incoming, route, state, add_headers)
            response.headers.update(limit_headers)
            REQUEST_METRICS.observe_upstream(route.name, time.perf_counter() - forwarding)
            status = response.status_code
            return response
        except GatewayError as e:
            status = e.status_code
            if state.outcome == "none" and route is not None and route.auth is not None:
                state.outcome, state.reason = "denied", e.reason
            raise
        finally:
            elapsed = time.perf_counter() - started
            route_name = route.name if route else None
            REQUEST_METRICS.observe_request(route_name, status, state.outcome, elapsed)
            if decision:
                decision["generation"] = config.generation
            log_access(method=request.method, host=incoming.host if incoming else environ.get("HTTP_HOST"),
                       path=incoming.path if incoming else _sent_path(environ),
                       route=route_name, status=status, latency_ms=round(elapsed * 1000, 2),
                       auth=state.outcome, reason=state.reason or None, sub=state.subject, request_id=rid,
                       **decision)

    def _incoming(self, request: Request, rid: str) -> IncomingRequest:
        return from_environ(request.environ, request_id=rid, trusted_proxies=self.trusted_proxies,
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

    def _check_body(self, request: Request, route: Route) -> None:
        limit = route.max_body_bytes          # the route's own, else the global one (config build)
        if limit is not None and request.content_length is not None and request.content_length > limit:
            raise PayloadTooLargeError(f"request body larger than {limit} bytes")
        if limit is not None:
            limit_declared_body(request.environ, limit)    # chunked: 413 when a chunk size says so

    def _authorize(self, incoming: IncomingRequest, route: Route, state: AuthState,
                   decision: dict[str, t.Any]) -> dict[str, str]:
        """Run the route's auth; the decision's fields join the request's access record."""
        if route.auth is None:
            headers: dict[str, str] = {}
        else:
            # The debug route logs its policy input, so its outcomes are never remembered.
            ctx = AuthContext(incoming, route, state, remember=self.settings.debug_route != route.name)
            started = time.perf_counter()
            try:
                route.auth.run(ctx)
                state.outcome = "allowed"
            except GatewayError as e:
                state.outcome, state.reason = ("error" if e.status_code >= 500 else "denied"), e.reason
                raise
            finally:
                decision["api_product"] = route.api_product_id
                decision["auth_config"] = route.auth.name
                decision["query"] = ctx.query
                decision["auth_ms"] = round((time.perf_counter() - started) * 1000, 3)
                if ctx.policy_input is not None:          # a policy was evaluated, not remembered
                    REQUEST_METRICS.observe_policy(route.name, ctx.policy_duration)
                self._debug(ctx, route)
            headers = dict(state.upstream_headers)
        if route.transforms is not None:
            route.transforms.render(incoming, state, headers)
        return headers

    def _debug(self, ctx: AuthContext, route: Route) -> None:
        state = ctx.state
        if (self.settings.debug_route and self.settings.debug_route == route.name and ctx.policy_input is not None
                and route.auth is not None):
            log.info("debug route %s input=%s outcome=%s reason=%s", route.name,
                     json.dumps(redact_input(ctx.policy_input, route.auth.credential_locations), default=str,
                                sort_keys=True), state.outcome, state.reason)
        if state.metadata and log.isEnabledFor(logging.DEBUG):
            log.debug("dynamic metadata on response: request_id=%s metadata=%s", ctx.request.request_id,
                      state.metadata)

    def _forward(self, request: Request, incoming: IncomingRequest, route: Route, state: AuthState,
                 add_headers: dict[str, str]) -> Response:
        remove = set(route.managed_headers)
        if state.token_location is not None and route.auth is not None:
            incoming = self._strip_credential(incoming, route, state, remove, add_headers)
        targets = route.targets
        target = targets[0] if len(targets) == 1 else targets[next(self._round_robin) % len(targets)]
        has_body = request.content_length or "chunked" in incoming.headers.get("transfer-encoding", "").lower()
        body = request.stream if has_body else None
        if body is not None:
            limit = route.max_body_bytes if request.content_length is None else None  # chunked: counted here
            body = _ClientBody(body, limit)
        return self.forwarder.forward(incoming, body, target, path=route.upstream_path(incoming.path),
                                      add_headers=add_headers, remove_headers=remove)

    @staticmethod
    def _strip_credential(incoming: IncomingRequest, route: Route, state: AuthState, remove: set[str],
                          add_headers: dict[str, str]) -> IncomingRequest:
        """``removeFromRequest``: drop the credential from every location its source reads."""
        assert route.auth is not None
        query_string = incoming.query_string
        for source in route.auth.token_sources:
            if not source.remove_from_request:
                continue
            for kind, name in source.locations(incoming):
                if kind == "header":
                    remove.add(name)
                elif kind == "query":
                    query_string = strip_query_parameter(query_string, name)
                elif kind == "cookie" and "cookie" in incoming.headers:
                    remaining = strip_cookie(add_headers.get("cookie", incoming.headers["cookie"]), name)
                    remove.add("cookie")
                    if remaining:
                        add_headers["cookie"] = remaining
                    else:
                        add_headers.pop("cookie", None)
        if query_string == incoming.query_string:
            return incoming
        return dataclasses.replace(incoming, query_string=query_string)


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


class _ClientBody:
    """The client's body stream: read errors become 400, and more than ``limit`` bytes 413;
    a :class:`GatewayError` raised by the server's reader (408 body too slow, 413 declared too
    large: :mod:`gateway_app.worker`) passes as it is.

    The WSGI server raises its own exceptions for a malformed chunked body (gunicorn's
    ``InvalidChunkSize``) or a client that stops mid-body (``NoMoreData``, an OSError that
    would otherwise pass for an upstream failure).
    """

    def __init__(self, stream: t.IO[bytes], limit: int | None) -> None:
        self._stream = stream
        self._left = limit

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._stream.read(size)
        except GatewayError:
            raise                      # the server's own verdict: 408 too slow, 413 declared too large
        except Exception as e:
            raise BadRequestError(f"the request body could not be read ({type(e).__name__})",
                                  reason="body_invalid") from None
        if self._left is not None:
            self._left -= len(data)
            if self._left < 0:
                raise PayloadTooLargeError()
        return data


def _sent_path(environ: t.Mapping[str, t.Any]) -> str | None:
    """The path of the request target as the client sent it (gunicorn's ``RAW_URI``, query dropped:
    it may carry a token), for the access record of a request refused before it was parsed.
    """
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    return raw.partition("?")[0] if raw else environ.get("PATH_INFO")

