"""The gunicorn worker: gthread, except that a request head is read whole before it takes a thread.

gunicorn's gthread worker hands a connection to its thread pool as soon as it is readable and
parses the request head there, with blocking reads: eight clients that send one header line a
second hold the eight threads of a 2 x 4 gateway, and every other client waits (issue 12,
class 11). :class:`HeadReadingWorker` reads heads without blocking: a new connection waits in
the worker's event loop until gunicorn's parser can decide on the bytes read (a whole head, or
one it refuses at once), and only then goes to the pool; a kept-alive connection that becomes
readable goes to a thread as under gthread, which reads what has arrived without blocking and,
if the head is not whole, sends it back to the loop for the rest. A head that is not whole
within the head deadline is answered ``408 Request Timeout`` (RFC 9110 §15.5.9) and the
connection closed; such a client never holds a thread for longer than one non-blocking read.

The deadline (``GATEWAY_HEAD_TIMEOUT``, seconds, default 10) starts when the connection is
accepted, and for a kept-alive connection when the first byte of its next request arrives (the
idle wait before that is gunicorn's ``keepalive``), as nginx's ``client_header_timeout`` does.
The bytes read are given back to gunicorn's parser through its unreader, so what the
application sees is what a plain gthread worker gives. A request body is read by the thread, as
before, but each wait on the client there is bounded (``GATEWAY_CLIENT_TIMEOUT``, default 30 s:
see :meth:`HeadReadingWorker.handle_request`), and the body must arrive at a minimum data rate
(``GATEWAY_MIN_BODY_RATE`` bytes/s averaged from its first read, default 240, after a 5 s grace:
Kestrel's ``MinRequestBodyDataRate``), else it is answered ``408`` and the connection closed, so
a client trickling a body holds a thread for about the grace period (:class:`MinRateSocket`).
A chunked body whose chunk sizes declare more than the body limit the application set
(:func:`limit_declared_body`) is refused ``413`` when the chunk-size line is read, before its
data. After any body that could not be read whole, the answer says ``Connection: close``.

A connection to close is half-closed and drained in the event loop too (gthread drains it on
the loop's thread for up to 2 s, so a client that does not close stalls every other one).

Heads are read only where their bytes are HTTP/1 on a plain socket: with gunicorn's own TLS
(``certfile``), HTTP/2 prior knowledge or the uwsgi protocol the worker behaves as gthread.
Built against gunicorn 27's gthread event loop (``enqueue_req`` is its one hand-off to the pool,
called on the loop's thread); ``setup.cfg`` pins that major version.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import selectors
import socket
import time
import typing as t
from functools import partial

from gunicorn import util
from gunicorn.http.body import ChunkedReader
from gunicorn.http.body import LengthReader
from gunicorn.http.errors import LimitRequestHeaders
from gunicorn.http.message import DEFAULT_MAX_HEADERFIELD_SIZE
from gunicorn.http.message import MAX_HEADERS
from gunicorn.http.message import MAX_REQUEST_LINE
from gunicorn.http2 import negotiation
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers import gthread

from .errors import PayloadTooLargeError
from .errors import RequestTimeoutError

HEAD_TIMEOUT_ENV = "GATEWAY_HEAD_TIMEOUT"
DEFAULT_HEAD_TIMEOUT = 10.0
CLIENT_TIMEOUT_ENV = "GATEWAY_CLIENT_TIMEOUT"
DEFAULT_CLIENT_TIMEOUT = 30.0
MIN_BODY_RATE_ENV = "GATEWAY_MIN_BODY_RATE"
DEFAULT_MIN_BODY_RATE = 240.0      # bytes/s: Kestrel's MinRequestBodyDataRate default
MIN_BODY_RATE_GRACE = 5.0          # seconds: Kestrel's grace period
RECV_SIZE = 65536
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
    """``GATEWAY_MIN_BODY_RATE``: bytes/s a request body must average after the grace period; 0 turns it off.

    :raises ValueError: not a finite number of bytes per second, 0 or above.
    """
    return _number_from_env(MIN_BODY_RATE_ENV, DEFAULT_MIN_BODY_RATE, environ, zero_allowed=True,
                            unit="bytes per second")


class MinRateSocket:
    """The client socket as the request-body reader sees it: each ``recv`` bounded by the minimum data rate.

    From the first ``recv`` the client must have sent, on average, ``rate`` bytes/s, checked
    once ``grace`` seconds have passed (Kestrel's ``MinRequestBodyDataRate``: 240 bytes/s after
    5 s). A ``recv`` waits at most until the rate would be missed, and at most ``timeout``
    seconds (``GATEWAY_CLIENT_TIMEOUT``, whose expiry stays a ``TimeoutError``).

    :raises RequestTimeoutError: the body arrives slower than ``rate`` (408).
    """

    def __init__(self, sock: socket.socket, rate: float, grace: float, timeout: float,
                 clock: t.Callable[[], float] = time.monotonic) -> None:
        self._sock = sock
        self._rate = rate
        self._grace = grace
        self._timeout = timeout
        self._clock = clock
        self._started: float | None = None
        self.received = 0

    def recv(self, size: int, flags: int = 0) -> bytes:
        now = self._clock()
        if self._started is None:
            self._started = now
        due = self._started + max(self._grace, self.received / self._rate)   # when the rate is missed
        wait = min(self._timeout, due - now)
        if wait <= 0:
            raise RequestTimeoutError(f"request body slower than {self._rate:g} bytes/s")
        self._sock.settimeout(wait)
        try:
            data = self._sock.recv(size, flags)
        except TimeoutError:
            if wait < self._timeout:
                raise RequestTimeoutError(f"request body slower than {self._rate:g} bytes/s") from None
            raise
        finally:
            self._sock.settimeout(self._timeout)
        self.received += len(data)
        return data


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
    ``head``: bytes a head may fill before the parser refuses it whatever follows (431); the
    request line plus ``limit_request_fields`` fields of ``limit_request_field_size`` bytes.
    Source: ``gunicorn/http/message.py`` (``Message.__init__``, ``Request.__init__``).
    """

    request_line: int
    head: int

    @classmethod
    def from_config(cls, cfg: t.Any) -> HeadLimits:
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
        return cls(request_line=line, head=(line or UNLIMITED_REQUEST_LINE) + 4 + header_bytes)


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
        if self.data.find(b"\r\n\r\n", max(start - 3, 0)) >= 0 or self._bare_lf_from(start) \
                or self._request_line_too_long(start):
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


