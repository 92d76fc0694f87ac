"""A raw-socket HTTP/1.1 upstream that records every byte of what it receives and answers as told.

requests-mock replaces the adapter the gateway forwards through, so what the gateway really
puts on the wire (request line, header bytes, framing) and what it really does with an
upstream's answer can only be seen against a real server. This one listens on 127.0.0.1
(:class:`tests.support.servers.RawSocketServer`), serves each connection in its own thread,
keeps connections alive (HTTP/1.1 unless ``Connection: close``), reads each request's body by
its ``Content-Length`` or chunked framing, and records it before answering::

    with RecordingUpstream() as upstream:              # or the ``recording_upstream`` fixture
        upstream.respond_with(CannedResponse(302, [("Location", "/elsewhere")]))
        ...                                            # send a request through the gateway
        [seen] = upstream.requests
        seen.request_line        # 'GET /path?q=1 HTTP/1.1'
        seen.headers             # [('Host', 'gw'), ('X-Sub', 'alice'), ...]: raw names and values, in order
        seen.raw_head            # the head's bytes, up to and including the blank line
        seen.body                # the body, de-chunked (``raw_body``: as received)

Answers come from a FIFO queue filled by :meth:`RecordingUpstream.respond_with`; when it is
empty, :attr:`RecordingUpstream.default` answers (``200 ok``). A :class:`CannedResponse` can be
any status (1xx interim answers go in ``interim``; 204 and 304 never get a body or an
invented ``Content-Length``), any header bytes (names and values sent exactly as given, in
order, repeats kept), a sized, chunked or close-delimited body, or ``raw`` bytes sent as they
are. HEAD answers carry the headers a GET would (``Content-Length`` of the body included)
and no body (RFC 9110 §9.3.2).
"""

from __future__ import annotations

import dataclasses
import http
import socket
import threading
import typing as t

from tests.support.servers import RawSocketServer

HeaderPairs = t.Sequence[tuple[t.Union[str, bytes], t.Union[str, bytes]]]

MAX_HEAD_BYTES = 64 * 1024
READ_TIMEOUT = 10.0             # an idle keep-alive connection is closed after this long
_BODILESS_STATUSES = (204, 304)


@dataclasses.dataclass(frozen=True)
class CannedResponse:
    """One answer to send.

    ``framing``: ``"length"`` adds ``Content-Length`` (not for 1xx/204/304), ``"chunked"`` adds
    ``Transfer-Encoding: chunked`` and sends ``body`` in chunks of ``chunk_size`` bytes,
    ``"close"`` sends the body and closes the connection, ``"none"`` adds nothing (the
    test's headers frame the body). ``reason`` defaults to the status's standard phrase.
    ``raw`` replaces everything: those bytes are sent as they are. ``close`` closes the
    connection after the answer.
    """

    status: int = 200
    headers: HeaderPairs = ()
    body: bytes = b""
    reason: str | None = None
    framing: t.Literal["length", "chunked", "close", "none"] = "length"
    chunk_size: int = 4
    interim: t.Sequence[CannedResponse] = ()
    raw: bytes | None = None
    close: bool = False

    def encode(self, method: str) -> bytes:
        """The bytes to send in answer to a ``method`` request."""
        if self.raw is not None:
            return self.raw
        interim = b"".join(answer._head([]) for answer in self.interim)
        bodiless = method == "HEAD" or self.status < 200 or self.status in _BODILESS_STATUSES
        added: list[tuple[bytes, bytes]] = []
        if self.framing == "length" and not (self.status < 200 or self.status in _BODILESS_STATUSES):
            added.append((b"Content-Length", str(len(self.body)).encode()))
        elif self.framing == "chunked":
            added.append((b"Transfer-Encoding", b"chunked"))
        if self.framing == "close":
            added.append((b"Connection", b"close"))
        body = b"" if bodiless else self._body()
        return interim + self._head(added) + body

    @property
    def closes(self) -> bool:
        return self.close or self.framing == "close" or self.raw is not None

    def _head(self, added: list[tuple[bytes, bytes]]) -> bytes:
        reason = self.reason if self.reason is not None else _phrase(self.status)
        lines = [f"HTTP/1.1 {self.status} {reason}".encode("latin-1")]
        lines += [_bytes(name) + b": " + _bytes(value) for name, value in self.headers]
        lines += [name + b": " + value for name, value in added]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def _body(self) -> bytes:
        if self.framing != "chunked":
            return self.body
        step = max(1, self.chunk_size)
        chunks = [self.body[i:i + step] for i in range(0, len(self.body), step)]
        return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Whatever"


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request as received: the head's bytes and their reading (Latin-1, nothing normalized)."""

    raw_head: bytes
    raw_body: bytes
    body: bytes
    connection: int            # which connection it came on, counted from 0: shows keep-alive reuse

    @property
    def request_line(self) -> str:
        return self.raw_head.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def method(self) -> str:
        return self.request_line.split(" ", 1)[0]

    @property
    def target(self) -> str:
        return self.request_line.split(" ")[1]

    @property
    def version(self) -> str:
        return self.request_line.rsplit(" ", 1)[-1]

    @property
    def header_lines(self) -> list[bytes]:
        """The header field lines as received (an obs-fold continuation is its own line)."""
        return [line for line in self.raw_head.split(b"\r\n")[1:] if line]

    @property
    def headers(self) -> list[tuple[str, str]]:
        """``(name, value)`` per field line, in order, name case kept, value without surrounding OWS."""
        pairs = []
        for line in self.header_lines:
            name, _, value = line.decode("latin-1").partition(":")
            pairs.append((name, value.strip(" \t")))
        return pairs

    def header_values(self, name: str) -> list[str]:
        """Every value of the field ``name`` (case-insensitive), in order."""
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]

    def header(self, name: str) -> str | None:
        """The one value of ``name``, None when absent. :raises AssertionError: it is repeated."""
        values = self.header_values(name)
        assert len(values) <= 1, f"{name} received {len(values)} times: {values}"
        return values[0] if values else None


