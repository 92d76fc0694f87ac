"""HTTP calls to identity providers (introspection, JWKS, OpenID discovery): the one way they are made.

A slow IdP must not starve unrelated routes, so every call is bounded three ways:

* a **total deadline** (:func:`deadline`): requests' ``timeout`` applies to each socket read,
  so a server that trickles one byte a second never times out; sessions from
  :func:`new_session` re-arm the socket timeout with the time left before every read of the
  status line, headers and body, and raise ``socket.timeout`` (urllib3 and requests turn it
  into their timeout errors) once the deadline has passed;
* a **size cap** on the answer (:func:`read_body`);
* a **per-endpoint concurrency limit** (:class:`CallLimit`, one per IdP URL and process): a
  call beyond it waits at most :data:`QUEUE_WAIT` seconds for a free slot, then fails with
  :class:`~gateway_app.errors.IdpOverloadedError` (503 ``idp_overloaded``), so at most
  ``maxConcurrentCalls`` of a worker's threads ever wait on one IdP (Envoy's circuit breaker
  ``max_requests``). At most as many calls again may wait, the rest fail at once (Envoy's
  ``max_pending_requests``): a waiting call holds a pool thread, and 1,024 concurrent bogus
  tokens, each waiting, kept every thread busy (red team 7); with no wait at all, three
  users with new tokens at once got a spurious 503 (red team 8).

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

class CallLimit:
    """At most ``max_calls`` concurrent calls to one IdP endpoint in this process, and at most
    ``max_calls`` more waiting for one of them."""

    def __init__(self, endpoint: str, max_calls: int) -> None:
        self.endpoint = endpoint
        self.max_calls = max_calls
        self._slots = threading.BoundedSemaphore(max_calls)
        self._waiting = 0
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot now."""
        with self._lock:
            return self._waiting

    @contextlib.contextmanager
    def slot(self, wait: float = QUEUE_WAIT) -> t.Iterator[None]:
        """Hold one slot for the block, waiting up to ``wait`` seconds for one, as at most
        ``max_calls`` callers may.

        :raises IdpOverloadedError: no slot is free (or freed up within ``wait``), or
            ``max_calls`` calls are already waiting for one.
        """
        if not self._slots.acquire(blocking=False) and not self._wait_for_slot(wait):
            raise IdpOverloadedError(f"{self.max_calls} calls to {self.endpoint} already in flight")
        try:
            yield
        finally:
            self._slots.release()

    def _wait_for_slot(self, wait: float) -> bool:
        with self._lock:
            if self._waiting >= self.max_calls:
                return False
            self._waiting += 1
        try:
            return self._slots.acquire(timeout=wait)
        finally:
            with self._lock:
                self._waiting -= 1


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

