"""The usage-plan stage: after authorization, before forwarding, count the request against its plan.

Who is counted: the validated token's consumer (``client_id``, else ``sub``, or the configured
``consumerClaim``), read from the claims a validator produced, never from anything the client
sends. A request without a validated identity (no auth on the route, or ``failureModeAllow``
let it through) is counted per client IP on the ``anonymousPlan`` if one is set, else not at all;
the IP is the peer, or the client a trusted proxy names (the one trust rule, incoming.TrustedProxies).

Which plan, first found wins:

1. the policy decision's ``dynamic_metadata.usagePlan`` (Gloo: a Rego decision object feeds
   dynamic metadata to rate limiting);
2. the token claim ``planClaim``, then a scope ``<planScopePrefix><plan>``;
3. the route's ``usagePlans`` label (the API product's default plan).

A name from 1 or 2 that no ``UsagePlan`` defines falls back to 3 (logged): a token never gets
more than its route's default by naming a plan that does not exist.

Answers carry the IETF httpapi rate-limit fields (draft-ietf-httpapi-ratelimit-headers-10)::

    RateLimit-Policy: "dev-portal";q=5;w=60
    RateLimit: "dev-portal";r=4;t=12

and Gloo's / Kong's ``X-RateLimit-Limit``, ``-Remaining``, ``-Reset`` (seconds). Over the limit
:class:`~gateway_app.errors.RateLimitedError` (429) adds ``Retry-After``, and ``t`` equals it.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import typing as t

from .auth.state import AuthState
from .auth.state import scopes_of
from .auth.steps import claim_value
from .cache import hash_key
from .config.usage_plans import UsagePlan
from .config.usage_plans import UsagePlans
from .errors import RateLimitedError
from .errors import RateLimitUnavailableError
from .incoming import IncomingRequest
from .metrics import USAGE_PLAN_REQUESTS
from .ratelimit import MICROS
from .ratelimit import Limiter
from .ratelimit import MemoryLimiter
from .ratelimit import RedisLimiter
from .ratelimit import Usage
from .routing import Route
from .settings import Settings

log = logging.getLogger("gateway_app.usage_plans")

METADATA_KEY = "usagePlan"             # in dynamic metadata, as Gloo's rate-limit actions read it
CONSUMER_HASH_CHARS = 16
MAX_REMEMBERED_HASHES = 10_000


def build_limiter(settings: Settings) -> Limiter:
    """Redis when ``GATEWAY_RATE_LIMIT_URL`` or ``GATEWAY_TOKEN_CACHE_URL`` is set, else per worker."""
    local = MemoryLimiter(divisor=settings.rate_limit_workers)
    url = settings.rate_limit_store
    if url is None:
        return local
    return RedisLimiter(url, failure_mode=settings.rate_limit_failure, fallback=local)


class UsagePlanEnforcer:
    """Counts requests against plans; one per process, surviving reloads (so do its counters)."""

    def __init__(self, limiter: Limiter, client_address: t.Callable[[IncomingRequest], str]) -> None:
        self.limiter = limiter
        self._client_address = client_address
        self._counters: dict[tuple[str, str], t.Any] = {}
        self._lock = threading.Lock()
        self._unknown_logged: set[str] = set()
        self._hashes: dict[str, str] = {}

    def admit(self, request: IncomingRequest, route: Route, state: AuthState, plans: UsagePlans,
              record: dict[str, t.Any]) -> dict[str, str]:
        """Count the request; the rate-limit headers for the answer (empty when no plan applies).

        ``record`` (the access record) gets ``usage_plan``, ``consumer`` (a hash) and ``rate_limit``.

        :raises RateLimitedError: the plan's rate limit or quota is exhausted (429).
        :raises RateLimitUnavailableError: Redis failed and the failure mode is ``closed`` (503).
        """
        counted = self._counted_as(request, route, state, plans, record)
        if counted is None:
            return {}
        plan, key = counted
        try:
            usage = self.limiter.hit(key, plan.rate, plan.quota)
        except RateLimitUnavailableError:
            self._count(plan.name, "unavailable", record)
            raise
        if not usage.allowed:
            raise self._limited(plan, usage, record)
        self._count(plan.name, "allowed", record)
        return answer_headers(plan, usage)

    def check(self, request: IncomingRequest, route: Route, state: AuthState, plans: UsagePlans,
              record: dict[str, t.Any]) -> None:
        """Refuse a request on its head when its plan is known to be spent, counting nothing: the
        worker decides on a head before it reads the body (:mod:`gateway_app.preflight`), and a
        request that passes is counted when it comes whole (:meth:`admit`). So a client over its
        plan is refused before it sends its body, and its body never takes buffers, as Envoy's
        rate-limit filter decides on the request headers.

        :raises RateLimitedError: the limiter knows the plan's rate limit or quota is exhausted (429).
        """
        counted = self._counted_as(request, route, state, plans, record)
        if counted is None:
            return
        plan, key = counted
        usage = self.limiter.refused(key, plan.rate, plan.quota)
        if usage is not None:
            raise self._limited(plan, usage, record)

    def _counted_as(self, request: IncomingRequest, route: Route, state: AuthState, plans: UsagePlans,
                    record: dict[str, t.Any]) -> tuple[UsagePlan, str] | None:
        """The plan the request counts against and its counter's key, None when none applies;
        ``record`` gets ``usage_plan`` and ``consumer``."""
        if not plans.plans:
            return None
        consumer = _consumer(state, route, plans)
        if consumer is None:
            name = plans.settings.anonymous_plan
            if name is None:
                return None
            consumer = "ip:" + self._client_address(request)
        else:
            name = self._plan_name(route, state, plans)
            if name is None:
                return None
        plan = plans.plans[name]
        consumer_hash = self._hash(consumer)
        partition = (route.api_product_id or f"route:{route.name}") if plan.scope == "apiProduct" else "*"
        record.update(usage_plan=plan.name, consumer=consumer_hash)
        return plan, f"{plan.name}:{partition}:{consumer_hash}"

    def _limited(self, plan: UsagePlan, usage: Usage, record: dict[str, t.Any]) -> RateLimitedError:
        """The 429 of a refused ``usage``, counted as ``limited``."""
        self._count(plan.name, "limited", record)
        headers = answer_headers(plan, usage)
        headers["Retry-After"] = str(_seconds(usage.retry_after_us))
        reason = "quota_exceeded" if usage.binding == "quota" else "rate_limited"
        return RateLimitedError(f"usage plan {plan.name}: {reason.replace('_', ' ')}", reason=reason, headers=headers)

    def _hash(self, consumer: str) -> str:
        """The consumer's short SHA-256, remembered for the next requests of the same consumer."""
        hashed = self._hashes.get(consumer)
        if hashed is None:
            if len(self._hashes) >= MAX_REMEMBERED_HASHES:
                self._hashes.clear()
            hashed = self._hashes[consumer] = hash_key(consumer)[:CONSUMER_HASH_CHARS]
        return hashed

    def _plan_name(self, route: Route, state: AuthState, plans: UsagePlans) -> str | None:
        chosen = _requested_plan(state, plans)
        if chosen is not None and chosen not in plans.plans:
            if chosen not in self._unknown_logged and len(self._unknown_logged) < 100:
                self._unknown_logged.add(chosen)
                log.warning("usage plan %r (from the token or the policy) is not defined; using the route's plan %r",
                            chosen[:64], route.usage_plan)
            chosen = None
        return chosen or route.usage_plan

    def _count(self, plan: str, outcome: str, record: dict[str, t.Any]) -> None:
        record["rate_limit"] = outcome
        child = self._counters.get((plan, outcome))
        if child is None:
            with self._lock:
                child = self._counters.setdefault((plan, outcome), USAGE_PLAN_REQUESTS.labels(plan=plan,
                                                                                              outcome=outcome))
        child.inc()


