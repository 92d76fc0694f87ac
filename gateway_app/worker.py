"""The gunicorn worker: gthread, except that a request is read whole, head and body, before it takes a thread.

gunicorn's gthread worker hands a connection to its thread pool as soon as it is readable and
parses the request head there, then reads the body, with blocking reads: eight clients that
send one header line a second, or a body byte now and then, hold the eight threads of a 2 x 4
gateway, and every other client waits (issue 12, class 11; the red team's F1-F3).
:class:`HeadReadingWorker` reads requests without blocking, as nginx does with
``proxy_request_buffering on`` and Envoy with its buffer filter: a new connection waits in the
worker's event loop until its head is whole (:class:`HeadBuffer`) and then until its body is
(:class:`RequestBuffer`: ``Content-Length``, or chunked framing scanned to its last chunk and
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
each other client with work waiting, however many one address queued; and no address's work
holds more than three quarters of the threads (:func:`gateway_app.overload.threads_per_client`; trusted proxies
excepted), so a slow upstream one address keeps busy leaves threads to the others.

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
:class:`Refusal` answers below.

Buffered bodies are bounded per worker (:class:`BodyBudget`, ``GATEWAY_BUFFERED_BODY_BYTES``,
default 24 MiB, memory and temporary files together; past half of it, no client address holds
more than what is left free): a body whose next bytes are not granted, or that declares more
than half the budget, is answered 503 ``server_busy`` with ``Retry-After`` by the loop, as is a
failed spool write. A body authenticated on its head outranks the others: to make room for it,
bodies no credential vouches for are ended (:meth:`HeadReadingWorker._make_room`).

The body limit applied in the loop is the largest any route allows
(:meth:`HeadReadingWorker.body_limit`): a ``Content-Length`` or chunk sizes declaring more are
handed to the application unread, which answers 413 at once (:func:`limit_declared_body` for
chunk sizes). The bytes read are given back to gunicorn's parser, the head through its unreader
and the body as the socket it reads from (:class:`BufferedBody`), so gunicorn parses the request
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
import enum
import heapq
import http
import itertools
import os
import re
import selectors
import socket
import ssl
import tempfile
import threading
import time
import typing as t
from functools import partial

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.http.body import ChunkedReader
from gunicorn.http.body import LengthReader
from gunicorn.http.errors import LimitRequestHeaders
from gunicorn.http.message import DEFAULT_MAX_HEADERFIELD_SIZE
from gunicorn.http.message import MAX_HEADERS
from gunicorn.http.message import MAX_REQUEST_LINE
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
from .overload import threads_per_client
from .preflight import PREFLIGHT
from .preflight import PREFLIGHT_AUTHENTICATED
from .preflight import PREFLIGHT_PASSED
from .preflight import PREFLIGHT_PRINCIPAL

HEAD_TIMEOUT_ENV = "GATEWAY_HEAD_TIMEOUT"
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
BUSY_RETRY_AFTER = 5                             # seconds, the Retry-After of a 503 for a spent body budget
RECV_SIZE = 65536
READ_PER_EVENT = 1024 * 1024       # bytes one readiness event may read before the loop serves others
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# A closed connection's lingering read (RFC 9112 §9.6): as gunicorn's util.close_graceful.
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 65536
# gunicorn's fast parser takes an unlimited request line (limit_request_line = 0) as 1 MiB.
UNLIMITED_REQUEST_LINE = 1024 * 1024


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


class BodyBudget:
    """The bytes of request bodies one worker holds buffered (in memory and in temporary files), bounded.

    Bodies of open routes, and those read before their head is decided on (sent with it, or
    while the pool is busy deciding), come from anyone, so without a bound unauthenticated clients fill
    ``$TMPDIR`` (red team 3 F3: 7 uploads filled the 64 MiB ``/tmp`` of deploy/k8s). A request
    holds the bytes it has received so far; one whose next bytes are not granted is refused
    503 (:data:`SERVER_BUSY`), as Envoy's overload manager and nginx's ``limit_conn`` answer
    503. Counting what was received rather than what was declared makes a crowd of slow
    uploads that declare large bodies cost the attacker the bytes it holds (red team 4: 130
    unauthenticated uploads declaring 1 MB at the minimum rate spent a 24 MiB budget).

    Bytes are granted while they fit, except that past half of the budget no client address
    (:func:`peer_key`) may hold more than what is left free: one address filled 43 of 48 MB of
    two workers' budgets with trickled uploads, and every other client's uploads got 503 (red
    team 5 F1). Alone, an address holds up to half the budget; beside it, others keep at
    least as much as it holds, so k addresses leave at least 1/(k+1) of it to everyone else
    (nginx's ``limit_conn`` per ``$binary_remote_addr``, sized by what is left rather than
    fixed, so one large upload still fits an idle gateway). A body larger than
    :attr:`largest` can never be held. Thread-safe: reservations end on pool threads. The
    budget itself grants first come, first served; the worker ends anonymous bodies when an
    authenticated one is refused (:meth:`HeadReadingWorker._make_room`).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._held_by: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def largest(self) -> int:
        """The most bytes one address can hold, when it is alone: half the budget."""
        return self.limit // 2

    def reserve(self, size: int, peer: str = "") -> bool:
        """Take ``size`` more bytes for a body from ``peer`` if the rule above grants them; whether it did."""
        with self._lock:
            held = self.held + size
            mine = self._held_by.get(peer, 0) + size
            if held > self.limit or (held > self.largest and mine > self.limit - held):
                return False
            self.held = held
            self._held_by[peer] = mine
            return True

    def release(self, size: int, peer: str = "") -> None:
        """Give back ``size`` bytes ``peer`` reserved before."""
        with self._lock:
            self.held -= size
            mine = self._held_by.get(peer, 0) - size
            if mine > 0:
                self._held_by[peer] = mine
            else:
                self._held_by.pop(peer, None)

    def held_by(self, peer: str) -> int:
        """Bytes ``peer``'s bodies hold now."""
        with self._lock:
            return self._held_by.get(peer, 0)


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


