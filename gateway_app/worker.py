"""The gunicorn worker: gthread, except that a request is read whole, head and body, before it takes a thread.

gunicorn's gthread worker hands a connection to its thread pool as soon as it is readable and
parses the request head there, then reads the body, with blocking reads: eight clients that
send one header line a second, or a body byte now and then, hold the eight threads of a 2 x 4
gateway, and every other client waits (issue 12, class 11; the red team's F1-F3).
:class:`HeadReadingWorker` reads requests without blocking, as nginx does with
``proxy_request_buffering on`` and Envoy with its buffer filter: a new connection waits in the
worker's event loop until its head is whole (:class:`~gateway_app.request_buffer.HeadBuffer`) and then until its body is
(:class:`~gateway_app.request_buffer.RequestBuffer`: ``Content-Length``, or chunked framing scanned to its last chunk and
trailers; up to 64 KiB in memory, the rest in a temporary file), and only then goes to the
pool. A kept-alive connection that becomes readable goes to a thread as under gthread, which
reads what has arrived without blocking and, if the request is not whole, sends it back to the
loop for the rest. A request whose head has arrived and whose body has not is first decided on
its head by the application in a pool thread (:meth:`HeadReadingWorker._preflight`: route,
declared size, auth), as nginx's ``auth_request`` decides before the body: a refusal is answered
at once and the body never read; otherwise the loop reads the body. ``Expect: 100-continue`` is
answered ``100 Continue`` by the loop once that decision lets the body come (gunicorn then sends
none), never to a request that is refused.

Work waits for a thread in turns between client addresses, not first come, first served as in
gthread's executor (:class:`gateway_app.fair_queue.FairPool`,
:meth:`HeadReadingWorker._run_in_pool`): a client's request waits for at most one request of
each other client with work waiting, however many one address queued; and when one address's
work holds every thread, a reserve of a quarter more (:func:`gateway_app.overload.reserve_threads`)
serves other addresses at once, so a slow upstream one address keeps busy does not hold the others.

Deadlines, all in the loop, all answered ``408 Request Timeout`` (RFC 9110 §15.5.9, the
gateway's JSON error) and the connection closed, so a slow client never holds a thread:

* the head (``GATEWAY_HEAD_TIMEOUT``, seconds, default 10; at most ``GATEWAY_MAX_HEAD_BYTES``,
  default 64 KiB, else 431 at once) from the accept, or for a kept-alive connection from the first byte of its next request (the idle wait before that is gunicorn's
  ``keepalive``), as nginx's ``client_header_timeout``;
* the body: at least ``GATEWAY_MIN_BODY_RATE`` x 5 bytes (default 240 bytes/s, Kestrel's
  ``MinRequestBodyDataRate``) in every 5 s window, measured per window and not averaged from the
  first read (:class:`MinRateWindow`), and some byte every ``GATEWAY_CLIENT_TIMEOUT`` seconds
  (default 30), as nginx's ``client_body_timeout``;
* overload: above 75 % of ``worker_connections`` open, every connection not in a pool thread
  has 1 s: an idle kept-alive one for its next request, any other for the request it is sending,
  whether or not it completed one before, idle ones closed first; spared are bodies arriving at
  1 KiB/s or more and, while some peer holds more than an equal share and more than 8 of
  them, the connections of every other peer; at ``worker_connections`` requests are closed
  until 1/32 of them is free, such heavy peers' first (:func:`gateway_app.overload.overload_victims`,
  :meth:`HeadReadingWorker.shed_overload`), after requests waiting for a thread from the
  address with most of them waiting, above 8, newest first (503 ``server_busy``,
  :meth:`HeadReadingWorker._shed_queued`).

A request goes to a thread only when it is whole or when gunicorn's parser refuses it from the
bytes already read: chunked framing the loop cannot read (a bare LF, a missing CRLF) is answered
400 ``invalid_chunked_body`` by the loop itself (gunicorn's chunk reader would wait on the socket
for a CRLF, on a pool thread, with no minimum rate: red team 3 F1), as are the other
:class:`~gateway_app.request_buffer.Refusal` answers below.

Buffered bodies are bounded per worker (:class:`~gateway_app.request_buffer.BodyBudget`, ``GATEWAY_BUFFERED_BODY_BYTES``,
default 24 MiB, memory and temporary files together; past half of it, no client address holds
more than what is left free): a body whose next bytes are not granted, or that declares more
than half the budget, is answered 503 ``server_busy`` with ``Retry-After`` by the loop, as is a
failed spool write. A body authenticated on its head outranks the others: to make room for it,
bodies no credential vouches for are ended (:meth:`HeadReadingWorker._make_room`).

The body limit applied in the loop is the largest any route allows
(:meth:`HeadReadingWorker.body_limit`): a ``Content-Length`` or chunk sizes declaring more are
handed to the application unread, which answers 413 at once (:func:`limit_declared_body` for
chunk sizes). The bytes read are given back to gunicorn's parser, the head through its unreader
and the body as the socket it reads from (:class:`~gateway_app.request_buffer.BufferedBody`), so gunicorn parses the request
once and the application sees what a plain gthread worker gives. The answer is written by the
thread, each write bounded by ``GATEWAY_CLIENT_TIMEOUT``. After any body that could not be read
whole, the answer says ``Connection: close``. gunicorn's own refusals (400, 414, 417, 431, 501)
are the gateway's JSON errors with fixed messages (:meth:`HeadReadingWorker.handle_error`).

A connection to close is half-closed and drained in the event loop too (gthread drains it on
the loop's thread for up to 2 s, so a client that does not close stalls every other one).

Requests are read in the loop only where their bytes are HTTP/1 on a plain socket: with
gunicorn's own TLS (``certfile``), HTTP/2 prior knowledge or the uwsgi protocol the worker
behaves as gthread. Built against gunicorn 27's gthread event loop (``enqueue_req`` is its one
hand-off to the pool, called on the loop's thread, and ``finish_request`` its one completion); ``setup.cfg`` pins that major version.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import heapq
import http
import itertools
import os
import selectors
import socket
import ssl
import time
import typing as t
from functools import partial

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.http.body import ChunkedReader
from gunicorn.http.body import LengthReader
from gunicorn.http.errors import LimitRequestHeaders
from gunicorn.http.parser import RequestParser
from gunicorn.http import wsgi as gunicorn_wsgi
from gunicorn.http2 import negotiation
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers import gthread

from .errors import GatewayError
from .errors import PayloadTooLargeError
from .errors import RequestTimeoutError
from .errors import error_json
from .fair_queue import FairPool
from .log_throttle import LogThrottle
from .overload import OVERLOAD_CHECK_INTERVAL
from .overload import OVERLOAD_FRACTION
from .overload import OVERLOAD_FREED_SHARE
from .overload import OVERLOAD_PEER_FLOOR
from .overload import OVERLOAD_TIMEOUT
from .overload import Waiting
from .overload import overload_victims
from .overload import peer_key
from .overload import reserve_threads
from .preflight import PREFLIGHT
from .preflight import PREFLIGHT_AUTHENTICATED
from .preflight import PREFLIGHT_PASSED
from .preflight import PREFLIGHT_PRINCIPAL
from .preflight import PREFLIGHT_UNFINISHED
from .request_buffer import BodyBudget
from .request_buffer import BufferedBody
from .request_buffer import HeadLimits
from .request_buffer import Refusal
from .request_buffer import RequestBuffer
from .request_buffer import RequestState
from .request_buffer import SERVER_BUSY

HEAD_TIMEOUT_ENV = "GATEWAY_HEAD_TIMEOUT"
QUEUE_TIMEOUT_ENV = "GATEWAY_QUEUE_TIMEOUT"
DEFAULT_QUEUE_TIMEOUT = 10.0       # seconds a request may wait for a thread (HAProxy's "timeout queue")
QUEUED = 0.05                      # seconds: work that waited this long for a thread was queued
_NOW = int(socket.MSG_DONTWAIT)                  # recv flags as ints: an enum's ``|`` costs a call
_PEEK_NOW = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
DEFAULT_HEAD_TIMEOUT = 10.0
CLIENT_TIMEOUT_ENV = "GATEWAY_CLIENT_TIMEOUT"
DEFAULT_CLIENT_TIMEOUT = 30.0
MIN_BODY_RATE_ENV = "GATEWAY_MIN_BODY_RATE"
DEFAULT_MIN_BODY_RATE = 240.0      # bytes/s: Kestrel's MinRequestBodyDataRate default
MIN_BODY_RATE_WINDOW = 5.0         # seconds: each window must hold rate x window bytes (Kestrel's grace)
MAX_HEAD_BYTES_ENV = "GATEWAY_MAX_HEAD_BYTES"
DEFAULT_MAX_HEAD_BYTES = 64 * 1024               # nginx's large_client_header_buffers 4 x 8k is 32 KiB
BUFFERED_BODY_BYTES_ENV = "GATEWAY_BUFFERED_BODY_BYTES"
DEFAULT_BUFFERED_BODY_BYTES = 24 * 1024 * 1024   # per worker: 2 workers fit deploy/k8s's 64 MiB /tmp with room
RECV_SIZE = 65536
READ_PER_EVENT = 1024 * 1024       # bytes one readiness event may read before the loop serves others
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# A closed connection's lingering read (RFC 9112 §9.6): as gunicorn's util.close_graceful.
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 65536


def seconds_from_env(name: str, default: float, environ: t.Mapping[str, str] | None = None) -> float:
    """A duration in seconds from the environment variable ``name``, else ``default``.

    :raises ValueError: the value is not a finite number of seconds above 0.
    """
    return _number_from_env(name, default, environ, zero_allowed=False, unit="seconds")


def _number_from_env(name: str, default: float, environ: t.Mapping[str, str] | None, *, zero_allowed: bool,
                     unit: str) -> float:
    env = os.environ if environ is None else environ
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        number = float(raw)
    except ValueError:
        number = float("nan")
    if not (0 <= number if zero_allowed else 0 < number) or not number < float("inf"):
        raise ValueError(f"{name} must be a number of {unit} {'0 or above' if zero_allowed else 'above 0'}, "
                         f"got {raw!r}")
    return number


def timeouts_from_env(environ: t.Mapping[str, str] | None = None) -> tuple[float, float]:
    """``(head deadline, client I/O timeout)`` in seconds: ``GATEWAY_HEAD_TIMEOUT`` (default 10),
    ``GATEWAY_CLIENT_TIMEOUT`` (default 30).

    :raises ValueError: see :func:`seconds_from_env`.
    """
    return (seconds_from_env(HEAD_TIMEOUT_ENV, DEFAULT_HEAD_TIMEOUT, environ),
            seconds_from_env(CLIENT_TIMEOUT_ENV, DEFAULT_CLIENT_TIMEOUT, environ))


def queue_timeout_from_env(environ: t.Mapping[str, str] | None = None) -> float:
    """``GATEWAY_QUEUE_TIMEOUT``: seconds a request may wait for a thread, default 10.

    :raises ValueError: see :func:`seconds_from_env`.
    """
    return seconds_from_env(QUEUE_TIMEOUT_ENV, DEFAULT_QUEUE_TIMEOUT, environ)


def min_body_rate_from_env(environ: t.Mapping[str, str] | None = None) -> float:
    """``GATEWAY_MIN_BODY_RATE``: bytes/s a request body must hold in every 5 s window; 0 turns it off.

    :raises ValueError: not a finite number of bytes per second, 0 or above.
    """
    return _number_from_env(MIN_BODY_RATE_ENV, DEFAULT_MIN_BODY_RATE, environ, zero_allowed=True,
                            unit="bytes per second")


def buffered_body_bytes_from_env(environ: t.Mapping[str, str] | None = None) -> int:
    """``GATEWAY_BUFFERED_BODY_BYTES``: bytes of request bodies one worker may hold buffered at once
    (memory and temporary files), default 24 MiB.

    :raises ValueError: not a number of bytes above 0.
    """
    return int(_number_from_env(BUFFERED_BODY_BYTES_ENV, DEFAULT_BUFFERED_BODY_BYTES, environ, zero_allowed=False,
                                unit="bytes"))


def max_head_bytes_from_env(environ: t.Mapping[str, str] | None = None) -> int:
    """``GATEWAY_MAX_HEAD_BYTES``: bytes a whole request head may fill, request line and fields, default 64 KiB.

    :raises ValueError: not a number of bytes above 0.
    """
    return int(_number_from_env(MAX_HEAD_BYTES_ENV, DEFAULT_MAX_HEAD_BYTES, environ, zero_allowed=False,
                                unit="bytes"))




class MinRateWindow:
    """The minimum data rate of a request body, per window: at least ``rate * window`` bytes in every
    ``window`` seconds, and some byte every ``idle_timeout`` seconds.

    A window starts when the head is whole and a new one as soon as the current one holds its
    quota, so a burst followed by a trickle is cut one window after the burst (an average from
    the first read is not: 1 MB then a byte every 10 s keeps 240 bytes/s for an hour). The
    quota is Kestrel's ``MinRequestBodyDataRate`` (240 bytes/s, 5 s grace) measured as nginx's
    ``client_body_timeout`` is: per period, not since the start. ``rate`` 0: the idle timeout only.
    Times are seconds of an injected monotonic clock.
    """

    def __init__(self, rate: float, window: float, idle_timeout: float, now: float) -> None:
        self._quota = rate * window
        self._window = window
        self._idle_timeout = idle_timeout
        self._window_start = self._last_read = now
        self._in_window = 0

    def feed(self, size: int, now: float) -> None:
        """``size`` bytes arrived at ``now``."""
        if size <= 0:
            return
        self._last_read = now
        self._in_window += size
        if self._quota and self._in_window >= self._quota:
            self._window_start, self._in_window = now, 0

    @property
    def deadline(self) -> float:
        """When the body is too slow, unless more bytes arrive before."""
        idle = self._last_read + self._idle_timeout
        return min(idle, self._window_start + self._window) if self._quota else idle


class _GuardedBodyReader:
    """gunicorn's body reader for one request: an answer sent before the body was read whole (a read
    failed, or the body was refused unread) closes the connection, and chunk sizes are checked
    against the body limit as they are declared.

    gunicorn answers ``keep-alive`` after a body it could not read, and drains an unread body on
    a pool thread at the client's pace before the next request; where the next request starts
    is unknown or far, so the connection closes instead (RFC 9112 §9.6, as nginx after a 413).
    """

    def __init__(self, reader: t.Any, req: t.Any) -> None:
        self._reader = reader
        self._failed = False
        should_close = req.should_close
        req.should_close = lambda: self._failed or not self._complete() or should_close()
        self._limit: int | None = None
        self._declared = 0
        if isinstance(reader, ChunkedReader):
            parse = reader.parse_chunk_size

            def parse_checked(*args: t.Any, **kwargs: t.Any) -> tuple[int, t.Any]:
                size, rest = parse(*args, **kwargs)
                self._declare(size)
                return size, rest

            reader.parse_chunk_size = parse_checked

    def limit(self, max_bytes: int) -> None:
        self._limit = max_bytes

    def _declare(self, size: int) -> None:
        self._declared += size
        if self._limit is not None and self._declared > self._limit:
            raise PayloadTooLargeError(f"chunk sizes declare more than {self._limit} bytes")

    def _complete(self) -> bool:
        if isinstance(self._reader, LengthReader):
            return self._reader.length == 0
        if isinstance(self._reader, ChunkedReader):
            return self._reader.parser is None and self._reader.buf.tell() == 0
        return True

    def read(self, size: int) -> bytes:
        try:
            return t.cast(bytes, self._reader.read(size))
        except BaseException:
            self._failed = True
            raise


def budget_shortfall(largest_body: int | None, budget: BodyBudget) -> str | None:
    """What an operator should know when a route allows bodies larger than :attr:`BodyBudget.largest`
    (those are refused 503 ``server_busy``), or None. ``largest_body``: bytes, None for no limit."""
    if largest_body is not None and largest_body <= budget.largest:
        return None
    allowed = "unlimited bodies" if largest_body is None else f"bodies of {largest_body} bytes"
    return (f"a route allows {allowed}, but a body above {budget.largest} bytes (half of "
            f"{BUFFERED_BODY_BYTES_ENV}={budget.limit}) is refused 503 server_busy: raise "
            f"{BUFFERED_BODY_BYTES_ENV} to twice the largest body limit")


def limit_declared_body(environ: t.Mapping[str, t.Any], max_bytes: int) -> None:
    """Refuse (413) a chunked body as soon as its chunk sizes add up to more than ``max_bytes``.

    Under :class:`HeadReadingWorker` the check runs when each chunk-size line is parsed
    (RFC 9112 §7.1), before the chunk's data is awaited; elsewhere it does nothing (the
    application still counts the bytes it reads).
    """
    reader = getattr(environ.get("wsgi.input"), "reader", None)
    if isinstance(reader, _GuardedBodyReader):
        reader.limit(max_bytes)


SHED_QUEUED = dataclasses.replace(SERVER_BUSY, detail="waiting for a thread at worker_connections, from the "
                                                      "address with most requests waiting")
QUEUE_TIMED_OUT = dataclasses.replace(SERVER_BUSY, detail="waited longer than GATEWAY_QUEUE_TIMEOUT for a thread")
LEFT_WHILE_QUEUED = dataclasses.replace(SERVER_BUSY, detail="the client closed while its request waited for a thread")


@dataclasses.dataclass(eq=False)
class _Pending:
    """A connection whose request is being read in the loop."""

    request: RequestBuffer
    started: float                # time.monotonic(): accepted, or the first byte of a kept-alive request
    window: MinRateWindow | None = None
    body_started: float = 0.0     # time.monotonic() when the head was whole (with ``window``)
    window_seen: int = 0          # body bytes fed to the window
    continued: bool = False       # "100 Continue" sent
    unfinished: t.Callable[[int, str], None] | None = None   # records it if the loop answers it (PREFLIGHT_UNFINISHED)
    # "", "running" (a thread decides on the head), "done", "skipped" (its address has enough decided: the
    # body is read first), "awaiting" (so, but the client waits for "100 Continue": it waits for a decision)
    preflight: str = ""
    cap: float = float("inf")     # a stopping worker's deadline


class _Stale(t.NamedTuple):
    """What a pool thread returns for queued work it did not do (:meth:`HeadReadingWorker._stale`)."""

    refusal: Refusal


class _Verdict(t.NamedTuple):
    """How a request passed the decision on its head (:meth:`HeadReadingWorker._preflight`)."""

    authenticated: bool = False        # a credential was validated (PREFLIGHT_AUTHENTICATED)
    principal: str = ""                # whom it names (PREFLIGHT_PRINCIPAL)
    unfinished: t.Callable[[int, str], None] | None = None    # PREFLIGHT_UNFINISHED


@dataclasses.dataclass
class _Parked:
    """What a pool thread returns for a request still incomplete: the loop waits for the rest."""

    request: RequestBuffer


@dataclasses.dataclass
class _Handoff:
    """What the loop read of a request, for the thread that serves it."""

    body: BufferedBody | None
    continued: bool               # gunicorn sends no "100 Continue"


@dataclasses.dataclass
class _Lingering:
    deadline: float               # time.monotonic()
    drained: int = 0


class HeadReadingWorker(gthread.ThreadWorker):
    """gunicorn's gthread worker that reads each request, head and body, in its event loop, within deadlines.

    ``gunicorn -k gateway_app.worker.HeadReadingWorker`` (``conf/gunicorn.conf.py`` sets it).
    Settings: gunicorn's own (``threads``, ``keepalive``, ``worker_connections``, ``limit_request_*``),
    ``GATEWAY_HEAD_TIMEOUT``, ``GATEWAY_CLIENT_TIMEOUT``, ``GATEWAY_MIN_BODY_RATE`` and
    ``GATEWAY_BUFFERED_BODY_BYTES`` (see the module docstring).
    """

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout, self.client_timeout = timeouts_from_env()
        self.queue_timeout = queue_timeout_from_env()
        self.min_body_rate = min_body_rate_from_env()
        self.body_budget = BodyBudget(buffered_body_bytes_from_env())
        self.head_limits = HeadLimits.from_config(self.cfg, max_head_bytes_from_env())
        self.reads_heads = not self.cfg.is_ssl and getattr(self.cfg, "protocol", "http") == "http"
        self.high_water = max(1, int(self.worker_connections * OVERLOAD_FRACTION))
        # Insertion order is arrival order; deadlines are kept in a heap, checked lazily.
        self.pending: dict[gthread.TConn, _Pending] = {}
        self._deadlines: list[tuple[float, int, gthread.TConn, _Pending]] = []
        self._sequence = itertools.count()
        self.handoffs: dict[gthread.TConn, _Handoff] = {}
        self.lingering: dict[gthread.TConn, _Lingering] = {}
        self._next_overload_check = 0.0
        self._next_left_out = 0.0
        # heads being decided (or waiting to be) per client address: at most half the threads each
        self.preflights_running: collections.Counter[str] = collections.Counter()
        # per address: heads beyond its decision slots whose clients wait for "100 Continue" (``awaiting``)
        self.awaiting_preflight: collections.defaultdict[str, collections.deque[tuple[gthread.TConn, _Pending]]] = \
            collections.defaultdict(collections.deque)
        self.pool: FairPool | None = None       # made with gthread's thread pool (get_thread_pool)
        self.log_throttle = LogThrottle()

    @classmethod
    def check_config(cls, cfg: t.Any, log: t.Any) -> None:
        """In the master, before any worker starts: a bad timeout in the environment stops start-up.

        :raises ValueError: see :func:`timeouts_from_env`.
        """
        super().check_config(cfg, log)
        timeouts_from_env()
        queue_timeout_from_env()
        min_body_rate_from_env()
        buffered_body_bytes_from_env()
        max_head_bytes_from_env()
        if cfg.is_ssl:
            log.warning("gunicorn terminates TLS here: requests are read by pool threads "
                        "without the %s deadline; terminate TLS in front of the gateway", HEAD_TIMEOUT_ENV)

    def load_wsgi(self) -> None:
        """gunicorn's, then one warning when a route allows bodies the budget can never hold."""
        super().load_wsgi()
        problem = budget_shortfall(self.body_limit(), self.body_budget) if self.reads_heads else None
        if problem is not None:
            self.log.warning("%s", problem)

    def body_limit(self) -> int | None:
        """The most bytes a request body may declare here: the largest limit of any route of the app.

        The application refuses (413) what its route does not allow; the loop stops reading
        at the largest, so no route's allowance is cut. None: some route has no limit.
        """
        gateway = self._gateway()
        return gateway.largest_body_limit() if gateway is not None else None

    def enqueue_req(self, conn: gthread.TConn) -> None:
        """A new connection waits in the loop for its request; a readable kept-alive one goes to a thread.

        The thread reads without blocking (:meth:`handle`) and sends an incomplete request back
        here, so a client that sends its next request whole costs the loop nothing more than
        under gthread.
        """
        if conn.parser is None and self.reads_heads and not negotiation.prior_knowledge_allowed(self.cfg, conn.client):
            self._park(conn, RequestBuffer(self.head_limits, self.body_limit(), budget=self.body_budget,
                                           peer=peer_key(conn.client)))
        else:
            self._serve(conn)

    def _serve(self, conn: gthread.TConn) -> None:
        """gthread's ``enqueue_req``: :meth:`handle` in a pool thread, then :meth:`finish_request`, in turns."""
        self._run_in_pool(conn, partial(self.handle, conn), partial(self.finish_request, conn),
                          partial(self._shed_queued_request, conn))

    def get_thread_pool(self) -> concurrent.futures.Executor:
        """gthread's pool with :func:`reserve_threads` more, run through a :class:`FairPool`: work in
        turns between client addresses, the reserve for addresses with nothing running."""
        reserve = reserve_threads(self.cfg.threads)
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=self.cfg.threads + reserve)
        self.pool = FairPool(executor, self.cfg.threads, reserve, self.method_queue.defer)
        return executor

    def _run_in_pool(self, conn: gthread.TConn, work: t.Callable[[], t.Any],
                     done: t.Callable[[t.Any], None], shed: t.Callable[[Refusal], None]) -> None:
        """Run ``work()`` in a pool thread, then ``done(future)`` on the loop's thread with its outcome
        (:class:`FairPool`, keyed by :func:`peer_key`), not first come, first served as in gthread's
        executor: one address's flood of whole requests does not queue every other client behind
        it, nor keep every thread from them. ``shed(refusal)``, on the loop's
        thread, answers and closes the connection instead when the work is taken back before it
        ran (:meth:`shed_overload`) or is stale when a thread takes it (:meth:`_stale`).
        """
        assert self.pool is not None
        queued_at = time.monotonic()

        def run() -> t.Any:
            refusal = self._stale(conn, time.monotonic() - queued_at)
            return _Stale(refusal) if refusal is not None else work()

        def finish(future: t.Any) -> None:
            outcome = None if future.cancelled() or future.exception() is not None else future.result()
            if isinstance(outcome, _Stale):
                shed(outcome.refusal)
            else:
                done(future)

        self.pool.submit(peer_key(conn.client), run, finish, partial(shed, SHED_QUEUED))

    def _stale(self, conn: gthread.TConn, waited: float) -> Refusal | None:
        """In a pool thread, as queued work starts after ``waited`` seconds: why it is not worth doing.

        As HAProxy's ``timeout queue`` and ``option abortonclose``: a request that waited longer
        than ``GATEWAY_QUEUE_TIMEOUT`` for a thread is answered 503, and one whose client closed
        (or reset) the connection while it waited is dropped. Clients that send a request and
        close at once, keeping no socket, had queued hundreds of requests to a slow upstream that
        then ran one after another for minutes (red team 10 F1). Work that did not wait is done:
        a client that half-closes after its request still gets its answer.
        """
        if waited < QUEUED:
            return None
        if waited > self.queue_timeout:
            return QUEUE_TIMED_OUT
        return LEFT_WHILE_QUEUED if _closed_by_peer(conn.sock) else None

    def handle(self, conn: gthread.TConn) -> t.Any:
        """In a pool thread: gthread's, once the request is whole; an incomplete one goes back to the loop."""
        if self.reads_heads and conn.parser is not None and not conn.is_http2 and conn not in self.handoffs:
            # a kept-alive connection: its next request, read without blocking
            request = RequestBuffer(self.head_limits, self.body_limit(), conn.parser.unreader.take_buffered(),
                                    budget=self.body_budget, peer=peer_key(conn.client))
            waiting = self._receive(conn, request, _NOW)
            if request.state is RequestState.INCOMPLETE and (waiting or not request.in_body):
                return _Parked(request) if waiting else False    # False: the peer left, as gthread ends it
            if request.refusal is not None:
                self._answer_refusal(conn, request.refusal)
                return False                                     # lingers in the loop (finish_request)
            if request.state is RequestState.TOO_LARGE:
                return self._refuse_too_large(conn)
            self._hand_off(conn, request, continued=False)
        return super().handle(conn)

    def handle_request(self, req: t.Any, conn: gthread.TConn) -> bool:
        """In a pool thread, once the head is parsed: gthread's, reading the body the loop read.

        gunicorn's parser reads the body from what the loop buffered (:class:`~gateway_app.request_buffer.BufferedBody`).
        A write of the answer that the client does not take (one ``sendall``, up to 64 KiB), or
        a read the loop did not buffer, for ``GATEWAY_CLIENT_TIMEOUT`` seconds raises
        ``TimeoutError``: the connection is closed. A body that could not be read whole closes
        the connection (:class:`_GuardedBodyReader`).
        """
        conn.sock.settimeout(self.client_timeout)
        handoff = self.handoffs.pop(conn, None)
        unreader = getattr(conn.parser, "unreader", None)
        guarded = (isinstance(unreader, SocketUnreader) and not conn.is_http2 and req.body is not None
                   and not _bodiless(req.body.reader))
        if guarded:
            req.body.reader = _GuardedBodyReader(req.body.reader, req)
        body = handoff.body if handoff is not None else None
        if handoff is not None and handoff.continued:
            req._expected_100_continue = False      # sent by the loop, or the body is refused unread
        try:
            return super().handle_request(req, conn)
        except TimeoutError:
            self.log.info("Client at ip=%s took more than %g s to take the answer: closed",
                          _peer(conn), self.client_timeout)
            return False
        finally:
            if body is not None:
                self._end_handoff(conn, body)

    def finish_request(self, conn: gthread.TConn, fs: t.Any) -> None:
        """gthread's, except that a parked request waits in the loop and a closing connection lingers there.

        gthread closes a connection with ``util.close_graceful`` on the loop's thread: half-close,
        then read until the peer closes, for up to 2 s. A client that keeps the connection open
        stalls the whole worker for those 2 s; here the same lingering read waits in the poller.
        """
        handoff = self.handoffs.pop(conn, None)         # the thread ended before handle_request
        if handoff is not None and handoff.body is not None:
            self._end_handoff(conn, handoff.body)
        result = None if fs.cancelled() or fs.exception() is not None else fs.result()
        if isinstance(result, _Parked):
            self._park(conn, result.request)
        elif result or result is None or not self.reads_heads or conn.is_http2:
            super().finish_request(conn, fs)
        else:
            self._linger(conn)

    def _hand_off(self, conn: gthread.TConn, request: RequestBuffer, *, continued: bool) -> None:
        """Give gunicorn's parser the bytes read: the head through its unreader, the body as its socket."""
        if conn.parser is None:
            conn.init()         # plain HTTP/1: makes the parser, blocking socket; reads nothing
        unreader = conn.parser.unreader
        unreader.unread(bytes(request.head.data))
        body = request.buffered_body(conn.sock)
        if body is not None:
            unreader.sock = body          # every read of the body, wherever gunicorn makes it (h2c upgrade too)
        # No "100 Continue" from gunicorn once the loop sent it, nor for a body refused unread (RFC 9110 §10.1.1)
        self.handoffs[conn] = _Handoff(body, continued or request.too_large)

    @staticmethod
    def _end_handoff(conn: gthread.TConn, body: BufferedBody) -> None:
        """The client's socket back to gunicorn's unreader, after what it holds the bytes the loop read
        past the request (a pipelined one's start); the rest of an unread body is dropped (the
        connection closes: :class:`_GuardedBodyReader`)."""
        unreader = getattr(conn.parser, "unreader", None)
        rest = body.rest(RECV_SIZE)
        if isinstance(unreader, SocketUnreader) and unreader.sock is body:
            unreader.sock = conn.sock
            unreader.unread(unreader.take_buffered() + rest)

    def _park(self, conn: gthread.TConn, request: RequestBuffer) -> None:
        """Wait in the poller for the rest of the request, until its deadline."""
        try:
            if conn.sock.gettimeout() != 0.0:
                conn.sock.setblocking(False)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        except (OSError, ValueError, KeyError):
            self._drop(conn)
            return
        pending = _Pending(request, time.monotonic())
        self.pending[conn] = pending
        self._progress(conn, pending)
        if pending.window is None:
            self._push_deadline(conn, pending)

    def _on_readable(self, conn: gthread.TConn, _sock: t.Any) -> None:
        """The poller's callback for a request being read. One turn of the loop dispatches the events of
        one ``select``: a callback earlier in the turn may have ended this request (:meth:`_make_room`),
        and its event is then stale (red team 9: the KeyError ended the worker)."""
        pending = self.pending.get(conn)
        if pending is None:
            return
        try:
            if self._receive(conn, pending.request):
                self._progress(conn, pending)
                return
            if pending.request.refusal is not None:
                self._forget(conn)
                self._answer_refusal(conn, pending.request.refusal, pending)
                self._linger(conn)
                return
            # A client that half-closes after its head gets the answer to what it sent (400: a body cut short).
            ready = pending.request.state is RequestState.READY or pending.request.in_body
            self._forget(conn, served=ready)
            if ready:
                self._hand_off(conn, pending.request, continued=pending.continued)
                self._serve(conn)
            elif pending.request.state is RequestState.TOO_LARGE:
                self._refuse_too_large(conn)
                self._linger(conn)
            else:
                self._drop(conn)
        except Exception:
            self.log.exception("Error reading a request")
            self._forget(conn)
            self._drop(conn)

    def _progress(self, conn: gthread.TConn, pending: _Pending) -> None:
        """After bytes of a waiting request: start or feed its body window, answer ``Expect``, note deadlines."""
        request, now = pending.request, time.monotonic()
        if not request.in_body or pending.preflight == "running":
            return
        if pending.preflight == "awaiting":
            if not request.body_received:
                return                         # still waiting for a decision, and for "100 Continue"
            pending.preflight = "skipped"      # the client stopped waiting: its body is read first
        if not pending.preflight and request.state is RequestState.INCOMPLETE and self.preflights():
            if self.preflights_running[request.peer] < max(1, self.cfg.threads // 2):
                self._start_preflight(conn, pending)
                return
            if request.expects_continue and not request.body_received:
                pending.preflight = "awaiting"  # no "100 Continue" before a decision (RFC 9110 §10.1.1)
                self.awaiting_preflight[request.peer].append((conn, pending))
                return
            pending.preflight = "skipped"      # this address has heads decided: the body is read first
        if pending.window is None:
            pending.window = MinRateWindow(self.min_body_rate, MIN_BODY_RATE_WINDOW, self.client_timeout, now)
            pending.body_started = now
            self._push_deadline(conn, pending)
        pending.window.feed(request.body_received - pending.window_seen, now)
        pending.window_seen = request.body_received
        if request.expects_continue and not pending.continued:
            pending.continued = True
            try:
                conn.sock.send(CONTINUE)       # RFC 9110 §10.1.1: the client may wait for it before its body
            except OSError:
                pass                           # the client sends its body after its own wait

    def preflights(self) -> bool:
        """Whether the application decides on a head before its body is read (the gateway does)."""
        return self._gateway() is not None

    def _gateway(self) -> t.Any:
        """The gateway the WSGI app serves (:class:`gateway_app.gateway.Gateway`), None for another app."""
        return getattr(self.wsgi, "extensions", {}).get("gateway")

    def _start_preflight(self, conn: gthread.TConn, pending: _Pending) -> None:
        """Stop reading ``conn`` and let a pool thread decide on the head (:meth:`_preflight`)."""
        pending.preflight = "running"
        self.preflights_running[pending.request.peer] += 1
        self._unregister(conn)
        data = bytes(pending.request.head.data)
        head = data[:data.find(b"\r\n\r\n") + 4]
        self._run_in_pool(conn, partial(self._preflight, conn, head), partial(self._preflight_done, conn, pending),
                          partial(self._shed_queued_preflight, conn, pending))

    def _preflight(self, conn: gthread.TConn, head: bytes) -> _Verdict | None:
        """In a pool thread: whether to read the body of the request whose head is ``head``: None when
        it was answered, else how it passed.

        The body of a request is read only once its route and credential have been decided on,
        as nginx's ``auth_request`` and Envoy's ``ext_authz`` decide on the head: the
        application is called with ``environ[PREFLIGHT]`` and answers as it would, up to auth
        (:meth:`gateway_app.gateway.Gateway.handle`). A refusal (401, 403, 404, 413, ...) is
        written here with ``Connection: close``, without the body and without ``100 Continue``
        (RFC 9110 §10.1.1); a request that would go on is marked ``PREFLIGHT_PASSED`` (or
        ``PREFLIGHT_AUTHENTICATED``), and the loop reads its body. A head gunicorn's parser
        refuses goes on too: the thread that serves the request answers it, with the one parse.
        """
        try:
            request = next(RequestParser(self.cfg, iter([head]), conn.client))
            _, environ = gunicorn_wsgi.create(request, _NoSocket(), conn.client, conn.server, self.cfg)
        except Exception:
            return _Verdict()
        environ[PREFLIGHT] = True
        answer: list[t.Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> t.Callable:
            answer[:] = [status, headers]
            return lambda data: None

        try:
            chunks = self.wsgi(environ, start_response)
            try:
                body = b"".join(chunks)
            finally:
                getattr(chunks, "close", lambda: None)()
        except Exception:
            self.log.exception("Error deciding on a request head")
            return _Verdict()
        verdict, unfinished = environ.get(PREFLIGHT), environ.get(PREFLIGHT_UNFINISHED)
        if verdict == PREFLIGHT_AUTHENTICATED:
            return _Verdict(True, str(environ.get(PREFLIGHT_PRINCIPAL) or ""), unfinished)
        if verdict == PREFLIGHT_PASSED or not answer:
            return _Verdict(unfinished=unfinished)
        status, headers = answer
        fields = [(name, value) for name, value in headers
                  if name.lower() not in ("connection", "content-length", "transfer-encoding")]
        data = closing_answer(status, fields, body)
        try:
            conn.sock.settimeout(self.client_timeout)
            conn.sock.sendall(data)
        except OSError:
            pass
        return None

    def _preflight_ended(self, pending: _Pending) -> None:
        """A decision slot of ``pending``'s address is free: the next of its heads that waits for a
        decision before ``100 Continue`` (``awaiting``) takes it."""
        peer = pending.request.peer
        self.preflights_running[peer] -= 1
        if not self.preflights_running[peer]:
            del self.preflights_running[peer]
        awaiting = self.awaiting_preflight.get(peer)
        while awaiting:
            conn, waiting = awaiting.popleft()
            if self.pending.get(conn) is waiting and waiting.preflight == "awaiting":
                waiting.preflight = ""
                self._progress(conn, waiting)
                break
        if awaiting is not None and not awaiting:
            del self.awaiting_preflight[peer]

    def _preflight_done(self, conn: gthread.TConn, pending: _Pending, future: t.Any) -> None:
        """On the loop's thread: read the body of a request that goes on; close one that was answered.

        The body of a request whose credential was validated may end bodies no credential
        vouches for when the budget is full (:meth:`_make_room`).
        """
        self._preflight_ended(pending)
        if self.pending.get(conn) is not pending:
            return                                       # closed meanwhile (the worker stops)
        failed = future.cancelled() or future.exception() is not None
        verdict = _Verdict() if failed else future.result()
        if verdict is None:
            self._forget(conn)
            self._linger(conn)
            return
        pending.preflight = "done"
        pending.unfinished = verdict.unfinished
        if verdict.authenticated:
            pending.request.authenticate(verdict.principal, partial(self._make_room, conn))
            if pending.request.refusal is not None:
                self._forget(conn)
                self._answer_refusal(conn, pending.request.refusal, pending)
                self._linger(conn)
                return
        try:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        except (OSError, ValueError, KeyError):
            self._forget(conn)
            self._drop(conn)
            return
        self._progress(conn, pending)

    def _make_room(self, conn: gthread.TConn, try_reserve: t.Callable[[], bool]) -> bool:
        """On the loop's thread, for the authenticated body on ``conn`` that the :class:`~gateway_app.request_buffer.BodyBudget` refused:
        end bodies no credential vouches for until ``try_reserve()`` succeeds; whether it did.

        Bodies being read in the loop, of requests not authenticated on their head (open routes,
        or read before any decision), are answered 503 ``server_busy`` and closed, those of
        the address holding most bytes first, then the largest. So anonymous bodies use the
        budget while nobody else needs it, and never keep an authenticated upload out (red team
        7: 64 addresses uploading to an open route kept every token-holding upload out).
        Bodies already whole, in a thread, are not ended: they are on their way.
        """
        victims = [(waiting, pending) for waiting, pending in self.pending.items()
                   if waiting is not conn and pending.request.reserved and not pending.request.authenticated
                   and pending.preflight != "running"]
        victims.sort(key=lambda victim: (self.body_budget.held_by(victim[1].request.budget_key),
                                         victim[1].request.reserved), reverse=True)
        for waiting, pending in victims:
            if try_reserve():
                return True
            self._forget(waiting)
            self._answer_refusal(waiting, dataclasses.replace(SERVER_BUSY, detail="body buffers taken by an "
                                                                                  "authenticated upload"), pending)
            self._linger(waiting)
        return try_reserve()

    def _deadline(self, pending: _Pending) -> float:
        if pending.preflight == "running":
            return float("inf")               # a thread decides; the client waits for us
        if pending.window is not None:
            deadline = pending.window.deadline
        else:
            deadline = pending.started + self.head_timeout
        return min(deadline, pending.cap)

    def _push_deadline(self, conn: gthread.TConn, pending: _Pending) -> None:
        """Note when ``pending`` is due; the heap of deadlines is rebuilt when mostly stale (served requests)."""
        if len(self._deadlines) > 2 * len(self.pending) + 64:
            self._deadlines = [(self._deadline(entry), next(self._sequence), waiting, entry)
                               for waiting, entry in self.pending.items()]
            heapq.heapify(self._deadlines)
            if self.pending.get(conn) is pending:
                return                                  # included
        heapq.heappush(self._deadlines, (self._deadline(pending), next(self._sequence), conn, pending))

    def _receive(self, conn: gthread.TConn, request: RequestBuffer, flags: int = 0) -> bool:
        """Read what the socket holds into ``request``; whether to wait for more (incomplete, peer there).

        At most :data:`READ_PER_EVENT` bytes per call, so one fast body does not hold the loop.
        """
        budget = READ_PER_EVENT
        while request.state is RequestState.INCOMPLETE:
            if budget <= 0:
                return True
            try:
                chunk = conn.sock.recv(RECV_SIZE, flags)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            if not chunk:
                return False
            budget -= len(chunk)
            request.feed(chunk)
        return False

    def _refuse_too_large(self, conn: gthread.TConn) -> bool:
        """gunicorn's own answer (431) to a head its parser would refuse as too large."""
        self.handle_error(None, conn.sock, conn.client, LimitRequestHeaders("max buffer headers"))
        return False

    def _answer_refusal(self, conn: gthread.TConn, refusal: Refusal, pending: _Pending | None = None) -> None:
        """The loop's own answer to a request it will not hand to a thread; one warning line, no traceback,
        and the access record of ``pending`` if its head passed (:meth:`_record_unfinished`)."""
        self._warn(refusal.reason, "Invalid request from ip=%s: %s%s", _peer(conn), refusal.reason,
                   f" ({refusal.detail})" if refusal.detail else "")
        headers = (("Retry-After", str(refusal.retry_after)),) if refusal.retry_after is not None else ()
        write_error_json(conn.sock, refusal.status, refusal.reason, refusal.message, headers)
        if pending is not None:
            self._record_unfinished(pending, refusal.status, refusal.reason)

    def _record_unfinished(self, pending: _Pending, status: int, reason: str) -> None:
        """The access record of a request whose head passed and that the loop answers itself before its
        body is whole (``PREFLIGHT_UNFINISHED``): it is never served, so the application would not
        record it (red team 11: a 408 after a passed head had no access record)."""
        record, pending.unfinished = pending.unfinished, None
        if record is None:
            return
        try:
            record(status, reason)
        except Exception:
            self.log.exception("Error recording a request the loop answered")

    def _forget(self, conn: gthread.TConn, served: bool = False) -> None:
        """Stop waiting for the request on ``conn``; its bytes are dropped unless it is ``served``."""
        pending = self.pending.pop(conn, None)
        if pending is not None and not served:
            pending.request.close()
        self._unregister(conn)

    def _unregister(self, conn: gthread.TConn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _drop(self, conn: gthread.TConn) -> None:
        self.nr_conns -= 1
        conn.close()

    def murder_keepalived(self, force: bool = False) -> None:
        """gthread's expiry of idle kept-alive connections, then of late requests and lingering closes
        (all when ``force``), and the overload rule (:meth:`shed_overload`)."""
        super().murder_keepalived(force)
        now = time.monotonic()
        if force:
            for conn in list(self.pending):
                self._forget(conn)
                self._drop(conn)
            self._deadlines.clear()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, conn, pending = heapq.heappop(self._deadlines)
            if self.pending.get(conn) is not pending:
                continue                                   # answered, or parked again since
            if self._deadline(pending) > now:
                self._push_deadline(conn, pending)         # bytes arrived: the deadline moved on
                continue
            self._expire(conn, pending)
        self.shed_overload(now)
        if force or now >= self._next_left_out:          # once a second, not at each turn of the loop
            self._next_left_out = now + 1.0
            self._tell_left_out()
        while self.lingering:
            conn, lingering = next(iter(self.lingering.items()))
            if lingering.deadline > now and not force:
                break
            self._end_lingering(conn)

    def shed_overload(self, now: float) -> None:
        """The overload rule (:func:`overload_victims`) on this worker's idle kept-alive connections and
        waiting requests, every :data:`OVERLOAD_CHECK_INTERVAL` (each turn of the loop at
        ``worker_connections``): an idle one is closed; a request is answered 408 if it sent
        anything, and closed at once in its head, after a short lingering read in its body (so
        an uploading client can read the answer rather than a reset). At ``worker_connections``,
        requests waiting for a thread from an address with more than its floor of them are taken
        back first (:meth:`_shed_queued`)."""
        if self.nr_conns < self.high_water:
            return
        if now < self._next_overload_check and self.nr_conns < self.worker_connections:
            return
        self._next_overload_check = now + OVERLOAD_CHECK_INTERVAL
        shed = 0
        if self.nr_conns >= self.worker_connections:
            shed = self._shed_queued(self.nr_conns - self.worker_connections
                                     + max(1, self.worker_connections // OVERLOAD_FREED_SHARE))
        idle = (Waiting(conn, conn.timeout - self.cfg.keepalive, peer_key(conn.client))
                for conn in self.keepalived_conns)
        waiting = (Waiting(conn, pending.started, pending.request.peer, self._body_rate(pending, now))
                   for conn, pending in self.pending.items() if pending.preflight != "running")
        assert self.pool is not None
        victims = overload_victims(idle, waiting, self.nr_conns - shed, self.high_water, self.worker_connections, now,
                                   busy=self.pool.load())
        for conn in victims:
            pending = self.pending.get(conn)
            if pending is None:                         # idle kept-alive: closed without an answer
                if _has_bytes(conn):
                    continue                            # its next request arrived: gthread takes it
                if self.keepalived_conns[0] is conn:
                    self.keepalived_conns.popleft()     # the oldest, most often
                else:
                    self.keepalived_conns.remove(conn)
                self._unregister(conn)
                self._drop(conn)
                continue
            self._forget(conn)
            if pending.request.head.data:
                self._time_out(conn, pending, overloaded=True)
            if pending.window is not None:
                self._linger(conn, OVERLOAD_TIMEOUT)
            else:
                self._drop(conn)

    def _shed_queued(self, count: int) -> int:
        """At ``worker_connections``, before the connections read in the loop: take back up to ``count``
        requests waiting for a thread, each the newest of the address with most waiting, while it
        has more than :data:`OVERLOAD_PEER_FLOOR` (:meth:`FairQueue.shed`), and answer them 503
        ``server_busy``; how many. A flood of whole requests from one address (to a slow route)
        otherwise holds every connection slot: the only connections the overload rule could
        close were other clients' new ones, and no other client was served."""
        assert self.pool is not None
        return self.pool.shed(count, OVERLOAD_PEER_FLOOR)

    def _shed_queued_request(self, conn: gthread.TConn, refusal: Refusal) -> None:
        """A request taken back from the queue: ``refusal`` (503), its buffered body dropped, closed."""
        handoff = self.handoffs.pop(conn, None)
        if handoff is not None and handoff.body is not None:
            handoff.body.rest(0)                        # the spool closed, the budget given back
        self._answer_refusal(conn, refusal)
        self._linger(conn, OVERLOAD_TIMEOUT)

    def _shed_queued_preflight(self, conn: gthread.TConn, pending: _Pending, refusal: Refusal) -> None:
        """A head's decision taken back from the queue: ``refusal`` (503), closed, the body never read."""
        self._preflight_ended(pending)
        self._forget(conn)
        self._answer_refusal(conn, refusal)
        self._linger(conn, OVERLOAD_TIMEOUT)

    @staticmethod
    def _body_rate(pending: _Pending, now: float) -> float | None:
        """Bytes/s of ``pending``'s body since its head was whole; None while the head arrives."""
        if pending.window is None:
            return None
        return pending.request.body_received / max(now - pending.body_started, 1e-3)

    def _expire(self, conn: gthread.TConn, pending: _Pending) -> None:
        """A request not whole in time: 408 when part of it came (one that sent nothing gets none, as from nginx)."""
        self._forget(conn)
        if pending.request.head.data:
            self._time_out(conn, pending)
            self._linger(conn)
        else:
            self._drop(conn)

    def _linger(self, conn: gthread.TConn, seconds: float = LINGER_SECONDS) -> None:
        """Half-close, then read (and drop) what the peer still sends until it closes or ``seconds`` pass.

        Closing with unread bytes would make the kernel send RST, which can destroy the answer
        just written before the client reads it (RFC 9112 §9.6).
        """
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_linger_readable, conn))
        except (OSError, ValueError, KeyError):
            self._drop(conn)
            return
        self.lingering[conn] = _Lingering(time.monotonic() + seconds)

    def _on_linger_readable(self, conn: gthread.TConn, _sock: t.Any) -> None:
        lingering = self.lingering.get(conn)
        if lingering is None:
            return                                  # a stale event (see _on_readable)
        try:
            while lingering.drained < LINGER_MAX_BYTES:
                data = conn.sock.recv(RECV_SIZE)
                if not data:
                    break
                lingering.drained += len(data)
        except (BlockingIOError, InterruptedError):
            if lingering.drained < LINGER_MAX_BYTES:
                return
        except OSError:
            pass
        self._end_lingering(conn)

    def _end_lingering(self, conn: gthread.TConn) -> None:
        self.lingering.pop(conn, None)
        self._unregister(conn)
        self._drop(conn)

    def handle_error(self, req: t.Any, client: t.Any, addr: t.Any, exc: BaseException) -> None:
        """gunicorn's answer to a request its parser refused, or to a failure outside the
        application, as the gateway's JSON error (:func:`write_error_json`): same statuses as
        gunicorn, a stable ``reason``, a fixed message, ``Connection: close``."""
        answer = parse_error_answer(exc)
        ip = addr[0] if isinstance(addr, tuple) else addr
        if answer is None or answer[1] == "internal_error":
            self.log.exception("Error handling request")
            answer = (500, "internal_error", "internal error")
        else:
            self._warn(answer[1], "Invalid request from ip=%s: %s", ip, type(exc).__name__)
        write_error_json(client, *answer)

    def _time_out(self, conn: gthread.TConn, pending: _Pending, overloaded: bool = False) -> None:
        """Answer 408 (RFC 9110 §15.5.9) to a request that did not arrive in time: ``head_too_slow``
        or ``body_too_slow`` (:class:`~gateway_app.errors.RequestTimeoutError`)."""
        if pending.window is not None:
            reason, message = RequestTimeoutError.reason, RequestTimeoutError.public_message
            what = f"body below {self.min_body_rate:g} bytes/s per {MIN_BODY_RATE_WINDOW:g} s"
        else:
            reason, message = "head_too_slow", "the request head arrived too slowly"
            what = f"head not complete after {self.head_timeout:g} s"
        if overloaded:
            what = f"{self.nr_conns} connections open, above {self.high_water}: {OVERLOAD_TIMEOUT:g} s to send a request"
        self._warn("overload" if overloaded else reason, "Request from ip=%s: %s: closed", _peer(conn), what)
        write_error_json(conn.sock, 408, reason, message)
        self._record_unfinished(pending, 408, reason)

    def _warn(self, kind: str, message: str, *args: t.Any) -> None:
        """A warning caused by a client, within the worker's :class:`~gateway_app.log_throttle.LogThrottle`."""
        if self.log_throttle.admit(kind):
            self.log.warning(message, *args)

    def _tell_left_out(self) -> None:
        for kind, count, seconds in self.log_throttle.left_out():
            self.log.warning("%d more warnings like '%s' in the last %.0f s were not logged", count, kind, seconds)

    def _cap_keepalive(self, deadline: float) -> None:
        """On stop, requests still arriving get what kept-alive connections get (gthread's linger)."""
        super()._cap_keepalive(deadline)
        for conn, pending in self.pending.items():
            pending.cap = min(pending.cap, deadline)
            self._push_deadline(conn, pending)


# gunicorn's parse errors as answers: (exception classes, status, reason, message). The first entry
# that matches wins; the message is fixed, never the input (gunicorn's own quotes the input).
PARSE_ERROR_ANSWERS: tuple[tuple[tuple[type[BaseException], ...], int, str, str], ...] = (
    ((http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName), 500, "internal_error",
     "internal error"),
    ((http_errors.InvalidRequestLine,), 400, "invalid_request_line", "invalid request line"),
    ((http_errors.InvalidRequestMethod,), 400, "invalid_method", "invalid request method"),
    ((http_errors.InvalidHTTPVersion,), 400, "invalid_http_version", "unsupported HTTP version"),
    ((http_errors.ObsoleteFolding,), 400, "invalid_header", "obsolete line folding in a header"),
    ((http_errors.InvalidHeaderName,), 400, "invalid_header", "invalid header name"),
    ((http_errors.InvalidHeader,), 400, "invalid_header", "invalid header"),
    ((http_errors.LimitRequestLine,), 414, "uri_too_long", "request line too long"),
    ((http_errors.LimitRequestHeaders,), 431, "header_fields_too_large", "request header fields too large"),
    ((http_errors.ExpectationFailed,), 417, "expectation_failed", "only the 100-continue expectation is supported"),
    ((http_errors.UnsupportedTransferCoding,), 501, "unsupported_transfer_coding", "unsupported transfer coding"),
    ((http_errors.InvalidChunkSize, http_errors.ChunkMissingTerminator, http_errors.InvalidChunkExtension), 400,
     "invalid_chunked_body", "invalid chunked body"),
    ((http_errors.InvalidProxyLine,), 400, "invalid_proxy_line", "invalid PROXY protocol line"),
    ((http_errors.ForbiddenProxyRequest,), 403, "forbidden", "request forbidden"),
    ((http_errors.InvalidSchemeHeaders,), 400, "invalid_scheme_headers", "contradictory scheme headers"),
    ((http_errors.InvalidH2CPreface,), 400, "invalid_http2_preface", "invalid HTTP/2 preface"),
    ((ssl.SSLError,), 403, "tls_error", "TLS error"),
)










def parse_error_answer(exc: BaseException) -> tuple[int, str, str] | None:
    """``(status, reason, message)`` for an error of gunicorn's parser (its statuses), None for any other."""
    for classes, status, reason, message in PARSE_ERROR_ANSWERS:
        if isinstance(exc, classes):
            return status, reason, message
    return None


def closing_answer(status: str, headers: t.Iterable[tuple[str, str]], body: bytes) -> bytes:
    """An HTTP/1.1 answer the loop writes itself: ``status`` (``"403 FORBIDDEN"``), ``Connection:
    close``, ``headers`` (Latin-1) and ``body`` with its ``Content-Length``."""
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (f"HTTP/1.1 {status}\r\nConnection: close\r\n{fields}Content-Length: {len(body)}\r\n\r\n"
            .encode("latin-1") + body)


def write_error_json(sock: t.Any, status: int, reason: str, message: str,
                     headers: t.Sequence[tuple[str, str]] = ()) -> None:
    """Answer ``status`` with the gateway's JSON error body (:func:`gateway_app.errors.error_json`),
    ``headers`` and ``Connection: close``, from outside the application (no request id). Send
    errors are ignored."""
    error = GatewayError(message, reason=reason, status_code=status)
    error.message_is_public = True          # fixed texts of this module, never the client's input
    body = error_json(error).encode()
    answer = closing_answer(f"{status} {http.HTTPStatus(status).phrase}",
                            [("Content-Type", "application/json"), *headers], body)
    try:
        util.write_nonblock(sock, answer)
    except OSError:
        pass


class _NoSocket:
    """The socket gunicorn's environ is made with for a preflight: nothing reaches the client through it
    (gunicorn may answer ``Expect: 100-continue`` on the socket it is given)."""

    def send(self, data: bytes, *args: t.Any) -> int:
        return len(data)

    def sendall(self, data: bytes, *args: t.Any) -> None:
        return None


def _closed_by_peer(sock: t.Any) -> bool:
    """Whether the peer closed or reset the connection and sent nothing more (a peek, never blocking)."""
    try:
        return sock.recv(1, _PEEK_NOW) == b""
    except (BlockingIOError, InterruptedError, ValueError):    # ValueError: TLS sockets take no flags
        return False
    except OSError:
        return True


def _bodiless(reader: t.Any) -> bool:
    """A request without a body (no framing field, or ``Content-Length: 0``): nothing to guard."""
    return isinstance(reader, LengthReader) and reader.length == 0


def _has_bytes(conn: gthread.TConn) -> bool:
    """Whether the client sent bytes the loop has not read (a request racing its idle connection's close)."""
    try:
        return bool(conn.sock.recv(1, _PEEK_NOW))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return False


def _peer(conn: gthread.TConn) -> str:
    return str(conn.client[0] if isinstance(conn.client, tuple) else conn.client)
