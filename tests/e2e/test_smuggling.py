"""Request smuggling and raw-path attacks through real gunicorn, with raw sockets (issue 8, items 1-2).

A client library would fix up these requests itself, so they are written byte for byte. The
upstream is a raw-socket server started here that records exactly what it receives. For every
case: gunicorn refuses it (400), or the gateway forwards *one* request with one unambiguous
framing, and the smuggled request never reaches the upstream.

Each case also states who answers with which status under gunicorn 27.0 (gunicorn refuses
while parsing the head; the gateway answers what gunicorn lets through, including bodies
that gunicorn only finds malformed while the gateway reads them), so an upgrade that changes
it shows up here.
"""

from __future__ import annotations

import re
import socket
import threading
import typing as t

import pytest

from tests.support.servers import RawSocketServer
from tests.support.servers import ServerProcess
from tests.support.servers import gateway_server
from tests.support.servers import render_config

CONFIG = """\
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: open, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{prefix: /petstore}]
      routeAction: {single: {url: 'http://127.0.0.1:{UPSTREAM_PORT}'}}
      options:
        extauth: {configRef: {name: closed, namespace: gloo-system}}
    - matchers: [{prefix: /}]
      routeAction: {single: {url: 'http://127.0.0.1:{UPSTREAM_PORT}'}}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: closed, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        introspectionUrl: http://127.0.0.1:9/never-called
"""

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def _req(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body


GUNICORN, GATEWAY = "gunicorn", "gateway"

CASES: dict[str, tuple[bytes, str, int]] = {
    # name: (raw request, who answers, status)
    "CL and TE together": (_req("POST /echo HTTP/1.1\nHost: gw\nContent-Length: 4\nTransfer-Encoding: chunked\n",
                                b"0\r\n\r\n" + SMUGGLED), GUNICORN, 400),
    "TE and CL together": (_req("POST /echo HTTP/1.1\nHost: gw\nTransfer-Encoding: chunked\nContent-Length: 40\n",
                                b"0\r\n\r\n" + SMUGGLED), GUNICORN, 400),
    "two different Content-Lengths": (_req("POST /echo HTTP/1.1\nHost: gw\nContent-Length: 5\nContent-Length: 40\n",
                                           b"hello" + SMUGGLED), GUNICORN, 400),
    "two equal Content-Lengths": (_req("POST /echo HTTP/1.1\nHost: gw\nContent-Length: 5\nContent-Length: 5\n",
                                       b"hello"), GUNICORN, 400),
    "Content-Length list": (_req("POST /echo HTTP/1.1\nHost: gw\nContent-Length: 5, 40\n", b"hello" + SMUGGLED),
                            GUNICORN, 400),
    "signed Content-Length": (_req("POST /echo HTTP/1.1\nHost: gw\nContent-Length: +5\n", b"hello"), GUNICORN, 400),
    "hex Content-Length": (_req("POST /echo HTTP/1.1\nHost: gw\nContent-Length: 0x5\n", b"hello"), GUNICORN, 400),
    "TE chunked, identity": (_req("POST /echo HTTP/1.1\nHost: gw\nTransfer-Encoding: chunked, identity\n",
                                  b"5\r\nhello\r\n0\r\n\r\n"), GUNICORN, 400),
    "TE identity, chunked": (_req("POST /echo HTTP/1.1\nHost: gw\nTransfer-Encoding: identity, chunked\n",
                                  b"5\r\nhello\r\n0\r\n\r\n"), GATEWAY, 501),
    "TE gzip, chunked": (_req("POST /echo HTTP/1.1\nHost: gw\nTransfer-Encoding: gzip, chunked\n",
                              b"5\r\nhello\r\n0\r\n\r\n"), GATEWAY, 501),
    "TE xchunked": (_req("POST /echo HTTP/1.1\nHost: gw\nTransfer-Encoding: xchunked\n",
                         b"5\r\nhello\r\n0\r\n\r\n"), GUNICORN, 501),
    "TE twice": (_req("POST /echo HTTP/1.1\nHost: gw\nTransfer-Encoding: chunked\nTransfer-Encoding: chunked\n",
                      b"5\r\nhello\r\n0\r\n\r\n"), GUNICORN, 400),
    "TE with a tab": (_req("POST /echo HTTP/1.1\nHost: gw\nTransfer-Encoding:\tchunked\n",
                           b"5\r\nhello\r\n0\r\n\r\n"), GATEWAY, 200),
    "TE with space before the colon": (_req("POST /echo HTTP/1.1\nHost: gw\nTransfer-Encoding : chunked\n",
                                            b"5\r\nhello\r\n0\r\n\r\n"), GUNICORN, 400),
    "TE in HTTP/1.0": (_req("POST /echo HTTP/1.0\nHost: gw\nTransfer-Encoding: chunked\n",
                            b"5\r\nhello\r\n0\r\n\r\n"), GUNICORN, 400),
    "obs-fold header": (_req("GET /echo HTTP/1.1\nHost: gw\nX-Folded: a\n b\n"), GUNICORN, 400),
    "obs-fold Transfer-Encoding": (_req("POST /echo HTTP/1.1\nHost: gw\nTransfer-Encoding:\n chunked\n",
                                        b"5\r\nhello\r\n0\r\n\r\n"), GUNICORN, 400),
    "bare LF line endings": (b"GET /echo HTTP/1.1\nHost: gw\n\n", GUNICORN, 400),
    "chunk size with junk": (_req("POST /echo HTTP/1.1\nHost: gw\nTransfer-Encoding: chunked\n",
                                  b"5x\r\nhello\r\n0\r\n\r\n"), GUNICORN, 400),   # the worker's loop
    "chunk size overflow": (_req("POST /echo HTTP/1.1\nHost: gw\nTransfer-Encoding: chunked\n",
                                 b"1" + b"0" * 20 + b"\r\nhello\r\n0\r\n\r\n"), GATEWAY, 413),  # declares > limit
    "chunk extension": (_req("POST /echo HTTP/1.1\nHost: gw\nTransfer-Encoding: chunked\n",
                             b"5;ext=1\r\nhello\r\n0\r\n\r\n"), GATEWAY, 200),
    "chunked body cut short": (_req("POST /echo HTTP/1.1\nHost: gw\nTransfer-Encoding: chunked\n", b"5\r\nhel"),
                               GATEWAY, 400),
    "sized body cut short": (_req("POST /echo HTTP/1.1\nHost: gw\nContent-Length: 10\n", b"hello"), GATEWAY, 400),
    "header field over 16 KiB": (_req("GET /echo HTTP/1.1\nHost: gw\nX-Big: " + "a" * 16400 + "\n"), GUNICORN, 431),
    "more than 100 header fields": (_req("GET /echo HTTP/1.1\nHost: gw\n" + "".join(f"X-{i}: v\n" for i in range(101))),
                                    GUNICORN, 431),
    "request line over 8190 bytes": (_req("GET /" + "a" * 8200 + " HTTP/1.1\nHost: gw\n"), GUNICORN, 414),
    "path over 4096 characters": (_req("GET /" + "a" * 5000 + " HTTP/1.1\nHost: gw\n"), GATEWAY, 400),
    "NUL in a header value": (_req("GET /echo HTTP/1.1\nHost: gw\nX-A: a\x00b\n"), GUNICORN, 400),
    "CR in a header value": (_req("GET /echo HTTP/1.1\nHost: gw\nX-A: a\rb\n"), GUNICORN, 400),
    "space in a header name": (_req("GET /echo HTTP/1.1\nHost: gw\nX A: b\n"), GUNICORN, 400),
    "two Host headers": (_req("GET /echo HTTP/1.1\nHost: gw\nHost: evil\n"), GUNICORN, 400),
    "dot-dot in the raw path": (_req("GET /petstore/../echo HTTP/1.1\nHost: gw\n"), GATEWAY, 200),
    "encoded slash in the raw path": (_req("GET /petstore%2F..%2Fecho HTTP/1.1\nHost: gw\n"), GATEWAY, 400),
    "backslash in the raw path": (_req("GET /echo\\..\\petstore HTTP/1.1\nHost: gw\n"), GATEWAY, 400),
    "non-UTF-8 byte in the path": (b"GET /echo/\xff HTTP/1.1\r\nHost: gw\r\n\r\n", GUNICORN, 400),
    "non-UTF-8 byte in the query": (b"GET /echo?q=\xff HTTP/1.1\r\nHost: gw\r\n\r\n", GUNICORN, 400),
    "absolute-form target": (_req("GET http://evil/petstore/../echo HTTP/1.1\nHost: gw\n"), GATEWAY, 200),
}

class RecordingUpstream(RawSocketServer):
    """A raw-socket HTTP/1.1 server that records each connection's bytes and answers 200."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []
        self._lock = threading.Lock()

    def __enter__(self) -> RecordingUpstream:
        super().__enter__()
        return self

    def handle(self, conn: socket.socket) -> None:
        with conn:
            data = _read_one_request(conn)
            with self._lock:
                self.received.append(data)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    def take(self) -> list[bytes]:
        with self._lock:
            received, self.received = self.received, []
        return received


def _read_one_request(conn: socket.socket) -> bytes:
    """Everything the peer sends for one request (headers, then the body its framing announces)."""
    conn.settimeout(2)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        length = re.search(rb"\r\ncontent-length: *(\d+)", head)
        while True:
            body = data.split(b"\r\n\r\n", 1)[1]
            if length and len(body) >= int(length.group(1)):
                break
            if b"transfer-encoding: chunked" in head and body.endswith(b"0\r\n\r\n"):
                break
            if not length and b"transfer-encoding" not in head:
                break
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        conn.settimeout(0.2)
        data += conn.recv(65536)          # anything more on this connection would be smuggled
    except (TimeoutError, OSError):
        pass
    return data


def assert_unambiguous(raw: bytes) -> None:
    """One request line, at most one Content-Length, and not together with Transfer-Encoding."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    names = [line.split(b":", 1)[0].strip().lower() for line in lines[1:]]
    assert names.count(b"content-length") <= 1, raw
    assert names.count(b"transfer-encoding") <= 1, raw
    assert not (b"content-length" in names and b"transfer-encoding" in names), raw
    for line in lines[1:]:
        if line.lower().startswith(b"transfer-encoding"):
            assert line.split(b":", 1)[1].strip().lower() == b"chunked", raw
        assert not line[:1].isspace(), raw                          # no obs-fold
    assert b"/smuggled" not in raw
    assert not re.search(rb"\r\n(GET|POST|PUT) /", body), raw


def raw_exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send ``data``, half-close, and read the answer until the gateway closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return answer


def statuses(answer: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[tuple[ServerProcess, RecordingUpstream]]:
    tmp = tmp_path_factory.mktemp("smuggling")
    with RecordingUpstream() as upstream:
        conf = render_config(CONFIG, tmp / "conf", UPSTREAM_PORT=upstream.port)
        (tmp / "rego").mkdir()
        with gateway_server(tmp, conf, tmp / "rego", workers=1, threads=4) as gateway:
            yield gateway, upstream


@pytest.mark.parametrize("case", list(CASES))
def test_ambiguous_requests_never_reach_the_upstream_ambiguously(stack, case):
    gateway, upstream = stack
    upstream.take()
    raw, who, status = CASES[case]
    answer = raw_exchange(gateway.port, raw)
    received = upstream.take()
    for request in received:
        assert_unambiguous(request)
    assert statuses(answer)[:1] == [status], answer[:300]
    assert len(received) == (1 if status == 200 else 0)
    # gunicorn's refusals are JSON errors too (gateway_app/worker.py), without a request id
    assert (b'"request_id":"' in answer or status == 200) == (who == GATEWAY)


@pytest.mark.parametrize("case", ["chunked body cut short", "sized body cut short"])
def test_a_body_cut_short_is_answered_400_body_invalid(stack, case):
    """Red team 12: an upload the client ended mid-body has a stable reason, in the answer and the access record."""
    gateway, upstream = stack
    answer = raw_exchange(gateway.port, CASES[case][0])
    assert statuses(answer) == [400] and b'"error":"body_invalid"' in answer.replace(b" ", b""), answer[:300]


def test_a_chunked_body_is_forwarded_with_one_framing(stack):
    gateway, upstream = stack
    upstream.take()
    raw = _req("POST /echo HTTP/1.1\nHost: gw\nTransfer-Encoding: chunked\nConnection: close\n",
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert statuses(raw_exchange(gateway.port, raw))[:1] == [200]
    [forwarded] = upstream.take()
    assert_unambiguous(forwarded)
    assert forwarded.endswith(b"hello world") or b"hello" in forwarded


def test_dot_dot_in_the_raw_path_is_forwarded_resolved(stack):
    gateway, upstream = stack
    upstream.take()
    answer = raw_exchange(gateway.port, _req("GET /petstore/../echo HTTP/1.1\nHost: gw\nConnection: close\n"))
    assert statuses(answer)[:1] == [200]
    [forwarded] = upstream.take()
    assert forwarded.startswith(b"GET /echo HTTP/1.1\r\n")


def test_a_path_resolving_into_a_protected_route_is_not_forwarded(stack):
    gateway, upstream = stack
    upstream.take()
    for path in (b"/echo/../petstore", b"/echo/%2e%2e/petstore", b"//petstore", b"/%70etstore"):
        answer = raw_exchange(gateway.port, b"GET " + path + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        assert statuses(answer)[:1] == [403], (path, answer[:200])
    assert upstream.take() == []


def test_pipelined_requests_are_each_forwarded_as_one_request(stack):
    gateway, upstream = stack
    upstream.take()
    pipelined = (b"GET /one HTTP/1.1\r\nHost: gw\r\n\r\n"
                 b"POST /two HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabc"
                 b"GET /three HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert statuses(raw_exchange(gateway.port, pipelined)) == [200, 200, 200]
    received = upstream.take()
    assert [r.split(b" ", 2)[1] for r in received] == [b"/one", b"/two", b"/three"]
    for request in received:
        assert_unambiguous(request)