@dataclasses.dataclass(frozen=True)
class HeadLimits:
    """The sizes gunicorn's parser allows a request head, normalized as its parser does.

    ``request_line``: bytes of the request line, 0 for no limit (``limit_request_line``).
    ``head``: bytes a head may fill before it is refused whatever follows (431); the request
    line plus ``limit_request_fields`` fields of ``limit_request_field_size`` bytes, at most
    ``max_head`` (``GATEWAY_MAX_HEAD_BYTES``: gunicorn's per-line limits allow about 1.6 MB,
    which 600 unfinished heads turned into 860 MB of RSS; nginx caps a head at
    ``large_client_header_buffers``). Source: ``gunicorn/http/message.py`` (``Message.__init__``,
    ``Request.__init__``).
    """

    request_line: int
    head: int

    @classmethod
    def from_config(cls, cfg: t.Any, max_head: int | None = None) -> HeadLimits:
        line = cfg.limit_request_line
        if line < 0 or line >= MAX_REQUEST_LINE:
            line = MAX_REQUEST_LINE
        fields = cfg.limit_request_fields
        if fields <= 0 or fields > MAX_HEADERS:
            fields = MAX_HEADERS
        field_size = cfg.limit_request_field_size
        if field_size <= 0:
            field_size = DEFAULT_MAX_HEADERFIELD_SIZE
        header_bytes = fields * (field_size + 2) + 4
        head = (line or UNLIMITED_REQUEST_LINE) + 4 + header_bytes
        return cls(request_line=line, head=head if max_head is None else min(head, max_head))


class HeadState(enum.Enum):
    """What the bytes read so far allow."""

    INCOMPLETE = "incomplete"   # wait for more bytes
    DECIDABLE = "decidable"     # gunicorn's parser accepts or refuses them without reading more
    TOO_LARGE = "too_large"     # no head can end within the limits: 431


