"""The overload rule: which clients' connections a worker closes, and the threads kept for other clients.

A worker has a bounded number of connections (gunicorn's ``worker_connections``) and threads.
Under a flood, the clients that cause it should pay for it, not the others: the rule counts
connections by client address (:func:`peer_key`), shortens the deadline of the heavy ones
(:func:`overload_victims`), and keeps a few threads for clients with nothing running
(:func:`reserve_threads`). The worker (:mod:`gateway_app.worker`) applies it; the IdP call
limit groups clients the same way (:func:`gateway_app.auth.idp_http.on_behalf_of`).
"""

from __future__ import annotations

import collections
import heapq
import ipaddress
import itertools
import typing as t

K = t.TypeVar("K")

# The overload rule: above this share of worker_connections, a connection that never completed a
# request has OVERLOAD_TIMEOUT seconds for it (Envoy overload manager's "reduce timeouts").
OVERLOAD_FRACTION = 0.75
OVERLOAD_TIMEOUT = 1.0
# bytes/s: a body arriving this fast is not shed for the deadline. About 4 x the minimum rate: a slow
# but real upload (3 KB/s) survives a flood of unfinished heads from many addresses (red team 6 F2),
# and a flood that wants to be spared sends real bytes, which the body budget counts.
OVERLOAD_SPARED_BODY_RATE = 1024.0
OVERLOAD_PEER_FLOOR = 8              # connections: a peer holding no more is never the overload's cause
OVERLOAD_CHECK_INTERVAL = 0.05       # seconds between two runs of the rule below worker_connections
OVERLOAD_FREED_SHARE = 32            # at worker_connections, 1/32 of them is freed at once (one run per batch)


class Waiting(t.NamedTuple, t.Generic[K]):
    """A request being read in the loop, as the overload rule sees it."""

    key: K
    started: float                   # seconds of the loop's monotonic clock: accepted, or its first byte
    peer: str = ""                   # :func:`peer_key` of the client
    body_rate: float | None = None   # bytes/s of its body since the head was whole; None: in the head


def reserve_threads(threads: int) -> int:
    """How many threads a worker keeps, beyond its ``threads``, for clients with nothing running
    while the regular ones are all taken: a quarter of ``threads``, at least one. Without it, 8
    kept-alive requests to a slow upstream from one address held all 8 threads of the demo for
    10 s, and nobody else was answered (red team 9 F2); a cap on one client's threads did the
    same job but left threads idle while a single address had work (:class:`~gateway_app.fair_queue.FairPool`)."""
    return max(1, threads // 4)


def peer_key(client: t.Any) -> str:
    """The peer the overload rule counts requests by: the IPv4 address, the IPv6 /64 (one host
    holds a whole /64, RFC 6177), or the UNIX socket path. Behind a load balancer every request
    is that balancer's: the rule then spares by body rate only."""
    address = str(client[0] if isinstance(client, tuple) else client)
    if ":" not in address:
        return address
    try:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    except ValueError:
        return address


def overload_victims(idle: t.Iterable[Waiting[K]], waiting: t.Iterable[Waiting[K]],
                     open_connections: int, high_water: int, limit: int, now: float,
                     busy: t.Mapping[str, int] | None = None) -> list[K]:
    """Which connections not in a pool thread to close under overload, in order.

    ``idle``: kept-alive connections waiting for their next request (``started``: idle since),
    oldest first; ``waiting``: the requests being read, whether or not an earlier request on
    the connection was answered, in arrival order; times in seconds of the loop's monotonic
    clock; ``busy``: each peer's other connections, whose requests wait for or hold a thread. A
    peer is *heavy* when it holds more of all these connections than an equal share and more
    than :data:`OVERLOAD_PEER_FLOOR` (a browser opens six per host): counting ``busy`` makes an
    address whose whole requests fill the pool heavy, so another client's new connection is
    spared (red team 10 F5: 2,000 connections from one address, and 4 probes were reset).

    At ``high_water`` open connections or more, each connection has :data:`OVERLOAD_TIMEOUT`
    (Envoy's overload manager "reduce timeouts"), unless it is *spared*: its body arrives at
    :data:`OVERLOAD_SPARED_BODY_RATE` or more, or some peer is heavy and its own is not. So the
    short deadline falls on the peers that cause the overload (red team 4 F2: one address's
    1,500 connections a second cut every other client's uploads after 1 s); when no peer is
    heavy (one load balancer, or a crowd of addresses holding a few each) only the body rate
    spares.

    * idle connections past the deadline and not spared are closed first (nginx closes idle
      keep-alive connections first when it runs out of connections, ``ngx_drain_connections``);
    * then requests past the deadline and not spared;
    * at ``limit`` (``worker_connections``) requests are closed until ``limit //``
      :data:`OVERLOAD_FREED_SHARE` slots (at least one) are free, so a flood of new
      connections costs one run of the rule per batch: heavy peers' requests not spared
      first, then other requests not spared, then spared ones, each oldest first. An idle
      connection younger than the deadline is not: its client may be sending a request the
      loop has not read yet.

    A connection that completed a request is no exception (red team 3 F2: one GET, then a
    body at the minimum rate).
    """
    victims: list[K] = []
    if open_connections < high_water:
        return victims
    idle, requests = list(idle), list(waiting)
    held = collections.Counter(connection.peer for connection in itertools.chain(idle, requests))
    held.update(busy or {})
    bar = max(sum(held.values()) / max(len(held), 1), OVERLOAD_PEER_FLOOR)
    heavy = {peer for peer, count in held.items() if count > bar}

    def spared(connection: Waiting[K]) -> bool:
        fast = connection.body_rate is not None and connection.body_rate >= OVERLOAD_SPARED_BODY_RATE
        return fast or (bool(heavy) and connection.peer not in heavy)

    def late(connections: list[Waiting[K]]) -> list[Waiting[K]]:
        return [connection for connection in connections
                if connection.started + OVERLOAD_TIMEOUT <= now and not spared(connection)]

    victims.extend(connection.key for connection in late(idle))
    late_requests = late(requests)
    victims.extend(request.key for request in late_requests)
    if open_connections - len(victims) >= limit:
        excess = open_connections - len(victims) - limit + max(1, limit // OVERLOAD_FREED_SHARE)
        chosen = {request.key for request in late_requests}
        rest = (request for request in requests if request.key not in chosen)
        order = heapq.nsmallest(excess, rest, key=lambda request: (spared(request), request.peer not in heavy,
                                                                    request.started))
        victims.extend(request.key for request in order)
    return victims
