"""HTTP calls to identity providers (introspection, JWKS, OpenID discovery): the one way they are made.

A slow IdP must not starve unrelated routes, so every call is bounded three ways:

* a **total deadline** (:func:`deadline`): requests' ``timeout`` applies to each socket read,
  so a server that trickles one byte a second never times out; sessions from
  :func:`new_session` re-arm the socket timeout with the time left before every read of the
  status line, headers and body, and raise ``socket.timeout`` (urllib3 and requests turn it
  into their timeout errors) once the deadline has passed;
* a **size cap** on the answer (:func:`read_body`);
* a **per-endpoint concurrency limit** (:class:`CallLimit`, one per IdP URL and process): at
  most ``maxConcurrentCalls`` calls at once (Envoy's circuit breaker ``max_requests``), so at
  most that many of a worker's threads ever wait on one IdP; a call beyond it waits at most
  :data:`QUEUE_WAIT` seconds, in a waiting room of as many places again (Envoy's
  ``max_pending_requests``), then fails with :class:`~gateway_app.errors.IdpOverloadedError`
  (503 ``idp_overloaded``, with ``Retry-After``). A waiting call holds a pool thread: 1,024
  concurrent bogus tokens, each waiting, kept every thread busy (red team 7); with no wait at
  all, three users with new tokens at once got a spurious 503 (red team 8).

  Slots and places are **shared fairly between clients** (the address :func:`on_behalf_of`
  names; ``""`` for background calls), work-conserving as fair queuing is (Demers, Keshav and
  Shenker, SIGCOMM 1989), where Envoy's breakers are first come, first served: with 256
  connections sending bogus tokens, 9 of 15 users with new valid tokens got 503 because the
  flood held every slot and every place (red team). The rule, where a client's *load* is the
  slots plus the places it holds:

  - a free slot is taken at once, by anyone: a client alone may use every slot;
  - a freed slot is handed directly to the waiter whose client holds the fewest slots (ties:
    the one waiting longest), never raced for;
  - a newcomer finding the room full takes the place of the latest waiter of the waiting
    client with the largest load, if that load exceeds the newcomer's own by more than one
    (so two clients never evict each other back and forth); the evicted call fails at once
    with 503. Otherwise the newcomer fails at once.

Sessions never read proxy variables from the environment (``trust_env = False``) and never
retry by themselves: callers retry, when configured (Traefik Hub's ``maxRetries``).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import threading
import time
import typing as t
import urllib.parse

import requests
import urllib3.connection
import urllib3.connectionpool
from requests.adapters import HTTPAdapter

from ..errors import IdpOverloadedError

DEFAULT_MAX_CONCURRENT_CALLS = 2
QUEUE_WAIT = 0.05

_local = threading.local()


# -- the total deadline --------------------------------------------------------------------------

@contextlib.contextmanager
def deadline(seconds: float) -> t.Iterator[float]:
    """Bound every IdP read made by this thread inside the block to ``seconds`` in total.

    :yields: the deadline, a ``time.monotonic()`` value.
    """
    previous = getattr(_local, "deadline", None)
    _local.deadline = time.monotonic() + seconds
    try:
        yield _local.deadline
    finally:
        _local.deadline = previous


def remaining() -> float | None:
    """Seconds left before this thread's deadline (may be <= 0), or None outside :func:`deadline`."""
    at = getattr(_local, "deadline", None)
    return None if at is None else at - time.monotonic()


def expired() -> bool:
    """Whether this thread's deadline has passed."""
    left = remaining()
    return left is not None and left <= 0


class _DeadlineIO(socket.SocketIO):
    """A socket reader that gives each read no more than the time left before the deadline."""

    def readinto(self, buffer: t.Any) -> int | None:
        left = remaining()
        if left is not None:
            if left <= 0:
                raise socket.timeout("IdP call deadline exceeded")
            current = self._sock.gettimeout()
            self._sock.settimeout(left if current is None else min(current, left))
        return super().readinto(buffer)