class HeadBuffer:
    """The bytes of one request head as they arrive (and whatever follows them in the same reads).

    :meth:`feed` says when gunicorn's parser could decide on them without another read, by the
    parser's own rules (RFC 9112 §2.2): the head ends (``CRLF CRLF``); a bare LF is in it
    (refused at once); the request line is longer than its limit (414). Each byte is scanned
    once, so a client sending one byte at a time costs linear time.
    """

    def __init__(self, limits: HeadLimits, data: bytes = b"") -> None:
        self.limits = limits
        self.data = bytearray()
        self._scanned = 0
        self._line_end: int | None = None
        self.state = self.feed(data) if data else HeadState.INCOMPLETE

    def feed(self, chunk: bytes) -> HeadState:
        """Append ``chunk`` and return (and keep in :attr:`state`) what the bytes now allow."""
        self.data += chunk
        start, self._scanned = self._scanned, len(self.data)
        end = self.data.find(b"\r\n\r\n", max(start - 3, 0))
        if end >= 0 and end + 4 > self.limits.head:
            self.state = HeadState.TOO_LARGE          # ended, but beyond the cap
        elif end >= 0 or self._bare_lf_from(start) or self._request_line_too_long(start):
            self.state = HeadState.DECIDABLE
        elif len(self.data) > self.limits.head:
            self.state = HeadState.TOO_LARGE
        else:
            self.state = HeadState.INCOMPLETE
        return self.state

    def _bare_lf_from(self, start: int) -> bool:
        index = self.data.find(b"\n", start)
        while index >= 0:
            if index == 0 or self.data[index - 1] != 0x0D:
                return True
            index = self.data.find(b"\n", index + 1)
        return False

    def _request_line_too_long(self, start: int) -> bool:
        limit = self.limits.request_line
        line_start = 2 if self.data[:2] == b"\r\n" else 0   # one empty line may come first
        if self._line_end is None:
            end = self.data.find(b"\r\n", max(start - 1, line_start))
            if end < 0:
                return limit > 0 and len(self.data) - line_start - 2 > limit
            self._line_end = end
        return limit > 0 and self._line_end - line_start > limit


class Framing(enum.Enum):
    """How the end of a request body is found, as far as the loop needs to know (RFC 9112 §6.3)."""

    NONE = "none"             # no body
    LENGTH = "length"         # Content-Length
    CHUNKED = "chunked"       # Transfer-Encoding: chunked
    PARSER = "parser"         # anything else: gunicorn's parser decides at once (it refuses most)


@dataclasses.dataclass(frozen=True)
class BodyFraming:
    """The framing fields of one whole head: ``length`` in bytes for :attr:`Framing.LENGTH`."""

    framing: Framing
    length: int = 0
    expects_continue: bool = False     # ``Expect: 100-continue`` on HTTP/1.1 (RFC 9110 §10.1.1)


UNREADABLE_LENGTH = 10 ** 19      # bytes: a Content-Length of more than 18 digits, above any body limit or budget
_FRAMING_FIELD = re.compile(rb"\r\n(content-length|transfer-encoding|expect):([^\r]*)")


def body_framing(head: bytes) -> BodyFraming:
    """The framing of a request whose head ends in ``head`` (``CRLF CRLF`` found), read as gunicorn reads it.

    Only the cases gunicorn reads a body for are waited for: one ``Content-Length`` of digits, or
    ``Transfer-Encoding`` ending in ``chunked`` (once, after content codings only) on HTTP/1.1
    without ``Content-Length``. Anything else
    (duplicates, both, other codings, obsolete line folding) is :attr:`Framing.PARSER`: the
    request goes to gunicorn's parser without its body, which refuses it (RFC 9112 §6.3) or
    reads the body itself. This scan only decides how long to wait; gunicorn's parse of the
    same bytes is the one the application sees.
    """
    end = head.find(b"\r\n\r\n")
    start = 2 if head[:2] == b"\r\n" else 0          # one empty line may come first
    line_end = head.find(b"\r\n", start)
    http11 = head[start:line_end].endswith(b" HTTP/1.1")
    fields = head[line_end:end].lower()
    if b"\r\n " in fields or b"\r\n\t" in fields:     # obsolete line folding: refused
        return BodyFraming(Framing.PARSER)
    lengths: list[bytes] = []
    codings: list[bytes] = []
    expects = False
    for name, value in _FRAMING_FIELD.findall(fields):
        value = value.strip(b" \t")
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings.append(value)
        else:
            expects = http11 and value == b"100-continue"
    if codings:
        # gunicorn's reading: one list over every field; chunked once and last, after content codings
        listed = [coding.strip(b" \t") for coding in b",".join(codings).split(b",")]
        chunked = (listed[-1] == b"chunked" and listed.count(b"chunked") == 1 and not lengths and http11
                   and set(listed[:-1]) <= {b"gzip", b"deflate", b"compress", b"identity"})
        return BodyFraming(Framing.CHUNKED if chunked else Framing.PARSER, expects_continue=expects)
    if not lengths:
        return BodyFraming(Framing.NONE)
    if len(lengths) > 1 or not lengths[0].isdigit():
        return BodyFraming(Framing.PARSER)
    # gunicorn reads leading zeros (int()), so a long length of zeros is a small body to wait for here
    significant = lengths[0].lstrip(b"0")
    length = int(significant or b"0") if len(significant) <= 18 else UNREADABLE_LENGTH
    return BodyFraming(Framing.LENGTH, length, expects)


