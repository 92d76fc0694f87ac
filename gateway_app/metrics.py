"""Prometheus metrics: what the gateway counts, and the text exposition of ``/__gateway/metrics``.

Two modes, chosen by ``prometheus_client`` when it is first imported:

* **multi-process** (under gunicorn): ``PROMETHEUS_MULTIPROC_DIR`` names a directory where
  every worker writes its values to memory-mapped files; a scrape of any worker aggregates
  all of them. ``conf/gunicorn.conf.py`` creates and cleans the directory and marks dead
  workers.
* **single-process** (tests, ``flask run``): the values live in :data:`REGISTRY`.

Labels never hold tokens, subjects or raw paths: routes are named by their config name,
IdPs by the ``host:port`` of their configured URL, errors by a fixed reason code.

Per-request cost is kept to a dict lookup plus the increments: label children are bound
once per (route, status, outcome) and once per IdP, because ``labels()`` costs microseconds.
"""

from __future__ import annotations

import os
import threading
import typing as t
import urllib.parse

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram
from prometheus_client import generate_latest
from prometheus_client import multiprocess
from prometheus_client import values

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _ProcessId:
    """This process's pid, refreshed in every forked child.

    prometheus_client calls its process identifier on every increment to notice forks; the
    default, ``os.getpid``, is a system call each time (several per request).
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        os.register_at_fork(after_in_child=self._refresh)

    def _refresh(self) -> None:
        self.pid = os.getpid()

    def __call__(self) -> int:
        return self.pid


if os.environ.get(MULTIPROC_ENV):      # before any metric below creates its values
    values.ValueClass = values.MultiProcessValue(process_identifier=_ProcessId())
NO_ROUTE = "(none)"

# Latencies of the whole request and of the upstream: 1 ms .. 30 s.
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# IdP calls: 1 ms .. 10 s (timeouts default to 5 s).
_IDP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Policy evaluation is micro- to milliseconds.
_POLICY_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter("gateway_requests", "Requests handled, by route, status and auth outcome",
                   ["route", "status", "auth"], registry=REGISTRY)
REQUEST_SECONDS = Histogram("gateway_request_duration_seconds", "Time to the response headers, by route",
                            ["route"], buckets=_REQUEST_BUCKETS, registry=REGISTRY)
UPSTREAM_SECONDS = Histogram("gateway_upstream_duration_seconds",
                             "Time from sending upstream to its response headers, by route",
                             ["route"], buckets=_REQUEST_BUCKETS, registry=REGISTRY)
POLICY_SECONDS = Histogram("gateway_policy_evaluation_duration_seconds", "Rego evaluation time, by route",
                           ["route"], buckets=_POLICY_BUCKETS, registry=REGISTRY)
IDP_REQUESTS = Counter("gateway_idp_requests", "HTTP requests to an IdP (introspection attempts, JWKS fetches)",
                       ["idp", "kind"], registry=REGISTRY)
IDP_SECONDS = Histogram("gateway_idp_request_duration_seconds", "Duration of IdP requests",
                        ["idp", "kind"], buckets=_IDP_BUCKETS, registry=REGISTRY)
IDP_ERRORS = Counter("gateway_idp_errors", "Failed IdP requests, by reason",
                     ["idp", "kind", "reason"], registry=REGISTRY)
# Every reason each kind of IdP call can fail with: exported at 0 from the first scrape.
IDP_ERROR_REASONS = {
    "introspection": ("timeout", "connection", "tls", "status_4xx", "status_5xx", "bad_answer", "request_failed"),
    "jwks": ("jwks_fetch_failed",),
}
TOKEN_CACHE_HITS = Counter("gateway_token_cache_hits", "Introspection answers served from the cache",
                           ["idp"], registry=REGISTRY)
TOKEN_CACHE_MISSES = Counter("gateway_token_cache_misses", "Introspection lookups that missed the cache",
                             ["idp"], registry=REGISTRY)
JWKS_REFRESHES = Counter("gateway_jwks_refreshes", "JWKS fetches, by result (ok or failed)",
                         ["idp", "result"], registry=REGISTRY)
STALE_SERVED = Counter("gateway_stale_if_error_served", "Token answers served stale while the IdP was unavailable",
                       registry=REGISTRY)
USAGE_PLAN_REQUESTS = Counter("gateway_usage_plan_requests",
                              "Requests counted against a usage plan, by plan and outcome "
                              "(allowed, limited, unavailable)", ["plan", "outcome"], registry=REGISTRY)
CONFIG_RELOADS = Counter("gateway_config_reloads", "Config reloads, by result (accepted or rejected)",
                         ["result"], registry=REGISTRY)
CONFIG_GENERATION = Gauge("gateway_config_generation", "The config generation a worker serves",
                          registry=REGISTRY, multiprocess_mode="liveall")


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus text format, and its content type."""
    if multiprocess_mode():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def idp_label(url: str) -> str:
    """``host:port`` of an IdP URL: identifies the IdP without paths or query strings."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "unknown"
    return f"{host}:{parts.port}" if parts.port else host


class _RequestChildren(t.NamedTuple):
    count: t.Any
    seconds: t.Any


class RequestMetrics:
    """Per-request observations, with label children bound once per label combination."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, int, str], _RequestChildren] = {}
        self._upstream: dict[str, t.Any] = {}
        self._policy: dict[str, t.Any] = {}
        self._lock = threading.Lock()

    def observe_request(self, route: str | None, status: int, outcome: str, seconds: float) -> None:
        key = (route or NO_ROUTE, status, outcome)
        children = self._requests.get(key)
        if children is None:
            children = self._bind_request(key)
        children.count.inc()
        children.seconds.observe(seconds)

    def observe_upstream(self, route: str, seconds: float) -> None:
        child = self._upstream.get(route) or self._bind(self._upstream, UPSTREAM_SECONDS, route)
        child.observe(seconds)

    def observe_policy(self, route: str, seconds: float) -> None:
        child = self._policy.get(route) or self._bind(self._policy, POLICY_SECONDS, route)
        child.observe(seconds)

    def _bind_request(self, key: tuple[str, int, str]) -> _RequestChildren:
        route, status, outcome = key
        with self._lock:
            children = _RequestChildren(REQUESTS.labels(route=route, status=str(status), auth=outcome),
                                        REQUEST_SECONDS.labels(route=route))
            return self._requests.setdefault(key, children)

    def _bind(self, children: dict[str, t.Any], histogram: Histogram, route: str) -> t.Any:
        with self._lock:
            return children.setdefault(route, histogram.labels(route=route))


