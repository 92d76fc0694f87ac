"""Managed headers: the request headers the gateway itself writes, which no client may send.

A header any route's auth or transformation writes (``claimsToHeaders``, ``forwardHeaders``,
a ``dynamic_metadata`` template, a Traefik OPA header) is one an upstream behind the gateway
trusts; every route strips client copies of all of them (the mitmproxy ``modifyheaders``
habit: remove what you manage before you set it). Names are lower-case.
"""

from __future__ import annotations

import dataclasses
import typing as t

from ..auth.pipeline import AuthPipeline
from ..routing import VirtualHost
from ..transform import HeaderTransforms


def managed_headers(auth: AuthPipeline | None, transforms: HeaderTransforms | None) -> frozenset[str]:
    """The header names one route's auth pipeline and header transformations write."""
    names = set(transforms.header_names) if transforms else set()
    if auth is not None:
        names |= auth.managed_headers()
    return frozenset(names)


def share_managed_headers(vhosts: t.Sequence[VirtualHost]) -> list[VirtualHost]:
    """``vhosts`` with every route's ``managed_headers`` set to those of the whole config.

    An open route to the same upstream must not let a client send a header another route's
    auth writes, so every route strips them all. Computed once per config generation.
    """
    names = frozenset().union(*(route.managed_headers for vhost in vhosts for route in vhost.routes))
    return [dataclasses.replace(vhost, routes=tuple(dataclasses.replace(route, managed_headers=names)
                                                    for route in vhost.routes)) for vhost in vhosts]
