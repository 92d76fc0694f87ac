"""Forward a request upstream and stream the answer back: the gateway's one exit.

Each worker thread owns one pooled :class:`_ForwardingSession`: a requests Session that
never looks for a redirect target (with redirects off, ``Session.send`` would still read
and gunzip a 3xx body to prepare the next hop) and never keeps upstream cookies (its jar
would grow for ever, shared by every client of the thread). Its :class:`_ForwardingAdapter`
goes straight to the urllib3 pool of the target.

The request target is built here and sent byte for byte: it goes through neither requests'
re-quoting nor urllib3's (which would turn every ``%`` of a query holding one stray ``%``
into ``%25``, so the upstream would read another query than the policy did). Its parts were
checked when the request was read (:mod:`gateway_app.incoming`): visible ASCII only.
Foreign exceptions become :class:`UpstreamError` / :class:`UpstreamTimeoutError` here.
URLs never reach a message or a log line: a query string may carry a token.
"""

from __future__ import annotations

import errno
import http.client
import http.cookiejar
import logging
import socket
import ssl
import threading
import types
import typing as t
import weakref

import flask
import requests
import requests.adapters
import urllib3.connection
import urllib3.exceptions
import urllib3.util
from requests.structures import CaseInsensitiveDict
from werkzeug.datastructures import Headers

from gateway_app.errors import BodyInvalidError
from gateway_app.errors import GatewayError
from gateway_app.errors import UpstreamBodyAborted
from gateway_app.errors import UpstreamError
from gateway_app.errors import UpstreamTimeoutError
from gateway_app.header_values import HOP_BY_HOP_HEADERS
from gateway_app.header_values import relayed_text
from gateway_app.incoming import OVERRIDE_HEADERS
from gateway_app.incoming import is_forwarding_header

if t.TYPE_CHECKING:
    from gateway_app.config.upstreams import UpstreamTarget
    from gateway_app.incoming import IncomingRequest
    from gateway_app.request_body import ClientBody

log = logging.getLogger("gateway_app.proxy")

CHUNK_SIZE = 64 * 1024
_MAX_REMEMBERED = 64          # pools and timeouts an adapter keeps at hand (upstreams x settings)

# Framing and expectations are settled between the client and the gateway; Host and
# the forwarding headers are set explicitly.
_NOT_COPIED_FROM_CLIENT = HOP_BY_HOP_HEADERS | {"content-length", "expect", "host"}
_NOT_SETTABLE_BY_ROUTE = HOP_BY_HOP_HEADERS | {"content-length"}
_NOT_COPIED_FROM_UPSTREAM = HOP_BY_HOP_HEADERS
_NOT_COPIED_FROM_UPSTREAM_WITH_ID = HOP_BY_HOP_HEADERS | {"x-request-id"}

# URL and method overrides are dropped from every peer; the other forwarding headers a client
# could forge unless the peer is trusted (incoming.OVERRIDE_HEADERS, incoming.is_forwarding_header).

_NO_HEADERS: t.Mapping[str, str] = types.MappingProxyType({})
_NO_PROXIES: dict[str, str] = {}
_SKIP = urllib3.util.SKIP_HEADER  # keeps urllib3 from inventing User-Agent / Accept-Encoding


class _ForwardedRequest(requests.PreparedRequest):
    """A prepared request that also knows its parts: ``url`` is ``origin + request_target``
    (the path and query in wire form)."""

    origin: str = ""
    request_target: str = ""


class _StaleConnectionRetry(urllib3.util.Retry):
    """urllib3's retry, for one case only: the connection broke before any answer arrived
    (reset, closed), and the method is idempotent (RFC 9110 §9.2.2). A pooled connection the
    upstream closes as the gateway reuses it fails that way; RFC 9112 §9.3.1 lets a client
    retry such a request, as Go's ``http.Transport`` and nginx's ``proxy_next_upstream error``
    do. Timeouts are not read errors here (a slow upstream is not asked twice), connect
    errors and answers are never retried, and a streamed body (chunked, unsized) is not
    replayed (:data:`NO_RETRY`)."""

    def _is_read_error(self, err: Exception) -> bool:
        """A broken connection (urllib3 wraps it as "Connection aborted."), not an invalid answer."""
        return (isinstance(err, urllib3.exceptions.ProtocolError)
                and any(isinstance(cause, ConnectionError) for cause in err.args))