class _DeadlineSocket:
    """What :class:`http.client.HTTPResponse` is given instead of the socket: its ``makefile`` reads
    through :class:`_DeadlineIO` (the response reads nothing else from it)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def makefile(self, mode: str = "rb", *args: t.Any, **kwargs: t.Any) -> io.BufferedReader:
        raw = _DeadlineIO(self._sock, "rb")
        self._sock._io_refs += 1          # type: ignore[attr-defined]  # as socket.makefile does
        return io.BufferedReader(raw)


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(_DeadlineSocket(sock), *args, **kwargs)   # type: ignore[arg-type]


class _HTTPConnection(urllib3.connection.HTTPConnection):
    response_class = _DeadlineResponse


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    response_class = _DeadlineResponse


class _HTTPConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSConnectionPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter over connection pools whose responses honour :func:`deadline`; no retries."""

    def __init__(self) -> None:
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPConnectionPool, "https": _HTTPSConnectionPool}


def new_session() -> requests.Session:
    """The one way an IdP session is built: no proxy variables from the environment, no
    automatic retries, every read bounded by the caller's :func:`deadline`."""
    session = requests.Session()
    session.trust_env = False
    adapter = _DeadlineAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def timeouts(per_read: float) -> tuple[float, float]:
    """requests' ``(connect, read)`` timeouts: ``per_read``, never beyond the deadline's time left."""
    left = remaining()
    bound = per_read if left is None else max(0.001, min(per_read, left))
    return (bound, bound)


def read_body(response: requests.Response, max_bytes: int) -> bytes:
    """The answer's body, at most ``max_bytes``, read before the deadline.

    :raises BodyTooLargeError: more than ``max_bytes``.
    :raises requests.Timeout: the deadline passed while reading.
    """
    chunks = []
    size = 0
    for chunk in response.iter_content(chunk_size=16384):
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLargeError(f"answer larger than {max_bytes} bytes")
        if expired():
            raise requests.exceptions.ReadTimeout("IdP call deadline exceeded")
        chunks.append(chunk)
    return b"".join(chunks)


class BodyTooLargeError(Exception):
    """An IdP answer over its size cap."""


def is_timeout(error: BaseException) -> bool:
    """Whether a requests failure was a timeout, the total deadline included (requests reports
    a socket timeout in the middle of a body as a ConnectionError)."""
    return isinstance(error, requests.Timeout) or expired()


# -- the per-endpoint concurrency limit ----------------------------------------------------------

@contextlib.contextmanager
def on_behalf_of(client: str) -> t.Iterator[str]:
    """Make ``client`` (the client's address) the one on whose behalf this thread calls IdPs inside
    the block: :class:`CallLimit` shares its slots and waiting places fairly between clients.

    :yields: ``client``.
    """
    previous = getattr(_local, "client", "")
    _local.client = client
    try:
        yield client
    finally:
        _local.client = previous


def current_client() -> str:
    """The client set by :func:`on_behalf_of` on this thread; ``""`` outside it (background calls)."""
    return getattr(_local, "client", "")


class _Waiter:
    """One call in a :class:`CallLimit`'s waiting room; ``granted`` and ``evicted`` change under
    the limit's lock only, and ``event`` is set when either does."""

    __slots__ = ("client", "event", "granted", "evicted")

    def __init__(self, client: str, event: threading.Event) -> None:
        self.client = client
        self.event = event
        self.granted = False
        self.evicted = False


