"""The forwarder: what reaches the upstream, what comes back, and how failures are named.

Most cases use the requests-mock fixture; streaming, framing and error cases use a real
upstream on 127.0.0.1 (a werkzeug server in a thread, or a raw socket for broken answers).
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import logging
import socket
import threading
import time
import typing as t

import flask
import pytest
import requests
from requests_mock import ANY
from requests_mock import Mocker
from werkzeug.http import is_hop_by_hop_header
from werkzeug.serving import make_server
from werkzeug.test import EnvironBuilder
from werkzeug.test import run_wsgi_app
from werkzeug.wsgi import get_input_stream

from gateway_app.config.upstreams import UpstreamTarget
from gateway_app.errors import BadRequestError
from gateway_app.errors import ConfigError
from gateway_app.errors import GatewayError
from gateway_app.errors import PayloadTooLargeError
from gateway_app.errors import UpstreamBodyAborted
from gateway_app.errors import UpstreamError
from gateway_app.errors import UpstreamTimeoutError
from gateway_app.incoming import IncomingRequest
from gateway_app.proxy import CHUNK_SIZE
from gateway_app.header_values import HOP_BY_HOP_HEADERS
from gateway_app.proxy import Forwarder
from gateway_app.request_body import ClientBody
from gateway_app.request_body import client_body
from tests.factories import incoming_request
from tests.factories import open_route_yaml

MOCK_TARGET = UpstreamTarget(name="gloo-system/mock", base_url="http://upstream.test:8080")
COOKIES = ["session=abc; Path=/; HttpOnly", "theme=dark; Path=/"]
LARGE_BODY = bytes(range(256)) * 4096          # 1 MiB
GZIPPED = gzip.compress(b'{"greeting": "hello"}' * 100)


def make_request(**overrides: t.Any) -> IncomingRequest:
    """An IncomingRequest as the gateway's request reader would build it."""
    values: dict[str, t.Any] = {"path": "/anything", "host": "gw.example.com", "headers": {"user-agent": "curl/8.5"},
                                "remote_addr": "203.0.113.7", "request_id": "req-1", **overrides}
    return incoming_request(**values)


def read_all(response: flask.Response) -> bytes:
    try:
        return b"".join(response.response)
    finally:
        response.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the real upstream ------------------------------------------------------------------