class RecordingUpstream(RawSocketServer):
    """The upstream: records requests (:attr:`requests`), answers from a queue, then :attr:`default`."""

    threaded = True

    def __init__(self, default: CannedResponse | None = None) -> None:
        super().__init__()
        self.default = default or CannedResponse(200, [("Content-Type", "text/plain")], b"ok")
        self._answers: list[CannedResponse] = []
        self._received: list[RecordedRequest] = []
        self._connections = 0
        self._changed = threading.Condition()

    def __enter__(self) -> RecordingUpstream:
        super().__enter__()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests received so far, oldest first (a copy)."""
        with self._changed:
            return list(self._received)

    def respond_with(self, *answers: CannedResponse) -> None:
        """Queue answers for the next requests, in order."""
        with self._changed:
            self._answers.extend(answers)

    def clear(self) -> None:
        """Forget the requests received and the answers still queued."""
        with self._changed:
            self._received.clear()
            self._answers.clear()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """The requests, once at least ``count`` have arrived. :raises AssertionError: not in time."""
        with self._changed:
            arrived = self._changed.wait_for(lambda: len(self._received) >= count, timeout)
            assert arrived, f"{len(self._received)} request(s) received, expected {count}"
            return list(self._received)

    def handle(self, conn: socket.socket) -> None:
        with self._changed:
            number = self._connections
            self._connections += 1
        with conn:
            conn.settimeout(READ_TIMEOUT)
            reader = _Reader(conn)
            try:
                while not self._stop.is_set() and self._serve_one(conn, reader, number):
                    pass
            except (OSError, ValueError):
                pass

    def _serve_one(self, conn: socket.socket, reader: _Reader, number: int) -> bool:
        """Read, record and answer one request; whether the connection stays open."""
        head = reader.head()
        if head is None:
            return False
        raw_body, body = _read_body(reader, head)
        request = RecordedRequest(head, raw_body, body, number)
        with self._changed:
            self._received.append(request)
            answer = self._answers.pop(0) if self._answers else self.default
            self._changed.notify_all()
        conn.sendall(answer.encode(request.method))
        return not answer.closes and _keeps_alive(request)


class _Reader:
    """Buffered reads off one connection."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._buffer = b""

    def _fill(self) -> bool:
        data = self._conn.recv(65536)
        self._buffer += data
        return bool(data)

    def head(self) -> bytes | None:
        """The next request head through its blank line; None when the peer closed first."""
        while self._buffer.startswith(b"\r\n"):          # RFC 9112 §2.2: ignore a leading empty line
            self._buffer = self._buffer[2:]
        while b"\r\n\r\n" not in self._buffer:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise ValueError("request head too large")
            if not self._fill():
                return None
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        return head + b"\r\n\r\n"

    def exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._fill():
                raise ValueError("connection closed inside a body")
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            if not self._fill():
                raise ValueError("connection closed inside a chunked body")
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line + b"\r\n"


def _read_body(reader: _Reader, head: bytes) -> tuple[bytes, bytes]:
    """``(as received, de-chunked)`` for the body the head announces."""
    request = RecordedRequest(head, b"", b"", 0)
    encoding = ",".join(request.header_values("transfer-encoding")).lower()
    if encoding:
        if encoding.rsplit(",", 1)[-1].strip() != "chunked":
            raise ValueError("unsupported transfer coding")
        return _read_chunked(reader)
    lengths = request.header_values("content-length")
    if not lengths:
        return b"", b""
    size = int(lengths[0])
    data = reader.exactly(size)
    return data, data


def _read_chunked(reader: _Reader) -> tuple[bytes, bytes]:
    raw, body = [], []
    while True:
        size_line = reader.line()
        raw.append(size_line)
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:                                    # trailer section, then the blank line
                trailer = reader.line()
                raw.append(trailer)
                if trailer == b"\r\n":
                    return b"".join(raw), b"".join(body)
        chunk = reader.exactly(size + 2)
        raw.append(chunk)
        body.append(chunk[:-2])


def _keeps_alive(request: RecordedRequest) -> bool:
    tokens = {token.strip().lower() for value in request.header_values("connection") for token in value.split(",")}
    if request.version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens
