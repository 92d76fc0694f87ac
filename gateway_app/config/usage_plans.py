"""``UsagePlan`` and ``UsagePlanSettings`` resources: named rate limits and quotas for API products.

A plan's limits are written in either vocabulary:

* Gloo (Portal usage plans, ``RateLimitServerConfig`` descriptors):
  ``rateLimit: {requestsPerUnit: 5, unit: MINUTE}`` with ``unit`` one of SECOND, MINUTE, HOUR, DAY;
* Traefik Hub (``APIPlan``): ``rateLimit: {limit: 5, period: 1m}`` / ``quota: {limit: 1000, period: 720h}``.

``spec.scope`` says whether a consumer's budget is per API product (``apiProduct``, the default:
Traefik's ``bucket: application-api``) or one budget across every product on the plan
(``global``: Traefik's ``bucket: application``).

At most one ``UsagePlanSettings`` resource says who is counted and how a request picks its plan;
see :class:`UsagePlanSettings`. Plans are referenced by name (the ``usagePlans`` route label,
``anonymousPlan``), whatever their namespace, so a name may be defined once.
"""

from __future__ import annotations

import dataclasses
import typing as t

from ..errors import ConfigError
from ..ratelimit import MICROS
from ..ratelimit import Rate
from .fields import Node
from .loader import RawResource

UNITS = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400}
SCOPES = ("apiProduct", "global")
DEFAULT_CONSUMER_CLAIMS = ("client_id", "sub")


@dataclasses.dataclass(frozen=True, eq=False)
class UsagePlan:
    """A named rate limit (GCRA) and optional quota (fixed window); ``scope`` as in the module doc.

    Compared and hashed by identity: each config generation has its own plan objects.
    """

    name: str
    rate: Rate
    quota: Rate | None = None
    scope: str = "apiProduct"

    @property
    def summary(self) -> str:
        """``5/60s``, or ``5/60s, quota 1000/86400s``: the limits in requests per seconds."""
        text = _per_seconds(self.rate)
        return text if self.quota is None else f"{text}, quota {_per_seconds(self.quota)}"


def _per_seconds(rate: Rate) -> str:
    return f"{rate.limit}/{rate.period_us / 1_000_000:g}s"


@dataclasses.dataclass(frozen=True)
class UsagePlanSettings:
    """Who is counted and which plan a request is on.

    ``consumer_claims``: the validated token's claims naming the consumer, first present wins
    (``consumerClaim``; default ``client_id`` then ``sub``). ``plan_claim``: a token claim naming the
    plan (``planClaim``, e.g. ``plan``); ``plan_scope_prefix``: a scope ``<prefix><plan>`` names it
    (``planScopePrefix``, e.g. ``plan:``). ``anonymous_plan``: the plan for requests without a
    validated identity, counted per client IP (``anonymousPlan``; none: not limited).
    """

    consumer_claims: tuple[str, ...] = DEFAULT_CONSUMER_CLAIMS
    plan_claim: str | None = None
    plan_scope_prefix: str | None = None
    anonymous_plan: str | None = None


@dataclasses.dataclass(frozen=True)
class UsagePlans:
    """The plans of one config generation, by name, and the settings."""

    plans: t.Mapping[str, UsagePlan] = dataclasses.field(default_factory=dict)
    settings: UsagePlanSettings = UsagePlanSettings()


def parse_usage_plan(resource: RawResource) -> UsagePlan:
    """:raises ConfigError: unknown fields or units, limits below 1, more than one spelling."""
    spec = Node(resource.body.get("spec"), resource.where)
    for field in ("displayName", "title", "description"):
        spec.str(field)
    rate_node = spec.child("rateLimit", required=True)
    assert rate_node is not None
    rate = parse_limit(rate_node)
    quota_node = spec.child("quota")
    quota = parse_limit(quota_node) if quota_node is not None else None
    scope = spec.str("scope", default="apiProduct")
    if scope not in SCOPES:
        raise spec.error("scope", f"must be one of {', '.join(SCOPES)}, got {scope!r}")
    spec.done()
    return UsagePlan(resource.name, rate, quota, scope)


def parse_limit(node: Node) -> Rate:
    """``{requestsPerUnit, unit}`` (Gloo) or ``{limit, period}`` (Traefik Hub) as a :class:`Rate`."""
    spelling = node.one_of("requestsPerUnit", "limit")
    if spelling == "requestsPerUnit":
        limit = node.int("requestsPerUnit", minimum=1)
        unit = node.str("unit", required=True)
        if unit not in UNITS:
            raise node.error("unit", f"unknown unit {unit!r} (known: {', '.join(UNITS)})")
        period_us = UNITS[unit] * MICROS
    else:
        limit = node.int("limit", minimum=1)
        if not node.has("period"):
            raise node.error(None, "missing required field 'period'")
        seconds = node.duration("period")
        if seconds <= 0:
            raise node.error("period", "must be longer than 0s")
        period_us = round(seconds * MICROS)
    node.raw("bucket")                 # Traefik Hub's bucket: see spec.scope
    node.done()
    if limit > period_us:
        raise node.error(spelling, "more than one request per microsecond cannot be limited; raise the period")
    return Rate(limit, period_us)


def parse_settings(resource: RawResource) -> UsagePlanSettings:
    spec = Node(resource.body.get("spec"), resource.where)
    consumer = spec.str("consumerClaim")
    settings = UsagePlanSettings(
        consumer_claims=(consumer,) if consumer else DEFAULT_CONSUMER_CLAIMS,
        plan_claim=spec.str("planClaim"), plan_scope_prefix=spec.str("planScopePrefix"),
        anonymous_plan=spec.str("anonymousPlan"),
    )
    spec.done()
    return settings


def check_settings(resource: RawResource, settings: UsagePlanSettings, plans: t.Container[str]) -> None:
    """:raises ConfigError: ``anonymousPlan`` names no plan."""
    if settings.anonymous_plan is not None and settings.anonymous_plan not in plans:
        spec = Node(resource.body.get("spec"), resource.where)
        raise spec.error("anonymousPlan", f"UsagePlan {settings.anonymous_plan!r} is not defined")


def check_plan_label(node: Node, labels: t.Mapping[str, str], plans: t.Container[str]) -> None:
    """A route's ``usagePlans`` label must name a defined plan.

    :raises ConfigError: at the label's line.
    """
    name = labels.get("usagePlans")
    if name is None or name in plans:
        return
    labels_node = Node(node.data.get("labels"), node.where, node.field_path("labels"))
    raise labels_node.error("usagePlans", f"UsagePlan {name!r} is not defined (declare a UsagePlan named "
                                          f"{name} with a rateLimit)")


def duplicate_name(resource: RawResource, first: RawResource) -> ConfigError:
    return ConfigError(f"a UsagePlan named {resource.name} is already defined in {first.where}",
                       where=resource.where, line=resource.line)
