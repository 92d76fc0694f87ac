"""The recording upstream itself: it records the bytes it receives and sends exactly the answer it is given."""

from __future__ import annotations

import socket

from tests.support.recording_upstream import CannedResponse
from tests.support.recording_upstream import RecordingUpstream


def exchange(upstream: RecordingUpstream, data: bytes) -> bytes:
    """Send ``data`` on one connection, half-close, and read until the upstream closes."""
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_records_the_request_line_header_bytes_and_body_of_each_request(recording_upstream):
    exchange(recording_upstream, b"POST /a?q=%2F HTTP/1.1\r\nHost: x\r\nX-Dup: 1\r\nx-dup: 2\r\n"
                                 b"Content-Length: 5\r\n\r\nhello"
                                 b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
    first, second = recording_upstream.requests
    assert first.request_line == "POST /a?q=%2F HTTP/1.1"
    assert (first.method, first.target) == ("POST", "/a?q=%2F")
    assert first.headers == [("Host", "x"), ("X-Dup", "1"), ("x-dup", "2"), ("Content-Length", "5")]
    assert first.header_values("x-dup") == ["1", "2"]
    assert first.raw_head.endswith(b"Content-Length: 5\r\n\r\n")
    assert first.body == b"hello"
    assert second.body == b"abcde"
    assert second.raw_body == b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
    assert first.connection == second.connection          # one kept-alive connection


def test_answers_from_the_queue_in_order_then_the_default(recording_upstream):
    recording_upstream.respond_with(
        CannedResponse(302, [("Location", "/x"), ("set-cookie", "a=1"), ("Set-Cookie", "b=2")], b"moved"),
        CannedResponse(200, [("X-A", "1")], b"hello world", framing="chunked", chunk_size=5,
                       interim=[CannedResponse(103, [("Link", "</s.css>; rel=preload")])]),
        CannedResponse(204, [("X-B", "2")]),
    )
    answer = exchange(recording_upstream, b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n" * 3
                      + b"HEAD /4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer == (b"HTTP/1.1 302 Found\r\nLocation: /x\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\n"
                      b"Content-Length: 5\r\n\r\nmoved"
                      b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                      b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhello\r\n5\r\n worl\r\n1\r\nd\r\n0\r\n\r\n"
                      b"HTTP/1.1 204 No Content\r\nX-B: 2\r\n\r\n"
                      b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n")
    assert [r.target for r in recording_upstream.requests] == ["/1", "/1", "/1", "/4"]


def test_raw_answers_are_sent_as_given_and_clear_forgets_everything(recording_upstream):
    recording_upstream.respond_with(CannedResponse(raw=b"HTTP/1.1 200 OK\r\nX: \xff\r\n\r\n"),
                                    CannedResponse(500))
    assert exchange(recording_upstream, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b"HTTP/1.1 200 OK\r\nX: \xff\r\n\r\n"
    recording_upstream.clear()
    assert recording_upstream.requests == []
    assert exchange(recording_upstream, b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200 OK\r\n")