class ChunkedScanner:
    """Finds the end of a chunked body (RFC 9112 §7.1) in bytes fed as they arrive, keeping none of them.

    :attr:`declared` is the sum of the chunk sizes read so far; :attr:`done` is set after the
    last chunk's trailer section; :attr:`invalid` when the framing cannot be read (the loop
    refuses it: gunicorn's reader would wait on the socket for a CRLF, on a pool thread);
    :attr:`fragmented` when the body is mostly framing: after :data:`FREE_CHUNKS` chunks their
    data must average :data:`MIN_AVERAGE_CHUNK` bytes (a body of 1-byte chunks costs the loop a
    Python step per 6 bytes: red team 3 F4). Each byte is looked at once: lines are found with
    ``bytes.find`` from an offset, no slice of the input is copied but the line itself.
    """

    MAX_LINE = 4096            # a chunk-size line or trailer field longer than this is refused
    MAX_TRAILERS = 64 * 1024   # bytes of the trailer section (the head's cap: GATEWAY_MAX_HEAD_BYTES' default)
    FREE_CHUNKS = 1000
    MIN_AVERAGE_CHUNK = 64     # bytes

    def __init__(self) -> None:
        self.declared = 0
        self.chunks = 0
        self.done = False
        self.invalid = False
        self.fragmented = False
        self._line = b""               # the start of a line split between reads
        self._data_left = 0            # bytes of chunk data still to come
        self._crlf_left = 0
        self._trailer_bytes = -1       # -1: not in the trailer section yet

    def feed(self, data: bytes) -> None:
        """Scan ``data``; bytes after the end of the body are ignored."""
        pos, end = 0, len(data)
        while pos < end and not (self.done or self.invalid or self.fragmented):
            if self._data_left:
                step = min(self._data_left, end - pos)
                self._data_left -= step
                pos += step
            elif self._crlf_left:                  # the CRLF that ends a chunk's data
                self.invalid = data[pos] != b"\r\n"[2 - self._crlf_left]
                self._crlf_left -= 1
                pos += 1
            else:
                room = self.MAX_LINE - len(self._line)
                newline = data.find(b"\n", pos, pos + room)
                if newline < 0:
                    self._line += data[pos:pos + room]
                    pos = min(end, pos + room)
                    self.invalid = len(self._line) >= self.MAX_LINE
                    continue
                line, self._line = self._line + data[pos:newline + 1], b""
                pos = newline + 1
                self._end_line(line)

    def _end_line(self, line: bytes) -> None:
        if not line.endswith(b"\r\n"):
            self.invalid = True
        elif self._trailer_bytes >= 0:
            self._trailer_bytes += len(line)
            self.done = line == b"\r\n"
            self.invalid = self._trailer_bytes > self.MAX_TRAILERS
        else:
            size = line[:-2].split(b";", 1)[0].rstrip(b" \t")
            if not size or size.strip(b"0123456789abcdefABCDEF"):    # a long size is over the limit: 413
                self.invalid = True
                return
            chunk = int(size, 16)
            self.declared += chunk
            if chunk:
                self._data_left, self._crlf_left = chunk, 2
                self.chunks += 1
                self.fragmented = (self.chunks > self.FREE_CHUNKS
                                   and self.declared < self.MIN_AVERAGE_CHUNK * self.chunks)
            else:
                self._trailer_bytes = 0


class RequestState(enum.Enum):
    """What the bytes of a request read so far allow."""

    INCOMPLETE = "incomplete"   # wait for more bytes
    READY = "ready"             # gunicorn's parser and the application can have it without another read
    TOO_LARGE = "too_large"     # no head can end within the limits: 431
    REFUSED = "refused"         # the loop answers it itself (:attr:`RequestBuffer.refusal`), no thread


@dataclasses.dataclass(frozen=True)
class Refusal:
    """An answer the loop gives a request itself, then closes the connection: ``status``, the
    gateway's JSON error ``reason`` and fixed ``message``, ``retry_after`` seconds (503), and
    ``detail`` for the log line only."""

    status: int
    reason: str
    message: str
    retry_after: int | None = None
    detail: str = ""


