"""A request read whole in the worker's event loop: its head, then its body, within a bounded budget.

As nginx's ``proxy_request_buffering on`` and Envoy's buffer filter: :class:`RequestBuffer`
reads the head (:class:`HeadBuffer`, within gunicorn's limits: :class:`HeadLimits`), finds how
much body follows (:func:`body_framing`: ``Content-Length``, or chunked framing scanned by
:class:`ChunkedScanner`), and holds the body's bytes against the worker's
:class:`BodyBudget`. What the loop answers itself is a :class:`Refusal`. The worker
(:mod:`gateway_app.worker`) owns the sockets, the deadlines and the threads; this module only
reads bytes it is given.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import tempfile
import threading
import typing as t
from functools import partial

from gunicorn.http.message import DEFAULT_MAX_HEADERFIELD_SIZE
from gunicorn.http.message import MAX_HEADERS
from gunicorn.http.message import MAX_REQUEST_LINE

BUSY_RETRY_AFTER = 5                             # seconds, the Retry-After of a 503 for a spent body budget


# gunicorn's fast parser takes an unlimited request line (limit_request_line = 0) as 1 MiB.
UNLIMITED_REQUEST_LINE = 1024 * 1024


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
