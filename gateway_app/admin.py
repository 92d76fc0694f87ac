"""The admin view of what is served: ``GET <admin prefix>/config`` (JSON), and ``gateway-app status``.

One worker's view (a load balancer picks the worker; ``pid`` says which):

* ``generation`` and ``pid``;
* ``resources``: every resource of the served generation with its state (ACCEPTED, and the
  note of kinds or fields that are accepted but not used);
* ``last_reload``: the last reload's ``result`` (``accepted``/``rejected``), ``at`` (UTC,
  ISO 8601), the ``generation`` it built and, when rejected, its ``rejected`` resources with
  their reasons (the last good generation keeps serving);
* ``validators``: each token validator's state: the IdP host, JWKS key ids, last fetch,
  next fetch or retry, last error, and cache sizes;
* ``routes``: host, matchers, route name, upstream, API product and auth config, in match order.

No secrets and no tokens: client secrets are never read here, caches are reported by size,
and URLs are reduced to ``host:port`` as in the metrics' ``idp`` label.
"""

from __future__ import annotations

import os
import typing as t

from .metrics import idp_label

if t.TYPE_CHECKING:
    from .gateway import Gateway

RECORD_KEYS = ("kind", "resource", "file", "line", "state", "field", "reason", "note")


def config_view(gateway: Gateway) -> dict[str, t.Any]:
    """The JSON document of ``<admin prefix>/config`` (see the module docstring)."""
    config = gateway.config
    return {
        "generation": config.generation,
        "pid": os.getpid(),
        "resources": [_record(status.record()) for status in config.statuses],
        "last_reload": getattr(gateway, "last_reload", None),
        "validators": [validator_state(validator) for validator in config.validators],
        "routes": [_route(vhost, route) for vhost in config.router.virtual_hosts for route in vhost.routes],
    }


def _record(record: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    return {key: record.get(key) for key in RECORD_KEYS if record.get(key) is not None}


def validator_state(validator: t.Any) -> dict[str, t.Any]:
    """``validator.state()`` when it reports one, else its type: what a validator may show."""
    state = getattr(validator, "state", None)
    report = dict(state()) if callable(state) else {}
    return {"type": type(validator).__name__, **report}


def _route(vhost: t.Any, route: t.Any) -> dict[str, t.Any]:
    return {
        "host": list(vhost.domains),
        "route": route.name,
        "match": [matcher.describe() for matcher in route.matchers],
        "upstream": sorted({target.name for target in route.targets}),
        "api_product": route.api_product_id,
        "auth": route.auth.summary if route.auth else None,
    }


def idp(url: str | None) -> str | None:
    """An IdP named by ``host:port`` only (no path, query or credentials)."""
    return idp_label(url) if url else None


def render_status(view: t.Mapping[str, t.Any]) -> str:
    """``gateway-app status``: the view for a terminal."""
    lines = [f"generation {view.get('generation')} (worker pid {view.get('pid')})"]
    reload = view.get("last_reload")
    if reload:
        lines.append(f"last reload: {reload.get('result')} at {reload.get('at')} "
                     f"(generation {reload.get('generation')})")
        for rejected in reload.get("rejected") or ():
            lines.append(f"  REJECTED {rejected.get('kind')} {rejected.get('resource')} "
                         f"({rejected.get('file')}:{rejected.get('line')}): {rejected.get('reason')}")
    else:
        lines.append("last reload: none since start")
    lines.append("resources:")
    for resource in view.get("resources") or ():
        note = f" (note: {resource['note']})" if resource.get("note") else ""
        lines.append(f"  {resource.get('state')}{note} {resource.get('kind')} {resource.get('resource')}")
    lines.append("validators:")
    for validator in view.get("validators") or ():
        details = ", ".join(f"{k}={v}" for k, v in validator.items() if k != "type" and v not in (None, "", []))
        lines.append(f"  {validator.get('type')}: {details}")
    lines.append("routes:")
    for route in view.get("routes") or ():
        lines.append(f"  {','.join(route.get('host') or [])} {' | '.join(route.get('match') or [])} -> "
                     f"{route.get('route')} -> {','.join(route.get('upstream') or [])} auth={route.get('auth') or '-'}")
    return "\n".join(lines)