@dataclasses.dataclass
class _PendingHead:
    head: HeadBuffer
    deadline: float               # time.monotonic()


@dataclasses.dataclass
class _Parked:
    """What a pool thread returns for a head still incomplete: the loop waits for the rest."""

    head: HeadBuffer


@dataclasses.dataclass
class _Lingering:
    deadline: float               # time.monotonic()
    drained: int = 0


class HeadReadingWorker(gthread.ThreadWorker):
    """gunicorn's gthread worker that reads each request head in its event loop, within a deadline.

    ``gunicorn -k gateway_app.worker.HeadReadingWorker`` (``conf/gunicorn.conf.py`` sets it).
    Settings: gunicorn's own (``threads``, ``keepalive``, ``limit_request_*``),
    ``GATEWAY_HEAD_TIMEOUT`` and ``GATEWAY_CLIENT_TIMEOUT`` (see the module docstring).
    """

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout, self.client_timeout = timeouts_from_env()
        self.min_body_rate = min_body_rate_from_env()
        self.head_limits = HeadLimits.from_config(self.cfg)
        self.reads_heads = not self.cfg.is_ssl and getattr(self.cfg, "protocol", "http") == "http"
        # Insertion order is deadline order: every entry gets the same timeout from "now".
        self.pending_heads: dict[gthread.TConn, _PendingHead] = {}
        self.lingering: dict[gthread.TConn, _Lingering] = {}

    @classmethod
    def check_config(cls, cfg: t.Any, log: t.Any) -> None:
        """In the master, before any worker starts: a bad timeout in the environment stops start-up.

        :raises ValueError: see :func:`timeouts_from_env`.
        """
        super().check_config(cfg, log)
        timeouts_from_env()
        min_body_rate_from_env()
        if cfg.is_ssl:
            log.warning("gunicorn terminates TLS here: request heads are read by pool threads "
                        "without the %s deadline; terminate TLS in front of the gateway", HEAD_TIMEOUT_ENV)

    def enqueue_req(self, conn: gthread.TConn) -> None:
        """A new connection waits in the loop for its head; a readable kept-alive one goes to a thread.

        The thread reads without blocking (:meth:`handle`) and sends an incomplete head back
        here, so a client that sends its next request whole costs the loop nothing more than
        under gthread.
        """
        if conn.parser is None and self.reads_heads and not negotiation.prior_knowledge_allowed(self.cfg, conn.client):
            self._park(conn, HeadBuffer(self.head_limits))
        else:
            super().enqueue_req(conn)

    def handle(self, conn: gthread.TConn) -> t.Any:
        """In a pool thread: gthread's, once the head is whole; an incomplete head goes back to the loop."""
        if self.reads_heads and conn.parser is not None and not conn.is_http2:
            head = HeadBuffer(self.head_limits, conn.parser.unreader.take_buffered())
            waiting = self._receive(conn, head, socket.MSG_DONTWAIT)
            if head.state is HeadState.INCOMPLETE:
                return _Parked(head) if waiting else False    # False: the peer left, as gthread ends it
            if head.state is HeadState.TOO_LARGE:
                return self._refuse_too_large(conn)
            conn.parser.unreader.unread(bytes(head.data))
        return super().handle(conn)

    def handle_request(self, req: t.Any, conn: gthread.TConn) -> bool:
        """In a pool thread, once the head is parsed: gthread's, with every wait on the client bounded.

        A read of the body that gets nothing, or a write of the answer that the client does not
        take (one ``sendall``, up to 64 KiB), for ``GATEWAY_CLIENT_TIMEOUT`` seconds raises
        ``TimeoutError``: the gateway answers an unreadable body 400 ``body_invalid``, and a
        stalled answer ends with the connection closed. Without it a client that stops sending
        its body holds the thread for good: gthread's loop keeps the worker alive, so the
        worker ``timeout`` never fires. The body's reads are also held to the minimum data rate
        (:class:`MinRateSocket`), and a body that could not be read closes the connection.
        """
        conn.sock.settimeout(self.client_timeout)
        unreader = getattr(conn.parser, "unreader", None)
        guarded = isinstance(unreader, SocketUnreader) and not conn.is_http2 and req.body is not None
        if guarded:
            req.body.reader = _GuardedBodyReader(req.body.reader, req)
            if self.min_body_rate:
                unreader.sock = MinRateSocket(conn.sock, self.min_body_rate, MIN_BODY_RATE_GRACE,
                                              self.client_timeout)
        try:
            return super().handle_request(req, conn)
        except TimeoutError:
            self.log.info("Client at ip=%s took more than %g s to take the answer: closed",
                          _peer(conn), self.client_timeout)
            return False
        finally:
            if guarded:
                unreader.sock = conn.sock

    def finish_request(self, conn: gthread.TConn, fs: t.Any) -> None:
        """gthread's, except that a parked head waits in the loop and a closing connection lingers there.

        gthread closes a connection with ``util.close_graceful`` on the loop's thread: half-close,
        then read until the peer closes, for up to 2 s. A client that keeps the connection open
        stalls the whole worker for those 2 s; here the same lingering read waits in the poller.
        """
        result = None if fs.cancelled() or fs.exception() is not None else fs.result()
        if isinstance(result, _Parked):
            self._park(conn, result.head)
        elif result or result is None or not self.reads_heads or conn.is_http2:
            super().finish_request(conn, fs)
        else:
            self._linger(conn)

    def _park(self, conn: gthread.TConn, head: HeadBuffer) -> None:
        """Wait in the poller for the rest of the head, until the head deadline."""
        try:
            if conn.sock.gettimeout() != 0.0:
                conn.sock.setblocking(False)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_readable, conn))
        except (OSError, ValueError, KeyError):
            self._drop(conn)
            return
        self.pending_heads[conn] = _PendingHead(head, time.monotonic() + self.head_timeout)

    def _on_head_readable(self, conn: gthread.TConn, _sock: t.Any) -> None:
        pending = self.pending_heads[conn]
        try:
            if self._receive(conn, pending.head):
                return
            self._forget(conn)
            if pending.head.state is HeadState.DECIDABLE:
                if conn.parser is None:
                    conn.init()     # plain HTTP/1: makes the parser, blocking socket; reads nothing
                conn.parser.unreader.unread(bytes(pending.head.data))
                super().enqueue_req(conn)
            elif pending.head.state is HeadState.TOO_LARGE:
                self._refuse_too_large(conn)
                self._linger(conn)
            else:
                self._drop(conn)
        except Exception:
            self.log.exception("Error reading a request head")
            self._forget(conn)
            self._drop(conn)

    def _receive(self, conn: gthread.TConn, head: HeadBuffer, flags: int = 0) -> bool:
        """Read what the socket holds into ``head``; whether to wait for more (head incomplete, peer there)."""
        while head.state is HeadState.INCOMPLETE:
            try:
                chunk = conn.sock.recv(RECV_SIZE, flags)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            if not chunk:
                return False
            head.feed(chunk)
        return False

    def _refuse_too_large(self, conn: gthread.TConn) -> bool:
        """gunicorn's own answer (431) to a head its parser would refuse as too large."""
        self.handle_error(None, conn.sock, conn.client, LimitRequestHeaders("max buffer headers"))
        return False

    def _forget(self, conn: gthread.TConn) -> None:
        self.pending_heads.pop(conn, None)
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
        """gthread's expiry of idle kept-alive connections, then of late heads and lingering closes (all when ``force``)."""
        super().murder_keepalived(force)
        now = time.monotonic()
        while self.pending_heads:
            conn, pending = next(iter(self.pending_heads.items()))
            if pending.deadline > now and not force:
                break
            self._forget(conn)
            if pending.deadline <= now and pending.head.data:
                self._time_out(conn)
                self._linger(conn)
            else:
                self._drop(conn)
        while self.lingering:
            conn, lingering = next(iter(self.lingering.items()))
            if lingering.deadline > now and not force:
                break
            self._end_lingering(conn)

    def _linger(self, conn: gthread.TConn) -> None:
        """Half-close, then read (and drop) what the peer still sends until it closes or 2 s pass.

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
        self.lingering[conn] = _Lingering(time.monotonic() + LINGER_SECONDS)

    def _on_linger_readable(self, conn: gthread.TConn, _sock: t.Any) -> None:
        lingering = self.lingering[conn]
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

    def _time_out(self, conn: gthread.TConn) -> None:
        """408 to a client that sent part of a head (one that sent nothing gets none, as from nginx)."""
        self.log.warning("Request head from ip=%s not complete after %g s: closed", _peer(conn), self.head_timeout)
        try:
            util.write_error(conn.sock, 408, "Request Timeout",
                             f"The request head was not complete within {self.head_timeout:g} s.")
        except OSError:
            pass

    def _cap_keepalive(self, deadline: float) -> None:
        """On stop, heads still arriving get what kept-alive connections get (gthread's linger)."""
        super()._cap_keepalive(deadline)
        for pending in self.pending_heads.values():
            pending.deadline = min(pending.deadline, deadline)


def _peer(conn: gthread.TConn) -> str:
    return str(conn.client[0] if isinstance(conn.client, tuple) else conn.client)