STALE_CONNECTION_RETRY = _StaleConnectionRetry(total=1, connect=0, read=1, redirect=False, status=0, other=0,
                                               raise_on_redirect=False, raise_on_status=False,
                                               respect_retry_after_header=False)
NO_RETRY = urllib3.util.Retry(0, read=False, redirect=False, raise_on_redirect=False)


class _ForwardingAdapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter cut down to what relaying needs.

    Per request, :class:`requests.adapters.HTTPAdapter` parses the URL again to find the
    connection pool and, on the answer, copies the headers, guesses an encoding and runs the
    cookie machinery. Here the pool is kept by (origin, verify) — also beyond the pool
    manager's ``pool_connections``, so a thread serving many upstreams keeps its connections —
    the request target is the one the forwarder built, and the answer keeps urllib3's
    (already case-insensitive) headers. Anything else (a proxy, a foreign request) takes
    the full path. Failures are urllib3's own exceptions: :func:`_translate` names them.
    """

    def __init__(self, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self._pools: dict[tuple[str, bool | str, t.Any], urllib3.HTTPConnectionPool] = {}
        self._timeouts: dict[t.Any, urllib3.Timeout] = {}

    def init_poolmanager(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WIRE_TARGET_POOLS

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: t.Any = None,
             verify: bool | str = True, cert: t.Any = None, proxies: t.Any = None) -> requests.Response:
        if not isinstance(request, _ForwardedRequest) or proxies:
            return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies)
        replayable = request.body is None or isinstance(request.body, (bytes, bytearray))
        answer = self._pool(request, verify, cert).urlopen(
            method=request.method, url=request.request_target, wire_target=request.request_target,
            body=request.body, headers=request.headers,
            redirect=False, assert_same_host=False, preload_content=False, decode_content=False,
            retries=STALE_CONNECTION_RETRY if replayable else NO_RETRY, timeout=self._timeout(timeout),
            chunked=not (request.body is None or "Content-Length" in request.headers),
        )
        response = requests.Response()
        response.status_code = answer.status
        response.headers = answer.headers  # type: ignore[assignment]
        response.raw = answer
        response.reason = answer.reason
        response.url = request.url  # type: ignore[assignment]
        response.request = request
        response.connection = self  # type: ignore[attr-defined]
        return response

    def _pool(self, request: _ForwardedRequest, verify: bool | str, cert: t.Any) -> urllib3.HTTPConnectionPool:
        key = (request.origin, verify, cert)
        pool = self._pools.get(key)
        if pool is None:
            if len(self._pools) >= _MAX_REMEMBERED:
                self._close_pools()
            pool = self.get_connection_with_tls_context(request, verify, cert=cert)
            self.cert_verify(pool, request.url, verify, cert)  # type: ignore[arg-type]
            pool.ConnectionCls = _FINAL_ANSWER_CONNECTIONS[pool.scheme]
            self._pools[key] = pool
        return pool

    def _timeout(self, timeout: tuple[float, float]) -> urllib3.Timeout:
        resolved = self._timeouts.get(timeout)
        if resolved is None:
            if len(self._timeouts) >= _MAX_REMEMBERED:
                self._timeouts.clear()
            connect, read = timeout
            resolved = self._timeouts[timeout] = urllib3.Timeout(connect=connect, read=read)
        return resolved

    def close(self) -> None:
        self._close_pools()
        super().close()

    def _close_pools(self) -> None:
        """Close the pools kept here (urllib3's pool manager drops pools without closing them)."""
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


class _WireTargetPool(urllib3.HTTPConnectionPool):
    """A pool that sends the ``wire_target`` it is given as it is (urllib3 would re-encode it)."""

    def _make_request(self, conn: t.Any, method: str, url: str, *args: t.Any, wire_target: str | None = None,
                      **kwargs: t.Any) -> t.Any:
        return super()._make_request(conn, method, wire_target or url, *args, **kwargs)


class _WireTargetHTTPSPool(_WireTargetPool, urllib3.HTTPSConnectionPool):
    pass


_WIRE_TARGET_POOLS = {"http": _WireTargetPool, "https": _WireTargetHTTPSPool}


class _InvalidAnswerError(http.client.HTTPException):
    """The upstream's answer head is not valid HTTP/1.1; it is discarded (RFC 9112 §6.3: 502)."""


class _FinalAnswer(http.client.HTTPResponse):
    """An upstream answer read past every interim (1xx) response, and refused when its head is invalid.

    http.client skips ``100 Continue`` alone: a ``103 Early Hints`` would be taken for the
    answer and the real one left on the pooled connection. Interim answers are not relayed
    (WSGI has no way to send them; gunicorn answers ``Expect: 100-continue`` itself), so
    they are read and dropped here. The gateway never asks to upgrade, so a ``101`` is invalid
    (RFC 9110 §15.2.2), as is a status above 599 (RFC 9110 §15). http.client takes a field line it cannot parse (``Bad Name: x``, a space
    before the colon) for the start of the body, dropping the fields after it, and reads a
    ``Content-Length`` it cannot parse as "until close": both are refused here.

    :raises _InvalidAnswerError: from :meth:`begin`.
    """

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()
            if not 100 <= status < 200 or status == 101:
                return version, status, reason
            http.client.parse_headers(self.fp)         # the interim answer's fields

    def begin(self) -> None:
        super().begin()
        if self.length == 0:                            # HEAD, 204, 304: the head ends the answer
            self.chunked = False
        if self.status == 101:
            raise _InvalidAnswerError("101 Switching Protocols without an upgrade request")
        if self.status > 599:                           # RFC 9110 §15: status codes are 100-599
            raise _InvalidAnswerError("a status code above 599")
        if self.msg.defects or self.msg.get_payload():
            raise _InvalidAnswerError("a field line that is not name: value")
        if self.length is None and not self.chunked and "content-length" in self.msg:
            raise _InvalidAnswerError("an invalid Content-Length")


class _FinalAnswerHTTPConnection(urllib3.connection.HTTPConnection):
    response_class = _FinalAnswer


class _FinalAnswerHTTPSConnection(urllib3.connection.HTTPSConnection):
    response_class = _FinalAnswer


_FINAL_ANSWER_CONNECTIONS = {"http": _FinalAnswerHTTPConnection, "https": _FinalAnswerHTTPSConnection}


class _ForwardingSession(requests.Session):
    """A Session for relaying: no environment look-ups, no redirects, no cookie jar."""

    def __init__(self, adapter: requests.adapters.HTTPAdapter) -> None:
        super().__init__()
        self.trust_env = False  # proxy and netrc look-ups from the environment cost ~30% per call
        self.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def get_redirect_target(self, resp: requests.Response) -> None:
        """Redirects are the client's business: the 3xx and its body are passed back as they are."""
        return None


class Forwarder:
    """Sends requests to upstream targets over per-thread connection pools.

    ``pool_connections`` / ``pool_maxsize``: urllib3 pools per thread and connections per pool.
    ``preserve_host`` sends the client's (normalized) Host unless the target rewrites it.
    Forwarding headers are kept only from a request whose ``trusted_peer`` is set
    (:func:`gateway_app.incoming.from_environ`). The request body comes framed and limited
    (:func:`gateway_app.request_body.client_body`).
    """

    def __init__(self, *, pool_connections: int = 10, pool_maxsize: int = 32, preserve_host: bool = True) -> None:
        self._pool_connections = pool_connections
        self._pool_maxsize = pool_maxsize
        self._preserve_host = preserve_host
        self._local = threading.local()
        self._sessions: weakref.WeakSet[requests.Session] = weakref.WeakSet()
        self._sessions_lock = threading.Lock()

    def forward(self, request: IncomingRequest, body: ClientBody | None, target: UpstreamTarget, *,
                path: str | None = None, add_headers: t.Mapping[str, str] = _NO_HEADERS,
                remove_headers: t.Iterable[str] = ()) -> flask.Response:
        """Send ``request`` to ``target`` and stream the upstream answer back.

        ``path`` (default ``request.path``) must be in wire form (percent-encoded); the
        raw query string is appended unchanged. ``remove_headers`` are dropped from the
        client's headers before ``add_headers`` are set, so clients cannot forge them.

        :raises PayloadTooLargeError: the body grows past its limit while it is read.
        :raises BodyInvalidError: a body shorter than its Content-Length, or unreadable (400 ``body_invalid``).
        :raises UpstreamTimeoutError: no connection or no response headers in time.
        :raises UpstreamError: the upstream could not be reached or broke the exchange.
        """
        payload, length = self._request_body(body)
        request_target, headers = self.outgoing(request, target, path=path, add_headers=add_headers,
                                                remove_headers=remove_headers)
        if length is not None:
            headers["Content-Length"] = str(length)
        upstream = self._send(request.method, target, request_target, headers, payload)
        return _client_response(upstream, request.request_id, target.name)

    def outgoing(self, request: IncomingRequest, target: UpstreamTarget, *, path: str | None = None,
                 add_headers: t.Mapping[str, str] = _NO_HEADERS,
                 remove_headers: t.Iterable[str] = ()) -> tuple[str, CaseInsensitiveDict[str]]:
        """The origin-form request target (base path + path + raw query) and the headers
        :meth:`forward` sends for ``request`` (without a body's length); ``gateway-app explain``
        shows them without sending."""
        headers = self._request_headers(request, target, add_headers, remove_headers)
        return _request_target(target, request.path if path is None else path, request.query_string), headers

    def close(self) -> None:
        """Close every thread's pooled connections (at shutdown, or between tests)."""
        with self._sessions_lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.close()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._open_session()
        return session

    def _open_session(self) -> requests.Session:
        adapter = _ForwardingAdapter(pool_connections=self._pool_connections, pool_maxsize=self._pool_maxsize,
                                     max_retries=0)
        session = _ForwardingSession(adapter)
        with self._sessions_lock:
            self._sessions.add(session)
        return session

    @staticmethod
    def _request_body(body: ClientBody | None) -> tuple[bytes | t.Iterator[bytes] | None, int | None]:
        """The payload to send and its length when known (None: send it chunked).

        A small sized body is read whole before connecting; an unsized (chunked) one is read one
        chunk ahead, so a body that ends within it is sent with its length.
        """
        if body is None:
            return None, None
        length = body.length
        if length is None:
            head, ended = _read_ahead(body)
            if ended:
                return head, len(head)
            return _unsized_chunks(body, head), None
        if length <= CHUNK_SIZE:
            return _read_exactly(body, length), length
        return _sized_chunks(body, length), length

    def _request_headers(self, request: IncomingRequest, target: UpstreamTarget, add_headers: t.Mapping[str, str],
                         remove_headers: t.Iterable[str]) -> CaseInsensitiveDict[str]:
        """The client's end-to-end headers, minus removals, plus the gateway's own."""
        client = request.headers
        dropped = _NOT_COPIED_FROM_CLIENT | OVERRIDE_HEADERS
        connection = client.get("connection")
        if connection:
            dropped = dropped | _header_names(connection)
        if remove_headers:
            dropped = dropped | {name.lower() for name in remove_headers}
        trusted = request.trusted_peer
        headers = {name: value for name, value in client.items()
                   if name not in dropped and (trusted or not is_forwarding_header(name))}
        self._set_forwarding_headers(headers, request)
        host = target.host_rewrite or (request.host if self._preserve_host else None)
        if host:
            headers["host"] = host
        if "user-agent" not in headers:
            headers["user-agent"] = _SKIP
        if "accept-encoding" not in headers:
            headers["accept-encoding"] = _SKIP
        for name, value in add_headers.items():
            lowered = name.lower()
            if lowered not in _NOT_SETTABLE_BY_ROUTE:
                headers[lowered] = value
        return CaseInsensitiveDict(headers)  # what requests (and requests-mock users) expect

    def _set_forwarding_headers(self, headers: dict[str, str], request: IncomingRequest) -> None:
        """X-Forwarded-*: the peer's address appended; proto and host set unless a trusted proxy sent them.

        Client copies are already gone when the peer is not a trusted proxy. The proto is the
        scheme the gateway decided (:func:`gateway_app.incoming.from_environ`), the host the
        normalized Host that was routed.
        """
        address = request.remote_addr
        if address:
            prior = headers.get("x-forwarded-for")
            headers["x-forwarded-for"] = f"{prior}, {address}" if prior else address
        headers.setdefault("x-forwarded-proto", request.scheme)
        if request.host:
            headers.setdefault("x-forwarded-host", request.host)
        if request.request_id:
            headers["x-request-id"] = request.request_id

    def _send(self, method: str, target: UpstreamTarget, request_target: str, headers: CaseInsensitiveDict[str],
              payload: bytes | t.Iterator[bytes] | None) -> requests.Response:
        """One exchange, with foreign failures translated. Never follows redirects."""
        prepared = _ForwardedRequest()
        prepared.method = method
        prepared.url = target.origin + request_target
        prepared.origin = target.origin
        prepared.request_target = request_target
        prepared.headers = headers
        prepared.body = payload  # type: ignore[assignment]
        try:
            return self._session().send(prepared, allow_redirects=False, stream=True, timeout=target.timeout,
                                        verify=target.verify, cert=None, proxies=_NO_PROXIES)
        except GatewayError:
            raise
        except ValueError:
            # http.client rejects header values it cannot encode and quotes them in its message.
            raise GatewayError(f"the request for upstream {target.name} cannot be encoded as HTTP",
                               reason="upstream_request_invalid") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            raise _translate(error, target.name) from error


def _request_target(target: UpstreamTarget, path: str, query_string: str) -> str:
    """The origin-form target sent upstream: base path + path, and the client's query as it came."""
    if not path.startswith("/"):
        path = "/" + path
    path = target.base_path + path
    return f"{path}?{query_string}" if query_string else path


def _header_names(value: str) -> set[str]:
    """Header names listed in a Connection header."""
    return {name.strip().lower() for name in value.split(",") if name.strip()}


def _read_exactly(body: t.IO[bytes], length: int) -> bytes:
    """The whole body of a small request, read before connecting upstream."""
    parts = []
    remaining = length
    while remaining:
        data = body.read(remaining)
        if not data:
            raise BodyInvalidError("request body ended before its Content-Length")
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


def _sized_chunks(body: t.IO[bytes], length: int) -> t.Iterator[bytes]:
    """Exactly ``length`` bytes, a chunk at a time; a short body aborts the upstream request."""
    remaining = length
    while remaining:
        data = body.read(min(remaining, CHUNK_SIZE))
        if not data:
            raise BodyInvalidError("request body ended before its Content-Length")
        remaining -= len(data)
        yield data


def _read_ahead(body: t.IO[bytes]) -> tuple[bytes, bool]:
    """Up to one chunk of an unsized body, and whether the body ended within it."""
    parts = []
    size = 0
    while size < CHUNK_SIZE:
        data = body.read(CHUNK_SIZE - size)
        if not data:
            return b"".join(parts), True
        parts.append(data)
        size += len(data)
    return b"".join(parts), False


def _unsized_chunks(body: t.IO[bytes], head: bytes) -> t.Iterator[bytes]:
    """The read-ahead chunk, then the rest; a read that goes over the body's limit
    (:class:`~gateway_app.request_body.ClientBody`) aborts the upstream request."""
    yield head
    while True:
        data = body.read(CHUNK_SIZE)
        if not data:
            return
        yield data


def _translate(error: BaseException, name: str) -> UpstreamError:
    """Our error for a failed exchange, naming the cause but never the URL."""
    causes = _causes(error)
    if any(_is_timeout(cause) for cause in causes):
        connecting = any(isinstance(cause, (requests.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError))
                         and not isinstance(cause, urllib3.exceptions.NewConnectionError) for cause in causes)
        what = "did not accept the connection in time" if connecting else "did not answer in time"
        log.warning("upstream %s %s", name, what)
        return UpstreamTimeoutError(f"upstream {name} {what}")
    what, cause = _describe(causes)
    log.warning("upstream %s %s (%s)", name, what, type(cause).__name__)
    reason = "upstream_response_invalid" if what == _INVALID_ANSWER else None
    return UpstreamError(f"upstream {name} {what}", reason=reason)


_INVALID_ANSWER = "sent an answer that is not valid HTTP"
# RFC 9112 §6.3: e.g. two different Content-Lengths; a proxy discards the answer and sends 502.
_INVALID_ANSWER_ERRORS = (_InvalidAnswerError, urllib3.exceptions.InvalidHeader, http.client.BadStatusLine,
                          http.client.LineTooLong, urllib3.exceptions.InvalidChunkLength)


def _is_timeout(error: BaseException) -> bool:
    """A timeout, whoever raised it (urllib3 counts a refused connection among its timeouts)."""
    if isinstance(error, urllib3.exceptions.NewConnectionError):
        return False
    return isinstance(error, (TimeoutError, requests.Timeout, urllib3.exceptions.TimeoutError))


def _describe(causes: list[BaseException]) -> tuple[str, BaseException]:
    """What went wrong, in words, and the exception that says so."""
    for cause in causes:
        if isinstance(cause, (requests.exceptions.SSLError, urllib3.exceptions.SSLError, ssl.SSLError)):
            return "failed the TLS handshake", cause
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return "refused the connection", cause
        if isinstance(cause, (urllib3.exceptions.NameResolutionError, socket.gaierror)):
            return "could not be resolved", cause
        if isinstance(cause, http.client.RemoteDisconnected):
            return "closed the connection without answering", cause
        if isinstance(cause, ConnectionResetError):
            return "reset the connection", cause
    for cause in causes:
        if isinstance(cause, _INVALID_ANSWER_ERRORS) and not isinstance(cause, http.client.RemoteDisconnected):
            return _INVALID_ANSWER, cause
    return "could not be reached", causes[-1]


def _causes(error: BaseException, limit: int = 16) -> list[BaseException]:
    """The error and what it wraps: causes, contexts, ``reason`` and exception arguments."""
    found: list[BaseException] = []
    pending = [error]
    while pending and len(found) < limit:
        current = pending.pop(0)
        if any(current is seen for seen in found):
            continue
        found.append(current)
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending.extend(item for item in linked if isinstance(item, BaseException))
    return found


class _ProxiedResponse(flask.Response):
    """The upstream's answer as werkzeug would send it, minus werkzeug's own edits.

    werkzeug adds a Content-Type when none is given, makes ``Location`` and
    ``Content-Location`` absolute URIs (percent-encoding what is not ASCII), strips
    representation headers from a 304 and upper-cases the reason phrase: none of that is
    the gateway's to do, so the headers and status line go out as :func:`_client_response`
    built them.
    """

    default_mimetype = None

    def get_wsgi_headers(self, environ: dict[str, t.Any]) -> Headers:
        return Headers(self.headers)


class _UpstreamBody:
    """The upstream body as read off the wire (still encoded), closing the upstream at the end.

    ``close()`` runs at the end, on client disconnect and for bodiless answers (HEAD,
    204, 304), so the connection always goes back to the pool or is dropped. A bodiless
    answer is never read as a stream: urllib3 would wait for chunks when a 204 or 304 says
    ``Transfer-Encoding: chunked`` (RFC 9112 §6.3: such an answer ends with its head).
    """

    __slots__ = ("_upstream", "_chunks", "_name", "_first")

    def __init__(self, upstream: requests.Response, name: str) -> None:
        self._upstream = upstream
        bodiless = upstream.raw.length_remaining == 0        # HEAD, 1xx, 204, 304 or Content-Length: 0
        self._chunks = iter(()) if bodiless else upstream.raw.stream(CHUNK_SIZE, decode_content=False)
        self._name = name
        self._first: bytes | None = None

    def prefetch(self) -> None:
        """Read the first chunk now, so a failure before any byte is sent is still a 502.

        :raises UpstreamError: the upstream broke the exchange in its first chunk.
        """
        try:
            self._first = next(self)
        except StopIteration:
            self._first = b""
        except UpstreamBodyAborted as aborted:
            raise UpstreamError(aborted.strerror) from aborted.__cause__

    def __iter__(self) -> _UpstreamBody:
        return self

    def __next__(self) -> bytes:
        """The next chunk as the upstream sent it.

        :raises UpstreamBodyAborted: the upstream failed mid-body (logged here, once).
        """
        if self._first is not None:
            first, self._first = self._first, None
            if first:
                return first
        try:
            return next(self._chunks)
        except StopIteration:
            self.close()
            raise
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as error:
            self.close()
            # Headers are out: the status cannot change. Aborting (rather than ending
            # cleanly) makes the server drop the connection so the client sees the truncation.
            log.warning("upstream %s failed while sending its body (%s)", self._name, type(error).__name__)
            raise UpstreamBodyAborted(errno.ECONNRESET,
                                      f"upstream {self._name} failed while sending its body") from error

    def close(self) -> None:
        raw = self._upstream.raw
        if raw.length_remaining == 0 and not raw.closed:
            # A bodiless answer (HEAD, 204, 304) is never iterated: finishing it here
            # returns the connection to the pool instead of dropping it.
            try:
                raw.read()
            except (urllib3.exceptions.HTTPError, OSError):
                pass
        self._upstream.close()


def _client_response(upstream: requests.Response, request_id: str, name: str) -> flask.Response:
    """The client's answer: the upstream's status line, headers (:func:`_response_headers`) and body."""
    headers = _response_headers(upstream.raw.headers, request_id)
    body = _UpstreamBody(upstream, name)
    body.prefetch()
    status = f"{upstream.status_code} {relayed_text(upstream.reason or '')}".rstrip()
    return _ProxiedResponse(body, status=status, headers=headers, direct_passthrough=True)


def _response_headers(upstream_headers: urllib3.HTTPHeaderDict, request_id: str) -> list[tuple[str, str]]:
    """Upstream headers minus hop-by-hop ones (RFC 9110 §7.6.1), plus X-Request-Id.

    Repeats (Set-Cookie) stay separate and in order. A Content-Length the upstream repeated
    with one value (urllib3 refuses different ones) is sent once. Obs-folds and control
    characters become SP (:func:`gateway_app.header_values.relayed_text`).
    """
    dropped = _NOT_COPIED_FROM_UPSTREAM_WITH_ID if request_id else _NOT_COPIED_FROM_UPSTREAM
    connection = upstream_headers.get("connection")
    if connection:
        dropped = dropped | _header_names(connection)
    if "transfer-encoding" in upstream_headers:
        dropped = dropped | {"content-length"}
    headers = [(name, relayed_text(value)) for name, value in upstream_headers.items()
               if name.lower() not in dropped and name.lower() != "content-length"]
    if "content-length" not in dropped:
        lengths = upstream_headers.getlist("content-length")
        if lengths:
            headers.append(("Content-Length", lengths[0].split(",")[0].strip()))
    if request_id:
        headers.append(("X-Request-Id", request_id))
    return headers