def _echo(environ: dict[str, t.Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    data = get_input_stream(environ).read()
    headers = {key[5:].replace("_", "-").lower(): value
               for key, value in environ.items() if key.startswith("HTTP_")}
    if environ.get("CONTENT_LENGTH"):
        headers["content-length"] = environ["CONTENT_LENGTH"]
    report = {"method": environ["REQUEST_METHOD"], "uri": environ["REQUEST_URI"], "headers": headers,
              "length": len(data), "sha256": hashlib.sha256(data).hexdigest(),
              "remote_port": environ["REMOTE_PORT"]}
    return 200, [("Content-Type", "application/json")], json.dumps(report).encode()


def _upstream_answer(environ: dict[str, t.Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    path = environ["PATH_INFO"]
    if path == "/cookies":
        return 200, [("Set-Cookie", cookie) for cookie in COOKIES], b"cookies"
    if path == "/gzip":
        return 200, [("Content-Type", "application/json"), ("Content-Encoding", "gzip")], GZIPPED
    if path == "/large":
        return 200, [("Content-Type", "application/octet-stream")], LARGE_BODY
    if path == "/slow":
        time.sleep(0.5)
        return 200, [], b"late"
    return _echo(environ)


def upstream_app(environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> t.Iterable[bytes]:
    if environ["PATH_INFO"] == "/chunked":
        start_response("200 OK", [("Content-Type", "text/plain")])  # no length: werkzeug chunks it
        return iter([b"first,", b"second"])
    status, headers, body = _upstream_answer(environ)
    headers.append(("Content-Length", str(len(body))))
    start_response(f"{status} X", headers)
    return [body]


class ServerThread:
    """A werkzeug server on 127.0.0.1 and a free port, served from a daemon thread."""

    def __init__(self, app: t.Callable[..., t.Any]) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def live_upstream() -> t.Iterator[str]:
    server = ServerThread(upstream_app)
    yield server.url
    server.stop()


class KeepAliveHandler(http.server.BaseHTTPRequestHandler):
    """Answers with the client's port (or a large body) on keep-alive connections.

    werkzeug's development server closes every connection, so pooling is tested here.
    """

    protocol_version = "HTTP/1.1"
    wbufsize = -1  # one write per answer: no delayed-ACK stalls on keep-alive connections

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionResetError:
            pass  # the forwarder dropped a half-read connection, as it should

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        body = LARGE_BODY if self.path == "/large" else str(self.client_address[1]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    def log_message(self, *args: t.Any) -> None:
        pass


@pytest.fixture(scope="module")
def keep_alive_upstream() -> t.Iterator[UpstreamTarget]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KeepAliveHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield UpstreamTarget(name="keep-alive", base_url=f"http://127.0.0.1:{server.server_port}")
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def upstream_port(forwarder: Forwarder, target: UpstreamTarget) -> bytes:
    """The client port the upstream saw: equal ports mean a reused connection."""
    return read_all(forwarder.forward(make_request(path="/port"), None, target))


@pytest.fixture
def live_target(live_upstream: str) -> UpstreamTarget:
    return UpstreamTarget(name="gloo-system/httpbin", base_url=live_upstream, read_timeout=5.0)


@pytest.fixture
def forwarder() -> t.Iterator[Forwarder]:
    forwarder = Forwarder()
    yield forwarder
    forwarder.close()


@pytest.fixture
def upstream_mock(requests_mock: Mocker) -> Mocker:
    """The requests-mock fixture, answering "ok" to anything not registered more precisely."""
    requests_mock.register_uri(ANY, ANY, content=b"ok")
    return requests_mock


def body_of(request: IncomingRequest, stream: t.IO[bytes], limit: int | None = None) -> ClientBody | None:
    """The body stage for ``stream``, framed by ``request``'s headers, from a server that ends its input."""
    return client_body({"wsgi.input": stream, "wsgi.input_terminated": True}, request, limit)


def echo(forwarder: Forwarder, request: IncomingRequest, target: UpstreamTarget,
         body: t.IO[bytes] | None = None, **kwargs: t.Any) -> dict[str, t.Any]:
    response = forwarder.forward(request, None if body is None else body_of(request, body), target, **kwargs)
    assert response.status_code == 200
    return json.loads(read_all(response))


class ReadRecorder(io.BytesIO):
    """A request body that remembers how much each read asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.sizes: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        self.sizes.append(-1 if size is None else size)
        return super().read(size)


# --- method, path and query -------------------------------------------------------------

@pytest.mark.parametrize(("path", "query"), [
    ("/files/a%2Fb", ""),
    ("/search", "a=%2F&b=c%20d&e"),
    ("/search", "q=1+2&tag=x&tag=y"),
    ("/users/%7Eme", "next=%7E&empty="),
], ids=["encoded slash in the path", "encoded slash, space and bare key in the query",
        "plus and repeated params", "escapes of unreserved characters stay escaped"])
def test_path_and_query_reach_the_url_byte_for_byte(
        forwarder: Forwarder, upstream_mock: Mocker, path: str, query: str) -> None:
    request = make_request(method="PATCH", path=path, query_string=query)
    read_all(forwarder.forward(request, None, MOCK_TARGET))
    sent = upstream_mock.last_request
    expected = "http://upstream.test:8080" + path + (f"?{query}" if query else "")
    assert (sent.method, sent.url) == ("PATCH", expected)


def test_request_target_reaches_a_real_upstream_unchanged(forwarder: Forwarder, live_target: UpstreamTarget) -> None:
    request = make_request(method="DELETE", path="/files/a%2Fb/%7Eme", query_string="a=%2F&b=c%20d&e&q=1+2&q=3")
    report = echo(forwarder, request, live_target)
    assert (report["method"], report["uri"]) == ("DELETE", "/files/a%2Fb/%7Eme?a=%2F&b=c%20d&e&q=1+2&q=3")


def test_base_path_prefixes_the_path_override(forwarder: Forwarder, upstream_mock: Mocker) -> None:
    target = UpstreamTarget(name="api", base_url="https://api.internal:8443/base/")
    read_all(forwarder.forward(make_request(query_string="x=1"), None, target, path="/v2/items"))
    assert upstream_mock.last_request.url == "https://api.internal:8443/base/v2/items?x=1"


@pytest.mark.parametrize("base_url", [
    "ftp://files.internal", "http://", "http://user:secret@api.internal", "http://api.internal/?q=1",
], ids=["not http", "no host", "credentials in the url", "a query in the url"])
def test_unusable_base_url_is_a_config_error_that_hides_credentials(base_url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        UpstreamTarget(name="default/api", base_url=base_url)
    assert "default/api" in str(raised.value) and "secret" not in str(raised.value)


@pytest.mark.parametrize("settings", [
    {"connect_timeout": 0}, {"read_timeout": -1.0}, {"verify": "/nonexistent/ca.pem"},
], ids=["zero connect timeout", "negative read timeout", "missing CA bundle"])
def test_unusable_target_settings_are_config_errors(settings: dict[str, t.Any]) -> None:
    with pytest.raises(ConfigError, match="upstream default/api"):
        UpstreamTarget(name="default/api", base_url="https://api.internal", **settings)


# --- request headers --------------------------------------------------------------------

def test_hop_by_hop_headers_cover_werkzeugs_list() -> None:
    rfc_2616 = ["Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
                "TE", "Trailer", "Transfer-Encoding", "Upgrade"]
    assert all(is_hop_by_hop_header(name) for name in rfc_2616)
    assert {name.lower() for name in rfc_2616} <= HOP_BY_HOP_HEADERS


def test_hop_by_hop_request_headers_are_not_forwarded(forwarder: Forwarder, upstream_mock: Mocker) -> None:
    hop = {"connection": "keep-alive, X-Private-Hop", "x-private-hop": "1", "keep-alive": "timeout=5",
           "te": "trailers", "trailer": "x-checksum", "upgrade": "websocket", "proxy-connection": "keep-alive",
           "proxy-authorization": "Basic c2VjcmV0", "expect": "100-continue"}
    request = make_request(headers={**hop, "x-end-to-end": "kept", "accept": "application/json"})
    read_all(forwarder.forward(request, None, MOCK_TARGET))
    sent = upstream_mock.last_request.headers
    assert not set(hop) & {name.lower() for name in sent}
    assert (sent["x-end-to-end"], sent["accept"]) == ("kept", "application/json")


def test_removed_headers_cannot_be_forged_by_the_client(forwarder: Forwarder, upstream_mock: Mocker) -> None:
    request = make_request(headers={"x-customer": "evil-corp", "x-user-id": "admin", "x-kept": "yes"})
    read_all(forwarder.forward(request, None, MOCK_TARGET, remove_headers=["X-Customer", "X-USER-ID"]))
    sent = upstream_mock.last_request.headers
    assert "x-customer" not in sent and "x-user-id" not in sent and sent["x-kept"] == "yes"


def test_added_headers_replace_client_copies_and_survive_connection_tricks(
        forwarder: Forwarder, upstream_mock: Mocker) -> None:
    request = make_request(headers={"x-customer": "evil-corp", "connection": "x-customer"})
    read_all(forwarder.forward(request, None, MOCK_TARGET, remove_headers={"x-customer"},
                               add_headers={"X-Customer": "acme", "X-Scopes": "read write"}))
    sent = upstream_mock.last_request.headers
    assert (sent["x-customer"], sent["x-scopes"]) == ("acme", "read write")


def test_routes_cannot_set_framing_headers(forwarder: Forwarder, upstream_mock: Mocker) -> None:
    add = {"Content-Length": "999", "Transfer-Encoding": "chunked", "Connection": "close", "X-Tenant": "acme"}
    read_all(forwarder.forward(make_request(), None, MOCK_TARGET, add_headers=add))
    sent = {name.lower(): value for name, value in upstream_mock.last_request.headers.items()}
    assert sent["x-tenant"] == "acme"
    assert not {"content-length", "transfer-encoding", "connection"} & set(sent)


def test_forwarding_headers_replace_client_claims_and_append_its_address(
        forwarder: Forwarder, upstream_mock: Mocker) -> None:
    request = make_request(scheme="https", headers={
        "x-forwarded-for": "198.51.100.1", "x-forwarded-proto": "http", "x-forwarded-host": "evil.example",
        "x-request-id": "client-chosen"})
    read_all(forwarder.forward(request, None, MOCK_TARGET))
    sent = upstream_mock.last_request.headers
    assert sent["x-forwarded-for"] == "203.0.113.7"        # the client is not a trusted proxy
    assert (sent["x-forwarded-proto"], sent["x-forwarded-host"]) == ("https", "gw.example.com")
    assert sent["x-request-id"] == "req-1"


def test_first_hop_gets_the_client_address_alone(forwarder: Forwarder, upstream_mock: Mocker) -> None:
    read_all(forwarder.forward(make_request(), None, MOCK_TARGET))
    assert upstream_mock.last_request.headers["x-forwarded-for"] == "203.0.113.7"


@pytest.mark.parametrize(("preserve_host", "host_rewrite", "expected"), [
    (True, None, "gw.example.com"),
    (True, "api.internal", "api.internal"),
    (False, None, "127.0.0.1:{port}"),
], ids=["client host preserved by default", "host rewritten when configured", "target host when not preserved"])
def test_host_header_sent_upstream(live_upstream: str, preserve_host: bool, host_rewrite: str | None,
                                   expected: str) -> None:
    forwarder = Forwarder(preserve_host=preserve_host)
    target = UpstreamTarget(name="httpbin", base_url=live_upstream, host_rewrite=host_rewrite)
    try:
        report = echo(forwarder, make_request(), target)
    finally:
        forwarder.close()
    assert report["headers"]["host"] == expected.format(port=live_upstream.rsplit(":", 1)[1])


def test_no_default_user_agent_or_accept_encoding_is_invented(forwarder: Forwarder, live_target: UpstreamTarget) -> None:
    report = echo(forwarder, make_request(headers={}), live_target)
    assert "user-agent" not in report["headers"] and "accept-encoding" not in report["headers"]


def test_proxy_settings_from_the_environment_are_ignored(
        forwarder: Forwarder, live_target: UpstreamTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("NO_PROXY", "")
    assert echo(forwarder, make_request(), live_target)["method"] == "GET"


def test_connections_are_pooled_per_thread(forwarder: Forwarder, keep_alive_upstream: UpstreamTarget) -> None:
    ports = {upstream_port(forwarder, keep_alive_upstream) for _ in range(3)}
    other_thread: list[bytes] = []
    worker = threading.Thread(target=lambda: other_thread.append(upstream_port(forwarder, keep_alive_upstream)))
    worker.start()
    worker.join()
    assert len(ports) == 1 and other_thread and other_thread[0] not in ports


def test_a_thread_keeps_its_connections_to_more_upstreams_than_pool_connections(
        keep_alive_upstream: UpstreamTarget, live_target: UpstreamTarget) -> None:
    forwarder = Forwarder(pool_connections=1)        # the pool manager alone would keep one origin
    try:
        ports = set()
        for _ in range(3):
            ports.add(upstream_port(forwarder, keep_alive_upstream))
            response = forwarder.forward(make_request(), None, live_target)
            assert response.status_code == 200
            read_all(response)
        assert len(ports) == 1
    finally:
        forwarder.close()


def test_forwarding_works_again_after_the_forwarder_is_closed(forwarder: Forwarder,
                                                              keep_alive_upstream: UpstreamTarget) -> None:
    first = upstream_port(forwarder, keep_alive_upstream)
    forwarder.close()
    assert upstream_port(forwarder, keep_alive_upstream) not in (first, b"")


def test_connections_are_reused_across_requests_to_one_upstream(forwarder: Forwarder,
                                                                keep_alive_upstream: UpstreamTarget) -> None:
    assert len({upstream_port(forwarder, keep_alive_upstream) for _ in range(5)}) == 1


# --- request bodies ---------------------------------------------------------------------

def test_large_upload_is_streamed_with_its_content_length(forwarder: Forwarder, live_target: UpstreamTarget) -> None:
    data = bytes(range(251)) * (5 * 1024 * 1024 // 251)
    body = ReadRecorder(data)
    request = make_request(method="POST", headers={"content-length": str(len(data))})
    report = echo(forwarder, request, live_target, body)
    assert (report["length"], report["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert report["headers"]["content-length"] == str(len(data))
    assert "transfer-encoding" not in report["headers"]
    assert max(body.sizes) <= CHUNK_SIZE


def test_chunked_upload_is_streamed_chunked(forwarder: Forwarder, live_target: UpstreamTarget) -> None:
    data = b"0123456789abcdef" * 20_000
    request = make_request(method="PUT", headers={"transfer-encoding": "chunked"})
    report = echo(forwarder, request, live_target, io.BytesIO(data))
    assert (report["length"], report["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert report["headers"]["transfer-encoding"] == "chunked"


def test_small_chunked_upload_is_sent_with_a_content_length(forwarder: Forwarder, live_target: UpstreamTarget) -> None:
    request = make_request(method="POST", headers={"transfer-encoding": "chunked"})
    report = echo(forwarder, request, live_target, io.BytesIO(b'{"small": true}'))
    assert (report["length"], report["headers"]["content-length"]) == (15, "15")
    assert "transfer-encoding" not in report["headers"]


def test_request_without_length_or_chunking_has_no_body(forwarder: Forwarder, upstream_mock: Mocker) -> None:
    request = make_request()
    read_all(forwarder.forward(request, body_of(request, io.BytesIO(b"ignored")), MOCK_TARGET))
    assert upstream_mock.last_request.body is None


def test_oversized_content_length_is_rejected_with_413_before_sending(upstream_mock: Mocker) -> None:
    request = make_request(method="POST", headers={"content-length": "1001"})
    with pytest.raises(PayloadTooLargeError) as raised:
        body_of(request, io.BytesIO(b"x" * 1001), limit=1000)
    assert raised.value.status_code == 413 and upstream_mock.call_count == 0


def test_oversized_chunked_upload_is_rejected_before_sending(forwarder: Forwarder, upstream_mock: Mocker) -> None:
    request = make_request(method="POST", headers={"transfer-encoding": "chunked"})
    with pytest.raises(PayloadTooLargeError):
        forwarder.forward(request, body_of(request, io.BytesIO(b"x" * 5000), limit=1000), MOCK_TARGET)
    assert upstream_mock.call_count == 0


def test_chunked_upload_growing_past_the_limit_aborts_the_upstream_request(forwarder: Forwarder,
                                                                          live_target: UpstreamTarget) -> None:
    request = make_request(method="POST", headers={"transfer-encoding": "chunked"})
    body = body_of(request, io.BytesIO(b"x" * 10 * CHUNK_SIZE), limit=3 * CHUNK_SIZE)
    with pytest.raises(PayloadTooLargeError):
        forwarder.forward(request, body, live_target)


@pytest.mark.parametrize("declared", [100, 10 * CHUNK_SIZE], ids=["small body", "streamed body"])
def test_body_shorter_than_its_content_length_is_a_bad_request(
        forwarder: Forwarder, live_target: UpstreamTarget, declared: int) -> None:
    request = make_request(method="POST", headers={"content-length": str(declared)})
    with pytest.raises(BadRequestError):
        forwarder.forward(request, body_of(request, io.BytesIO(b"too short")), live_target)


@pytest.mark.parametrize("declared", ["abc", "-1", "5, 5", "１２", "+5", " 5"],
                         ids=["not a number", "negative", "repeated", "non-ascii digits", "signed", "spaced"])
def test_malformed_content_length_is_a_bad_request(upstream_mock: Mocker, declared: str) -> None:
    request = make_request(method="POST", headers={"content-length": declared})
    with pytest.raises(BadRequestError):
        body_of(request, io.BytesIO(b"12345"))


# --- responses --------------------------------------------------------------------------

def test_hop_by_hop_response_headers_are_not_returned(forwarder: Forwarder, upstream_mock: Mocker) -> None:
    upstream_mock.register_uri("GET", "/hop", content=b"ok", headers={
        "Connection": "keep-alive, X-Upstream-Private", "X-Upstream-Private": "1", "Keep-Alive": "timeout=5",
        "Proxy-Authenticate": "Basic", "Upgrade": "h2c", "X-End-To-End": "kept"})
    response = forwarder.forward(make_request(path="/hop"), None, MOCK_TARGET)
    read_all(response)
    names = {name.lower() for name in response.headers.keys()}
    assert not names & {"connection", "x-upstream-private", "keep-alive", "proxy-authenticate", "upgrade"}
    assert response.headers["X-End-To-End"] == "kept"


def test_chunked_response_is_passed_on_without_framing_headers(forwarder: Forwarder, live_target: UpstreamTarget) -> None:
    response = forwarder.forward(make_request(path="/chunked"), None, live_target)
    assert read_all(response) == b"first,second"
    assert "Transfer-Encoding" not in response.headers and "Content-Length" not in response.headers


def test_content_length_beside_transfer_encoding_is_dropped(
        forwarder: Forwarder, upstream_mock: Mocker) -> None:
    upstream_mock.register_uri("GET", "/both", content=b"hello",
                               headers={"Transfer-Encoding": "chunked", "Content-Length": "5"})
    response = forwarder.forward(make_request(path="/both"), None, MOCK_TARGET)
    read_all(response)
    assert "Content-Length" not in response.headers and "Transfer-Encoding" not in response.headers


def test_request_id_is_returned_instead_of_the_upstreams(forwarder: Forwarder, upstream_mock: Mocker) -> None:
    upstream_mock.register_uri("GET", "/id", content=b"ok", headers={"X-Request-Id": "upstream-id"})
    response = forwarder.forward(make_request(path="/id"), None, MOCK_TARGET)
    read_all(response)
    assert response.headers.getlist("X-Request-Id") == ["req-1"]


def test_redirects_are_passed_through_not_followed(forwarder: Forwarder, upstream_mock: Mocker) -> None:
    upstream_mock.register_uri("GET", "/old", status_code=302, content=b"moved",
                               headers={"Location": "http://upstream.test:8080/new"})
    response = forwarder.forward(make_request(path="/old"), None, MOCK_TARGET)
    assert (response.status_code, response.headers["Location"]) == (302, "http://upstream.test:8080/new")
    assert read_all(response) == b"moved" and upstream_mock.call_count == 1


def test_response_without_content_type_gets_none_added(forwarder: Forwarder, upstream_mock: Mocker) -> None:
    upstream_mock.register_uri("DELETE", "/item", status_code=204)
    response = forwarder.forward(make_request(method="DELETE", path="/item"), None, MOCK_TARGET)
    read_all(response)
    assert response.status_code == 204 and "Content-Type" not in response.headers


def test_large_response_is_streamed_in_several_chunks(forwarder: Forwarder, live_target: UpstreamTarget) -> None:
    response = forwarder.forward(make_request(path="/large"), None, live_target)
    chunks = list(response.response)
    response.close()
    assert len(chunks) > 1 and max(map(len, chunks)) <= CHUNK_SIZE
    assert b"".join(chunks) == LARGE_BODY and response.headers["Content-Length"] == str(len(LARGE_BODY))


def test_gzip_response_is_passed_through_still_encoded(forwarder: Forwarder, live_target: UpstreamTarget) -> None:
    response = forwarder.forward(make_request(path="/gzip", headers={"accept-encoding": "gzip"}), None, live_target)
    assert read_all(response) == GZIPPED
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Content-Length"] == str(len(GZIPPED))


def test_every_set_cookie_header_is_kept(forwarder: Forwarder, live_target: UpstreamTarget) -> None:
    response = forwarder.forward(make_request(path="/cookies"), None, live_target)
    read_all(response)
    assert response.headers.getlist("Set-Cookie") == COOKIES


def test_upstream_cookies_are_not_kept_by_the_shared_session(forwarder: Forwarder, live_target: UpstreamTarget) -> None:
    read_all(forwarder.forward(make_request(path="/cookies"), None, live_target))
    report = echo(forwarder, make_request(), live_target)
    assert "cookie" not in report["headers"]        # a session's jar would have sent them back to the host


def test_closing_a_half_read_response_drops_its_connection(
        forwarder: Forwarder, keep_alive_upstream: UpstreamTarget) -> None:
    first_port = upstream_port(forwarder, keep_alive_upstream)
    response = forwarder.forward(make_request(path="/large"), None, keep_alive_upstream)
    next(iter(response.response))
    response.close()
    assert upstream_port(forwarder, keep_alive_upstream) != first_port


def test_bodiless_head_answer_releases_its_connection(forwarder: Forwarder, keep_alive_upstream: UpstreamTarget) -> None:
    first_port = upstream_port(forwarder, keep_alive_upstream)
    response = forwarder.forward(make_request(method="HEAD", path="/large"), None, keep_alive_upstream)
    body, status, headers = run_wsgi_app(response, EnvironBuilder(method="HEAD").get_environ())
    assert (status, list(body)) == ("200 OK", [])
    body.close()  # what the WSGI server does; werkzeug never iterates the upstream body for HEAD
    assert headers["Content-Length"] == str(len(LARGE_BODY))
    assert upstream_port(forwarder, keep_alive_upstream) == first_port


# --- upstream failures ------------------------------------------------------------------

def test_refused_connection_is_a_502_naming_the_upstream_not_the_url(forwarder: Forwarder) -> None:
    target = UpstreamTarget(name="gloo-system/down", base_url=f"http://127.0.0.1:{free_port()}")
    request = make_request(query_string="access_token=s3cr3t-token")
    with pytest.raises(UpstreamError) as raised:
        forwarder.forward(request, None, target)
    assert raised.value.status_code == 502 and type(raised.value) is UpstreamError
    assert str(raised.value) == "upstream gloo-system/down refused the connection"


def test_slow_upstream_is_a_504(forwarder: Forwarder, live_upstream: str) -> None:
    target = UpstreamTarget(name="gloo-system/slow", base_url=live_upstream, read_timeout=0.1)
    with pytest.raises(UpstreamTimeoutError) as raised:
        forwarder.forward(make_request(path="/slow"), None, target)
    assert raised.value.status_code == 504
    assert str(raised.value) == "upstream gloo-system/slow did not answer in time"


def test_tls_to_a_plain_http_upstream_is_a_502(forwarder: Forwarder, live_upstream: str) -> None:
    target = UpstreamTarget(name="api", base_url=live_upstream.replace("http://", "https://"), verify=False)
    with pytest.raises(UpstreamError) as raised:
        forwarder.forward(make_request(), None, target)
    assert str(raised.value) == "upstream api failed the TLS handshake"


@pytest.mark.parametrize(("failure", "error_type", "message"), [
    (requests.exceptions.ConnectTimeout("http://upstream.test:8080/?token=x"), UpstreamTimeoutError,
     "upstream gloo-system/mock did not accept the connection in time"),
    (requests.exceptions.ReadTimeout("read timed out"), UpstreamTimeoutError,
     "upstream gloo-system/mock did not answer in time"),
    (requests.exceptions.ConnectionError(socket.gaierror(-2, "Name or service not known")), UpstreamError,
     "upstream gloo-system/mock could not be resolved"),
    (requests.exceptions.ConnectionError(ConnectionResetError(104, "reset")), UpstreamError,
     "upstream gloo-system/mock reset the connection"),
], ids=["connect timeout", "read timeout", "dns failure", "connection reset"])
def test_transport_failures_are_translated(
        forwarder: Forwarder, upstream_mock: Mocker, failure: Exception,
        error_type: type[UpstreamError], message: str) -> None:
    upstream_mock.register_uri(ANY, ANY, exc=failure)
    with pytest.raises(UpstreamError) as raised:
        forwarder.forward(make_request(), None, MOCK_TARGET)
    assert type(raised.value) is error_type and str(raised.value) == message


def test_unencodable_header_value_is_an_internal_error_without_the_value(
        forwarder: Forwarder, live_target: UpstreamTarget) -> None:
    with pytest.raises(GatewayError) as raised:
        forwarder.forward(make_request(), None, live_target, add_headers={"X-User": "line\r\nX-Admin: 1"})
    assert raised.value.status_code == 500 and "X-Admin" not in str(raised.value)


@pytest.fixture
def truncating_upstream() -> t.Iterator[str]:
    """Answers with Content-Length 100000, sends 10 bytes, then hangs up."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_once() -> None:
        connection, _ = listener.accept()
        with connection:
            received = b""
            while b"\r\n\r\n" not in received:
                received += connection.recv(4096)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789")

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    thread.join(timeout=5)
    listener.close()


def test_failure_while_streaming_the_body_is_logged_and_aborts_the_stream(
        forwarder: Forwarder, truncating_upstream: str, caplog: pytest.LogCaptureFixture) -> None:
    target = UpstreamTarget(name="gloo-system/flaky", base_url=truncating_upstream)
    response = forwarder.forward(make_request(query_string="access_token=s3cr3t"), None, target)
    assert response.status_code == 200
    with caplog.at_level(logging.WARNING, logger="gateway_app.proxy"), pytest.raises(UpstreamBodyAborted):
        read_all(response)
    assert "gloo-system/flaky failed while sending its body" in caplog.text
    assert "s3cr3t" not in caplog.text


# --- through a real gateway app ---------------------------------------------------------

@pytest.fixture
def gateway(make_app: t.Callable[..., t.Any], live_upstream: str) -> t.Iterator[str]:
    """The real gateway app (:func:`gateway_app.create_app`) served on 127.0.0.1, one open route
    to the live upstream, bodies limited to 1 KiB."""
    app = make_app({"vs.yaml": open_route_yaml(live_upstream)}, max_body_bytes=1024)
    server = ServerThread(app)
    yield server.url
    server.stop()


@pytest.fixture
def client() -> t.Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False
    session.headers["X-Request-Id"] = "gw-42"          # kept by the gateway (GATEWAY_TRUST_REQUEST_ID)
    yield session
    session.close()


def test_gateway_returns_upstream_cookies_and_encoded_body(gateway: str, client: requests.Session) -> None:
    cookies = client.get(f"{gateway}/cookies", timeout=5)
    zipped = client.get(f"{gateway}/gzip", headers={"Accept-Encoding": "gzip"}, timeout=5, stream=True)
    raw_body = zipped.raw.read(decode_content=False)
    zipped.close()
    assert cookies.raw.headers.getlist("Set-Cookie") == COOKIES
    assert cookies.headers["X-Request-Id"] == "gw-42"
    assert raw_body == GZIPPED and zipped.headers["Content-Encoding"] == "gzip"


def test_gateway_answers_an_oversized_body_with_a_413_json_error(gateway: str, client: requests.Session) -> None:
    too_large = client.post(f"{gateway}/echo", data=b"x" * 2048, timeout=5)
    assert too_large.status_code == 413 and too_large.json()["error"] == "payload_too_large"