def _consumer(state: AuthState, route: Route, plans: UsagePlans) -> str | None:
    """``client:<claim value>`` of the validated token, or None without a validated identity."""
    if route.auth is None or state.outcome != "allowed" or not state.claims:
        return None
    for claim in plans.settings.consumer_claims:
        value = claim_value(state.claims, claim)
        if isinstance(value, str) and value:
            return "client:" + value
    return None


def _requested_plan(state: AuthState, plans: UsagePlans) -> str | None:
    """The plan the policy's dynamic metadata or the token names, if any (not yet checked)."""
    for metadata in reversed(list(state.metadata.values())):
        value = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
        if isinstance(value, str) and value:
            return value
    settings = plans.settings
    if settings.plan_claim:
        value = claim_value(state.claims, settings.plan_claim)
        if isinstance(value, str) and value:
            return value
    prefix = settings.plan_scope_prefix
    if prefix:
        for scope in scopes_of(state.claims):
            if scope.startswith(prefix) and len(scope) > len(prefix):
                return scope[len(prefix):]
    return None


def answer_headers(plan: UsagePlan, usage: Usage) -> dict[str, str]:
    """The rate-limit fields for one answer (without ``Retry-After``)."""
    reset = _seconds(usage.retry_after_us if not usage.allowed else usage.reset_us)
    name = _policy_names(plan)[0 if usage.binding == "rate" else 1]
    return {
        "RateLimit-Policy": _policy_field(plan),
        "RateLimit": f"{name};r={usage.remaining};t={reset}",
        "X-RateLimit-Limit": str(usage.limit),
        "X-RateLimit-Remaining": str(usage.remaining),
        "X-RateLimit-Reset": str(reset),
    }


@functools.lru_cache(maxsize=256)
def _policy_names(plan: UsagePlan) -> tuple[str, str]:
    """Structured-field strings (RFC 8941 section 3.3.3) naming the plan's rate and quota policies."""
    quoted = plan.name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}"', f'"{quoted}-quota"'


@functools.lru_cache(maxsize=256)
def _policy_field(plan: UsagePlan) -> str:
    rate_name, quota_name = _policy_names(plan)
    items = [f"{rate_name};q={plan.rate.limit};w={_seconds(plan.rate.period_us)}"]
    if plan.quota is not None:
        items.append(f"{quota_name};q={plan.quota.limit};w={_seconds(plan.quota.period_us)}")
    return ", ".join(items)


def _seconds(microseconds: int) -> int:
    """Whole seconds, rounded up (a client waiting that long is never early)."""
    return max(0, math.ceil(microseconds / MICROS))