class CallLimit:
    """At most ``max_calls`` concurrent calls to one IdP endpoint in this process, and at most
    ``max_calls`` more waiting for one of them, shared fairly between clients (the rule is in
    the module docstring).

    ``event`` makes each waiter's event (tests replace it to time a wait out on purpose).
    """

    def __init__(self, endpoint: str, max_calls: int,
                 event: t.Callable[[], threading.Event] = threading.Event) -> None:
        self.endpoint = endpoint
        self.max_calls = max_calls
        self._event = event
        self._lock = threading.Lock()
        self._free = max_calls
        self._held: dict[str, int] = {}           # client -> slots it holds
        self._waiters: list[_Waiter] = []         # arrival order, at most max_calls

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot now."""
        with self._lock:
            return len(self._waiters)

    @contextlib.contextmanager
    def slot(self, wait: float | None = None) -> t.Iterator[None]:
        """Hold one slot for the block on behalf of :func:`current_client`, waiting up to
        ``wait`` seconds (default :data:`QUEUE_WAIT`) for one to be handed over.

        :raises IdpOverloadedError: no slot is free and the waiting room is full (and no other
            client's waiter may be evicted), or no slot was handed over within ``wait``, or
            another client's newcomer took this call's place.
        """
        client = current_client()
        self._acquire(client, QUEUE_WAIT if wait is None else wait)
        try:
            yield
        finally:
            with self._lock:
                self._release(client)

    def _acquire(self, client: str, wait: float) -> None:
        with self._lock:
            if self._free:
                self._free -= 1
                self._held[client] = self._held.get(client, 0) + 1
                return
            waiter = self._enter_waiting_room(client, wait)
        self._await(waiter, wait)

    def _enter_waiting_room(self, client: str, wait: float) -> _Waiter:
        """A place in the waiting room for ``client``, evicting another client's latest waiter
        when the room is full and that client's load exceeds ``client``'s by more than one.
        Called under the lock.

        :raises IdpOverloadedError: the room is full and nobody may be evicted, or ``wait`` <= 0.
        """
        if wait <= 0:
            raise self._overloaded("no slot free")
        if len(self._waiters) >= self.max_calls:
            victim = self._victim_for(client)
            if victim is None:
                raise self._overloaded(f"{self.max_calls} calls already waiting")
            self._waiters.remove(victim)
            victim.evicted = True
            victim.event.set()
        waiter = _Waiter(client, self._event())
        self._waiters.append(waiter)
        return waiter

    def _victim_for(self, client: str) -> _Waiter | None:
        """The most recent waiter of the waiting client with the largest load (slots held +
        places held; ties: the latest arrival), if that load exceeds ``client``'s + 1, else None."""
        loads = dict(self._held)
        for waiter in self._waiters:
            loads[waiter.client] = loads.get(waiter.client, 0) + 1
        victim = max(reversed(self._waiters), key=lambda waiter: loads[waiter.client])
        return victim if loads[victim.client] > loads.get(client, 0) + 1 else None

    def _await(self, waiter: _Waiter, wait: float) -> None:
        """Wait for a slot handed over by :meth:`_release`; ``granted`` is read under the lock,
        so a slot handed over as the wait times out is kept (and released by the caller).

        :raises IdpOverloadedError: the wait timed out or the waiter was evicted.
        """
        try:
            waiter.event.wait(wait)
        except BaseException:
            with self._lock:
                self._withdraw(waiter)
            raise
        with self._lock:
            if waiter.granted:
                return
            self._withdraw(waiter)
        raise self._overloaded("a less busy client's call took its place" if waiter.evicted
                               else f"no slot freed within {wait:g} s")

    def _withdraw(self, waiter: _Waiter) -> None:
        """Take ``waiter`` out of the room, or give back the slot it was handed. Under the lock."""
        if waiter.granted:
            self._release(waiter.client)
        elif waiter in self._waiters:
            self._waiters.remove(waiter)

    def _release(self, client: str) -> None:
        """Give back ``client``'s slot: handed directly to the waiter whose client holds the fewest
        slots (ties: the one waiting longest), else freed. Under the lock."""
        held = self._held[client] - 1
        if held:
            self._held[client] = held
        else:
            del self._held[client]
        if not self._waiters:
            self._free += 1
            return
        chosen = min(self._waiters, key=lambda waiter: self._held.get(waiter.client, 0))
        self._waiters.remove(chosen)
        self._held[chosen.client] = self._held.get(chosen.client, 0) + 1
        chosen.granted = True
        chosen.event.set()

    def _overloaded(self, why: str) -> IdpOverloadedError:
        return IdpOverloadedError(f"{self.max_calls} calls to {self.endpoint} in flight; {why}")


_limits: dict[tuple[str, int], CallLimit] = {}
_limits_lock = threading.Lock()


def call_limit(url: str, max_calls: int = DEFAULT_MAX_CONCURRENT_CALLS) -> CallLimit:
    """The process-wide :class:`CallLimit` of the endpoint ``url`` (without query) for ``max_calls``.

    Validators of the same IdP endpoint share it, across routes and reloads.
    """
    parts = urllib.parse.urlsplit(url)
    endpoint = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    with _limits_lock:
        limit = _limits.get((endpoint, max_calls))
        if limit is None:
            limit = _limits[(endpoint, max_calls)] = CallLimit(endpoint, max_calls)
        return limit