class IdpMetrics:
    """The metrics of one IdP endpoint (``kind`` is ``introspection`` or ``jwks``), bound once."""

    def __init__(self, url: str, kind: str) -> None:
        self.idp = idp_label(url)
        self.kind = kind
        self._requests = IDP_REQUESTS.labels(idp=self.idp, kind=kind)
        self._seconds = IDP_SECONDS.labels(idp=self.idp, kind=kind)
        self.cache_hits = TOKEN_CACHE_HITS.labels(idp=self.idp)
        self.cache_misses = TOKEN_CACHE_MISSES.labels(idp=self.idp)
        self._refresh_ok = JWKS_REFRESHES.labels(idp=self.idp, result="ok")
        self._refresh_failed = JWKS_REFRESHES.labels(idp=self.idp, result="failed")
        self._errors = {reason: IDP_ERRORS.labels(idp=self.idp, kind=kind, reason=reason)
                        for reason in IDP_ERROR_REASONS.get(kind, ())}

    def observe_call(self, seconds: float) -> None:
        self._requests.inc()
        self._seconds.observe(seconds)

    def error(self, reason: str) -> None:
        child = self._errors.get(reason) or IDP_ERRORS.labels(idp=self.idp, kind=self.kind, reason=reason)
        child.inc()

    def jwks_refresh(self, ok: bool) -> None:
        (self._refresh_ok if ok else self._refresh_failed).inc()


def observe_reload(accepted: bool, generation: int | None = None) -> None:
    CONFIG_RELOADS.labels(result="accepted" if accepted else "rejected").inc()
    if generation is not None:
        CONFIG_GENERATION.set(generation)


def observe_generation(generation: int) -> None:
    CONFIG_GENERATION.set(generation)


REQUEST_METRICS = RequestMetrics()

# Series that alerts watch exist before their first event (0 from the first scrape); per-IdP
# series are created when the IdP is configured (IdpMetrics).
for _result in ("accepted", "rejected"):
    CONFIG_RELOADS.labels(result=_result)