INVALID_CHUNKED = Refusal(400, "invalid_chunked_body", "invalid chunked body")
FRAGMENTED_CHUNKED = Refusal(400, "chunks_too_small", "chunked body with too many small chunks")
VERSION_NOT_SUPPORTED = Refusal(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are supported")
COOKIE_REPEATED = Refusal(400, "cookie_repeated", "more than one Cookie header field")
EXPECT_REPEATED = Refusal(400, "expect_repeated", "more than one Expect header field")
_LATER_HTTP1 = re.compile(rb" HTTP/1\.[2-9]")


def head_refusal(head: bytes) -> Refusal | None:
    """The loop's own refusal of a whole request head (ending in ``CRLF CRLF``), or None.

    * ``HTTP/1.x`` with x above 1: gunicorn accepts it and echoes the version in its status
      line; 505 (RFC 9110 §15.6.6; RFC 9112 §2.3 lets a server answer 1.1, not 1.2).
    * more than one ``Cookie`` field: a user agent sends one (RFC 6265 §5.4), and the WSGI
      environ joins several with ``,``, which upstreams split differently from ``;``: 400.
    * more than one ``Expect`` field: whether the client waits for ``100 Continue`` would read
      two ways (the loop answers it, gunicorn reads the joined value): 400 (red team 4).
    """
    start = 2 if head[:2] == b"\r\n" else 0          # one empty line may come first
    line_end = head.find(b"\r\n", start)
    if _LATER_HTTP1.fullmatch(head, max(line_end - 9, start), line_end):
        return VERSION_NOT_SUPPORTED
    fields = head[line_end:].lower()
    if fields.count(b"\r\ncookie:") > 1:
        return COOKIE_REPEATED
    if fields.count(b"\r\nexpect:") > 1:
        return EXPECT_REPEATED
    return None


SERVER_BUSY = Refusal(503, "server_busy", "the gateway is busy, retry later", retry_after=BUSY_RETRY_AFTER)
SHED_QUEUED = dataclasses.replace(SERVER_BUSY, detail="waiting for a thread at worker_connections, from the "
                                                      "address with most requests waiting")


SPOOL_THRESHOLD = 64 * 1024     # bytes of a body kept in memory; beyond, a temporary file


class RequestBuffer:
    """One request read whole before it takes a thread: its head, then its body (request buffering).

    As nginx's ``proxy_request_buffering on`` and Envoy's buffer filter: the head is read into
    a :class:`HeadBuffer`; once it ends, :func:`body_framing` says how much body follows, which
    is read into :attr:`body` (memory up to 64 KiB, then a temporary file). The request is
    :attr:`RequestState.READY` when the body is whole, when its framing is not one to wait for,
    or when it declares more than ``body_limit`` bytes (a ``Content-Length`` or a chunk size:
    the application answers 413 without its data). The bytes are kept as read, for gunicorn's
    parser: :attr:`head` holds those read until the head ended (some body bytes, maybe), a spool the rest,
    possibly with the start of a pipelined request after the body (:meth:`buffered_body`).
    """

    def __init__(self, limits: HeadLimits, body_limit: int | None, data: bytes = b"",
                 budget: BodyBudget | None = None, peer: str = "",
                 spool: t.Callable[[], t.BinaryIO] = partial(tempfile.SpooledTemporaryFile, SPOOL_THRESHOLD)) -> None:
        self.head = HeadBuffer(limits)
        self.body_limit = body_limit
        self._budget = budget
        self.peer = peer                      # the client address (:func:`peer_key`)
        self.budget_key = peer                # whom the budget counts the bytes of: the address, or a principal
        # A credential was validated on the head (PREFLIGHT_AUTHENTICATED): when the budget is
        # full, ``make_room(try_reserve)`` may end bodies no credential vouches for.
        self.authenticated = False
        self.make_room: t.Callable[[t.Callable[[], bool]], bool] | None = None
        self._reserved = 0                    # bytes of the budget this body holds
        self._make_spool = spool
        self.framing: BodyFraming | None = None
        self._spool: t.BinaryIO | None = None        # made by the first body byte after the head
        self._body_bytes = 0                  # read after the end of the head
        self._chunks: ChunkedScanner | None = None
        self.too_large = False          # the body declares more than body_limit: refused 413 unread
        self.refusal: Refusal | None = None
        self.state = RequestState.INCOMPLETE
        if data:
            self.feed(data)

    @property
    def expects_continue(self) -> bool:
        """The client waits for ``100 Continue`` before its body, which is not all here yet."""
        return self.framing is not None and self.framing.expects_continue and self.state is RequestState.INCOMPLETE

    @property
    def in_body(self) -> bool:
        """The head is whole and the body is being read."""
        return self.framing is not None

    def feed(self, chunk: bytes) -> RequestState:
        """Append ``chunk`` and return (and keep in :attr:`state`) what the bytes now allow."""
        if self.framing is None:
            state = self.head.feed(chunk)
            if state is HeadState.TOO_LARGE:
                self.state = RequestState.TOO_LARGE
            elif state is HeadState.DECIDABLE:
                self._start_body()
            return self.state
        try:
            if self._spool is None:
                self._spool = self._make_spool()
            self._spool.write(chunk)
        except OSError as error:              # ENOSPC, EIO: the gateway's trouble, not the client's
            self.refuse(dataclasses.replace(SERVER_BUSY, detail=f"spooling the body failed: {error}"))
            return self.state
        self._body_arrived(chunk)
        return self.state

    def _start_body(self) -> None:
        data = bytes(self.head.data)
        end = data.find(b"\r\n\r\n")
        if end < 0:                           # a bare LF or a long request line: refused at once
            self.framing = BodyFraming(Framing.PARSER)
        else:
            self.framing = body_framing(data)
            refusal = head_refusal(data[:end + 4])
            if refusal is not None:
                self.refuse(refusal)
                return
        if self.framing.framing is Framing.CHUNKED:
            self._chunks = ChunkedScanner()
        self._body_arrived(data[end + 4:] if end >= 0 else b"")

    def _body_arrived(self, chunk: bytes) -> None:
        framing = self.framing
        assert framing is not None
        self._body_bytes += len(chunk)
        if framing.framing is Framing.LENGTH:
            if self._over_limit(framing.length):
                self._ready_if(True)
            elif self._fits(framing.length) and self._hold(self._body_bytes):
                self._ready_if(self._body_bytes >= framing.length)
        elif self._chunks is not None:
            self._chunks.feed(chunk)
            if self._chunks.invalid:
                self.refuse(INVALID_CHUNKED)
            elif self._chunks.fragmented:
                self.refuse(FRAGMENTED_CHUNKED)
            elif self._over_limit(self._chunks.declared):
                self._ready_if(True)
            elif self._fits(self._chunks.declared) and self._hold(self._body_bytes):
                self._ready_if(self._chunks.done)
        else:
            self.state = RequestState.READY

    def _fits(self, declared: int) -> bool:
        """A body that declares more than one address can ever hold can never be buffered: refused 503 at once."""
        if self._budget is not None and declared > self._budget.largest:
            self.refuse(dataclasses.replace(SERVER_BUSY, detail=f"body larger than the buffers ({self._budget.largest} bytes)"))
            return False
        return True

    def _hold(self, size: int) -> bool:
        """Reserve up to ``size`` bytes of the worker's :class:`BodyBudget` (the bytes received so far,
        not the size declared: a slow upload holds what it sent, so a crowd of clients declaring
        large bodies and trickling them cannot spend the budget; red team 4); refused 503 if they
        are not left."""
        more = size - self._reserved
        if self._budget is None or more <= 0:
            return True
        budget = self._budget

        def try_reserve() -> bool:
            return budget.reserve(more, self.budget_key)

        granted = try_reserve() or (self.authenticated and self.make_room is not None and self.make_room(try_reserve))
        if not granted:
            self.refuse(dataclasses.replace(SERVER_BUSY, detail=f"body buffers full ({self._budget.held} of "
                                                                f"{self._budget.limit} bytes held)"))
            return False
        self._reserved += more
        return True

    def authenticate(self, principal: str, make_room: t.Callable[[t.Callable[[], bool]], bool]) -> None:
        """The head was decided on with a validated credential naming ``principal`` (an opaque key;
        "" for none): the bytes held so far, and those to come, count for it rather than for the
        address, so one credential spread over many addresses holds one share (red team 9 F4), and
        when the budget is full ``make_room`` may end bodies no credential vouches for. The bytes
        held are counted again under the new key: refused 503 if they do not fit."""
        self.authenticated, self.make_room = True, make_room
        if not principal or self.state is not RequestState.INCOMPLETE:
            return
        self._release()
        self.budget_key = "principal:" + principal
        self._hold(self._body_bytes)

    @property
    def reserved(self) -> int:
        """Bytes of the worker's :class:`BodyBudget` this body holds."""
        return self._reserved

    def _release(self) -> None:
        reserved, self._reserved = self._reserved, 0
        if self._budget is not None and reserved:
            self._budget.release(reserved, self.budget_key)

    def _over_limit(self, declared: int) -> bool:
        self.too_large = self.body_limit is not None and declared > self.body_limit
        return self.too_large

    def _ready_if(self, ready: bool) -> None:
        self.state = RequestState.READY if ready else RequestState.INCOMPLETE

    @property
    def body_received(self) -> int:
        """Bytes read after the end of the head."""
        return self._body_bytes

    def buffered_body(self, sock: t.Any) -> BufferedBody | None:
        """The bytes read after the head, then ``sock``, for gunicorn's unreader; None when none were read."""
        spool, self._spool = self._spool, None
        if spool is None:
            self._release()
            return None
        spool.seek(0)
        return BufferedBody(spool, sock, self._release)

    def refuse(self, refusal: Refusal) -> None:
        """The loop answers this request itself (:attr:`RequestState.REFUSED`); its bytes are dropped."""
        self.refusal = refusal
        self.state = RequestState.REFUSED
        self.close()

    def close(self) -> None:
        """Drop the bytes read (the request will not be served)."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        self._release()


class BufferedBody:
    """A request body read by the loop, as the socket gunicorn's unreader reads from (``recv``).

    The thread's parser reads the body from here, never from the client; what is left after the
    request (the start of a pipelined one) goes back to the unreader (:meth:`rest`).
    """

    def __init__(self, spool: t.BinaryIO, sock: t.Any, release: t.Callable[[], None] = lambda: None) -> None:
        self._spool = spool
        self._sock = sock
        self._release = release          # gives the body's bytes back to the worker's BodyBudget

    def recv(self, size: int, flags: int = 0) -> bytes:
        """The next bytes read by the loop; once they are used up, the client's (a body gunicorn
        frames differently from :func:`body_framing`, which the loop did not wait for)."""
        return self._spool.read(size) or t.cast(bytes, self._sock.recv(size, flags))

    def rest(self, max_bytes: int = -1) -> bytes:
        """Up to ``max_bytes`` of the bytes not read yet (after a whole body: what one read took past
        its end); closes the spool (its temporary file, if any)."""
        data = self._spool.read(max_bytes)
        self._spool.close()
        self._release()
        return data


@dataclasses.dataclass(eq=False)
class _Pending:
    """A connection whose request is being read in the loop."""

    request: RequestBuffer
    started: float                # time.monotonic(): accepted, or the first byte of a kept-alive request
    window: MinRateWindow | None = None
    body_started: float = 0.0     # time.monotonic() when the head was whole (with ``window``)
    window_seen: int = 0          # body bytes fed to the window
    continued: bool = False       # "100 Continue" sent
    preflight: str = ""           # "", "running" (a thread decides on the head), "done", "skipped" (its address has enough decided)
    cap: float = float("inf")     # a stopping worker's deadline


class _Verdict(t.NamedTuple):
    """How a request passed the decision on its head (:meth:`HeadReadingWorker._preflight`)."""

    authenticated: bool = False        # a credential was validated (PREFLIGHT_AUTHENTICATED)
    principal: str = ""                # whom it names (PREFLIGHT_PRINCIPAL)


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
        # heads being decided (or waiting to be) per client address: at most half the threads each
        self.preflights_running: collections.Counter[str] = collections.Counter()
        self.pool: FairPool | None = None       # made with gthread's thread pool (get_thread_pool)
        self.log_throttle = LogThrottle()

    @classmethod
    def check_config(cls, cfg: t.Any, log: t.Any) -> None:
        """In the master, before any worker starts: a bad timeout in the environment stops start-up.

        :raises ValueError: see :func:`timeouts_from_env`.
        """
        super().check_config(cfg, log)
        timeouts_from_env()
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
        """gthread's pool, run through a :class:`FairPool`: work in turns between client addresses, and
        no address's work on more than :func:`threads_per_client` threads."""
        executor = super().get_thread_pool()
        self.pool = FairPool(executor, self.cfg.threads, threads_per_client(self.cfg.threads),
                             self.method_queue.defer)
        return executor

    def _run_in_pool(self, conn: gthread.TConn, work: t.Callable[[], t.Any],
                     done: t.Callable[[t.Any], None], shed: t.Callable[[], None]) -> None:
        """Run ``work()`` in a pool thread, then ``done(future)`` on the loop's thread with its outcome
        (:class:`FairPool`, keyed by :func:`peer_key`; trusted proxies uncapped), not first come,
        first served as in gthread's executor: one address's flood of whole requests does not queue
        every other client behind it, nor take every thread. ``shed()``, on the loop's thread,
        answers and closes the connection instead when the work is taken back before it ran
        (:meth:`shed_overload`).
        """
        assert self.pool is not None
        self.pool.submit(peer_key(conn.client), work, done, shed, uncapped=self._from_trusted_proxy(conn))

    def _from_trusted_proxy(self, conn: gthread.TConn) -> bool:
        gateway = self._gateway()
        client = conn.client[0] if isinstance(conn.client, tuple) else conn.client
        return gateway is not None and client in gateway.trusted_proxies

    def handle(self, conn: gthread.TConn) -> t.Any:
        """In a pool thread: gthread's, once the request is whole; an incomplete one goes back to the loop."""
        if self.reads_heads and conn.parser is not None and not conn.is_http2 and conn not in self.handoffs:
            # a kept-alive connection: its next request, read without blocking
            request = RequestBuffer(self.head_limits, self.body_limit(), conn.parser.unreader.take_buffered(),
                                    budget=self.body_budget, peer=peer_key(conn.client))
            waiting = self._receive(conn, request, socket.MSG_DONTWAIT)
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

        gunicorn's parser reads the body from what the loop buffered (:class:`BufferedBody`).
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
                self._answer_refusal(conn, pending.request.refusal)
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
        if not pending.preflight and request.state is RequestState.INCOMPLETE and self.preflights():
            if self.preflights_running[request.peer] < max(1, self.cfg.threads // 2):
                self._start_preflight(conn, pending)
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
        verdict = environ.get(PREFLIGHT)
        if verdict == PREFLIGHT_AUTHENTICATED:
            return _Verdict(authenticated=True, principal=str(environ.get(PREFLIGHT_PRINCIPAL) or ""))
        if verdict == PREFLIGHT_PASSED or not answer:
            return _Verdict()
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
        peer = pending.request.peer
        self.preflights_running[peer] -= 1
        if not self.preflights_running[peer]:
            del self.preflights_running[peer]

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
        if verdict.authenticated:
            pending.request.authenticate(verdict.principal, partial(self._make_room, conn))
            if pending.request.refusal is not None:
                self._forget(conn)
                self._answer_refusal(conn, pending.request.refusal)
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
        """On the loop's thread, for the authenticated body on ``conn`` that the :class:`BodyBudget` refused:
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
        held = collections.Counter()
        for _, pending in victims:
            held[pending.request.peer] += pending.request.reserved
        victims.sort(key=lambda victim: (held[victim[1].request.peer], victim[1].request.reserved), reverse=True)
        for waiting, pending in victims:
            if try_reserve():
                return True
            self._forget(waiting)
            self._answer_refusal(waiting, dataclasses.replace(SERVER_BUSY, detail="body buffers taken by an "
                                                                                  "authenticated upload"))
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

    def _answer_refusal(self, conn: gthread.TConn, refusal: Refusal) -> None:
        """The loop's own answer to a request it will not hand to a thread; one warning line, no traceback."""
        self._warn(refusal.reason, "Invalid request from ip=%s: %s%s", _peer(conn), refusal.reason,
                   f" ({refusal.detail})" if refusal.detail else "")
        headers = (("Retry-After", str(refusal.retry_after)),) if refusal.retry_after is not None else ()
        write_error_json(conn.sock, refusal.status, refusal.reason, refusal.message, headers)

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
        victims = overload_victims(idle, waiting, self.nr_conns - shed, self.high_water, self.worker_connections, now)
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

    def _shed_queued_request(self, conn: gthread.TConn) -> None:
        """A request taken back from the queue: 503 ``server_busy``, its buffered body dropped, closed."""
        handoff = self.handoffs.pop(conn, None)
        if handoff is not None and handoff.body is not None:
            handoff.body.rest(0)                        # the spool closed, the budget given back
        self._answer_refusal(conn, SHED_QUEUED)
        self._linger(conn, OVERLOAD_TIMEOUT)

    def _shed_queued_preflight(self, conn: gthread.TConn, pending: _Pending) -> None:
        """A head's decision taken back from the queue: 503 ``server_busy``, closed, the body never read."""
        self._preflight_ended(pending)
        self._forget(conn)
        self._answer_refusal(conn, SHED_QUEUED)
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


def _bodiless(reader: t.Any) -> bool:
    """A request without a body (no framing field, or ``Content-Length: 0``): nothing to guard."""
    return isinstance(reader, LengthReader) and reader.length == 0


def _has_bytes(conn: gthread.TConn) -> bool:
    """Whether the client sent bytes the loop has not read (a request racing its idle connection's close)."""
    try:
        return bool(conn.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return False


def _peer(conn: gthread.TConn) -> str:
    return str(conn.client[0] if isinstance(conn.client, tuple) else conn.client)
