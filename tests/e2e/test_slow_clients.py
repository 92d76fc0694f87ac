"""Slow clients and a slow IdP do not stop the gateway (issue 12, class 11), end to end.

Real gunicorn with ``conf/gunicorn.conf.py`` (``gateway_app.worker.HeadReadingWorker``). Clients
that trickle their request head one line a second hold no pool thread, and at most
``maxConcurrentCalls`` requests per worker wait on a slow IdP, so an open route keeps
answering; a head slower than ``GATEWAY_HEAD_TIMEOUT`` is answered 408 and closed. A
differential test sends the same bytes to a plain gthread worker and to the head-reading worker
running a WSGI app that echoes what it sees: the answers must be byte-identical.
"""

from __future__ import annotations

import concurrent.futures
import json
import select
import selectors
import socket
import struct
import threading
import time
import typing as t

import pytest
import requests

from tests.keys import claims
from tests.keys import jwks_json
from tests.keys import make_jwt
from tests.keys import public_jwk
from tests.keys import rsa_key
from tests.support.idp_servers import HeldIdp
from tests.support.servers import GUNICORN
from tests.support.servers import ServerProcess
from tests.support.servers import free_port
from tests.support.servers import gateway_server
from tests.support.servers import render_config

CONFIG = """\
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: httpbin, namespace: gloo-system}
spec:
  static: {hosts: [{addr: 127.0.0.1, port: {UPSTREAM_PORT}}]}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: slow-idp, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        introspection:
          introspectionUrl: http://127.0.0.1:{IDP_PORT}/introspect
          timeout: 30s
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: signed, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        jwt: {localJwks: {inlineString: 'JWKS'}}
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: open, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{prefix: /secure}]
      routeAction: {single: {upstream: {name: httpbin, namespace: gloo-system}}}
      options: {extauth: {configRef: {name: slow-idp, namespace: gloo-system}}}
    - matchers: [{prefix: /signed}]
      routeAction: {single: {upstream: {name: httpbin, namespace: gloo-system}}}
      options:
        extauth: {configRef: {name: signed, namespace: gloo-system}}
        prefixRewrite: /anything
    - matchers: [{prefix: /}]
      routeAction: {single: {upstream: {name: httpbin, namespace: gloo-system}}}
""".replace("JWKS", jwks_json(public_jwk(rsa_key(), kid="main")))

TRICKLING_CLIENTS = 64
BOGUS_TOKENS = 16            # concurrent requests whose introspection the IdP holds (it "takes 10 s")
IDP_HOLD = 10.0
TRICKLED_LINES = 6           # one a second: the heads take ~6 s, within the default 10 s deadline
OPEN_ROUTE_TIMEOUT = 2.0     # the bound: the open route answers within 2 s


def trickled_head(path: str, lines: int) -> list[bytes]:
    """A request head as the lines a slow client sends one by one (the empty line last)."""
    head = [f"GET {path} HTTP/1.1\r\n".encode(), b"Host: gateway.test\r\n"]
    head += [f"X-Trickle-{n}: {n}\r\n".encode() for n in range(lines - 2)]
    return head + [b"Connection: close\r\n\r\n"]


class TricklingClient:
    """One connection that sends its head one line every ``interval`` seconds, then reads the answer."""

    def __init__(self, port: int, lines: list[bytes], interval: float = 1.0) -> None:
        self.port = port
        self.lines = lines
        self.interval = interval
        self.lines_sent = 0
        self.first_line_sent = threading.Event()
        self.answer = b""

    def run(self) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                for index, line in enumerate(self.lines):
                    if index:
                        time.sleep(self.interval)
                    sock.sendall(line)
                    self.lines_sent += 1
                    self.first_line_sent.set()
            except OSError:
                pass                        # closed by the gateway before the head was whole
            finally:
                self.first_line_sent.set()
            self.answer = read_until_closed(sock)
        return self.answer


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def status_of(answer: bytes) -> int | None:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else None


class OpenRouteProbe:
    """Requests to an open route, one after another, each allowed ``OPEN_ROUTE_TIMEOUT`` seconds."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: list[int | str] = []

    def run_until(self, done: t.Callable[[], bool]) -> None:
        with requests.Session() as session:
            session.trust_env = False
            while not done():
                try:
                    self.statuses.append(session.get(self.url, timeout=OPEN_ROUTE_TIMEOUT).status_code)
                except requests.RequestException as error:
                    self.statuses.append(type(error).__name__)

    @property
    def failures(self) -> list[int | str]:
        return [status for status in self.statuses if status != 200]


def trickle_while_probing(gateway: ServerProcess, clients: list[TricklingClient],
                          meanwhile: t.Callable[[], None] = lambda: None) -> tuple[OpenRouteProbe, list]:
    """Start every trickling client, then ``meanwhile()``; probe the open route until the first
    trickling client is answered; collect their answers."""
    probe = OpenRouteProbe(gateway.url + "/anything/public")
    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        futures = [pool.submit(client.run) for client in clients]
        for client in clients:
            client.first_line_sent.wait(10)
        meanwhile()
        probe.run_until(lambda: any(future.done() for future in futures))
        answers = [future.result(timeout=60) for future in futures]
    return probe, answers


def bogus_token_request(gateway: ServerProcess, number: int) -> tuple[int, str | None]:
    """A request to the IdP-protected route with a token the IdP has never issued: (status, reason)."""
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(gateway.url + "/secure", headers={"Authorization": f"Bearer bogus-{number:04d}"},
                               timeout=60)
    return response.status_code, response.json().get("error")


@pytest.fixture(scope="module")
def slow_idp() -> t.Iterator[HeldIdp]:
    with HeldIdp() as idp:
        try:
            yield idp
        finally:
            idp.release.set()


@pytest.fixture(scope="module")
def gateway(httpbin: ServerProcess, slow_idp: HeldIdp,
            tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[ServerProcess]:
    """The gateway as shipped: conf/gunicorn.conf.py, 2 workers x 4 threads, the default head deadline."""
    tmp = tmp_path_factory.mktemp("slow-clients")
    conf = render_config(CONFIG, tmp / "conf", UPSTREAM_PORT=httpbin.port, IDP_PORT=slow_idp.port)
    (tmp / "rego").mkdir()
    env = {"GATEWAY_WORKERS": "2", "GATEWAY_THREADS": "4", "GATEWAY_LOG_LEVEL": "info"}
    with gateway_server(tmp, conf, tmp / "rego", workers=2, threads=4, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def impatient_gateway(httpbin: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[ServerProcess]:
    """One worker with one thread, a 2 s head deadline and client timeout: any thread a slow client took would show."""
    tmp = tmp_path_factory.mktemp("impatient")
    conf = render_config(CONFIG, tmp / "conf", UPSTREAM_PORT=httpbin.port, IDP_PORT=free_port())
    (tmp / "rego").mkdir()
    env = {"GATEWAY_HEAD_TIMEOUT": "2", "GATEWAY_CLIENT_TIMEOUT": "2", "GATEWAY_LOG_LEVEL": "info"}
    with gateway_server(tmp, conf, tmp / "rego", workers=1, threads=1, env=env, name="impatient") as server:
        yield server


def test_64_trickling_clients_and_16_bogus_tokens_on_a_slow_idp_leave_an_open_route_answering(gateway, slow_idp):
    """The issue's example: heads trickle one line a second while an IdP takes 10 s for 16 bogus tokens."""
    clients = [TricklingClient(gateway.port, trickled_head(f"/anything/slow-{n}", TRICKLED_LINES))
               for n in range(TRICKLING_CLIENTS)]
    with concurrent.futures.ThreadPoolExecutor(BOGUS_TOKENS) as pool:
        bogus: list[concurrent.futures.Future] = []
        probe, answers = trickle_while_probing(
            gateway, clients, lambda: bogus.extend(pool.submit(bogus_token_request, gateway, n)
                                                   for n in range(BOGUS_TOKENS)))
        held = slow_idp.calls
        threading.Timer(max(IDP_HOLD - TRICKLED_LINES, 0), slow_idp.release.set).start()
        bogus_answers = [future.result(timeout=60) for future in bogus]
    assert probe.failures == []
    assert len(probe.statuses) >= 5, "the open route was answered while the heads trickled in"
    # Slow but within the deadline: every trickling client is served too.
    assert [status_of(answer) for answer in answers] == [200] * TRICKLING_CLIENTS
    # At most maxConcurrentCalls (2) per worker waited on the IdP; the others were refused at once.
    assert 1 <= held <= 2 * 2
    assert sorted(bogus_answers) == sorted([(403, "token_inactive")] * held
                                           + [(503, "idp_overloaded")] * (BOGUS_TOKENS - held))


def test_a_head_slower_than_the_deadline_is_answered_408_and_closed(impatient_gateway):
    clients = [TricklingClient(impatient_gateway.port, trickled_head("/anything/late", 8)) for _ in range(4)]
    probe, answers = trickle_while_probing(impatient_gateway, clients)
    assert probe.failures == []
    assert len(probe.statuses) >= 1
    for client, answer in zip(clients, answers):
        assert status_of(answer) == 408
        assert b"Connection: close" in answer
        assert client.lines_sent < len(client.lines), "closed before the head was whole"


def test_a_client_that_sends_nothing_is_closed_without_an_answer(impatient_gateway):
    with socket.create_connection(("127.0.0.1", impatient_gateway.port), timeout=30) as sock:
        assert read_until_closed(sock) == b""


def test_a_kept_alive_connection_trickling_its_next_head_holds_no_thread(impatient_gateway):
    with socket.create_connection(("127.0.0.1", impatient_gateway.port), timeout=30) as sock:
        sock.sendall(b"GET /anything/first HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        first = read_answer(sock)
        assert status_of(first) == 200
        client = TricklingClient(impatient_gateway.port, trickled_head("/anything/second", 2))
        sock.sendall(client.lines[0])
        with requests.Session() as session:
            session.trust_env = False
            assert session.get(impatient_gateway.url + "/anything/public", timeout=OPEN_ROUTE_TIMEOUT).status_code == 200
        for line in client.lines[1:]:
            sock.sendall(line)
        assert status_of(read_until_closed(sock)) == 200


def test_clients_that_keep_a_finished_connection_open_do_not_stall_the_worker(impatient_gateway):
    """After ``Connection: close`` the gateway reads until the client closes (RFC 9112 §9.6), never on the loop."""
    holders = [socket.create_connection(("127.0.0.1", impatient_gateway.port), timeout=30) for _ in range(5)]
    try:
        for sock in holders:
            sock.sendall(b"GET /anything/held HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n")
        answers = [read_until_closed(sock) for sock in holders]   # the gateway half-closes: EOF
        with requests.Session() as session:
            session.trust_env = False
            statuses = [session.get(impatient_gateway.url + "/anything/public", timeout=OPEN_ROUTE_TIMEOUT).status_code
                        for _ in range(3)]
    finally:
        for sock in holders:
            sock.close()
    assert [status_of(answer) for answer in answers] == [200] * 5
    assert statuses == [200] * 3


def test_a_body_that_stops_arriving_is_answered_408_by_the_loop_and_closed(impatient_gateway):
    """The body is read in the loop: a stalled one is answered 408 there, and never reaches the one thread."""
    with socket.create_connection(("127.0.0.1", impatient_gateway.port), timeout=30) as sock:
        sock.sendall(b"POST /anything/stalled HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 10\r\n\r\nabc")
        answer = read_answer(sock)
        assert read_until_closed(sock) == b"", "closed after the answer: where a next request starts is unknown"
    assert status_of(answer) == 408
    assert b'"body_too_slow"' in answer
    assert b"Connection: close" in answer
    with requests.Session() as session:
        session.trust_env = False
        assert session.get(impatient_gateway.url + "/anything/public", timeout=OPEN_ROUTE_TIMEOUT).status_code == 200


class TricklingBody:
    """The red team's F2 client: a whole head declaring ``Content-Length: 100000``, then one body byte a second."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.head_sent = threading.Event()
        self.bytes_sent = 0

    def run(self) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock:
            sock.sendall(b"POST /anything/upload HTTP/1.1\r\nHost: rec.local\r\nContent-Length: 100000\r\n\r\n")
            self.head_sent.set()
            try:
                while self.bytes_sent < 100:
                    sock.sendall(b"x")
                    self.bytes_sent += 1
                    readable, _, _ = select.select([sock], [], [], 1.0)
                    if readable:
                        break                   # answered: stop trickling
            except OSError:
                pass
            return read_until_closed(sock)


def test_more_clients_trickling_bodies_than_threads_are_cut_with_408_and_the_open_route_answers(gateway):
    """F2: 16 connections (the gateway has 2 x 4 threads) each trickle a 100,000-byte body at 1 byte/s.

    Each is cut with 408 and closed once it is below the minimum data rate after the 5 s grace,
    so the open route answers while they are still trickling; before, they held every thread.
    """
    clients = [TricklingBody(gateway.port) for _ in range(16)]
    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        futures = [pool.submit(client.run) for client in clients]
        for client in clients:
            client.head_sent.wait(10)
        with requests.Session() as session:
            session.trust_env = False
            # Waits longer than the grace period: the threads the bodies hold are given back by then.
            statuses = [session.get(gateway.url + "/anything/public", timeout=20).status_code for _ in range(3)]
        answers = [future.result(timeout=60) for future in futures]
    assert statuses == [200] * 3
    assert [status_of(answer) for answer in answers] == [408] * 16
    assert all(b"Connection: close" in answer and b'"body_too_slow"' in answer for answer in answers)
    assert max(client.bytes_sent for client in clients) < 100, "cut long before the body was sent"


def test_a_chunk_size_above_the_body_limit_is_refused_413_at_once(impatient_gateway):
    """F2: ``ffffffffffffffffff`` declares more than the 10 MiB limit: 413 before any chunk data, not 400 later."""
    with socket.create_connection(("127.0.0.1", impatient_gateway.port), timeout=30) as sock:
        sock.sendall(b"POST /anything/upload HTTP/1.1\r\nHost: rec.local\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"ffffffffffffffffff\r\n")
        answer = read_answer(sock)
        assert read_until_closed(sock) == b""
    assert status_of(answer) == 413
    assert b"Connection: close" in answer


def test_a_content_length_above_the_body_limit_is_refused_413_unread_and_closed(impatient_gateway):
    """F2: refused before the body is read, and closed: gunicorn would otherwise drain 20 MB on a thread."""
    with socket.create_connection(("127.0.0.1", impatient_gateway.port), timeout=30) as sock:
        sock.sendall(b"POST /anything/upload HTTP/1.1\r\nHost: rec.local\r\nContent-Length: 20000000\r\n\r\nabc")
        answer = read_answer(sock)
    assert status_of(answer) == 413
    assert b"Connection: close" in answer


def read_answer(sock: socket.socket) -> bytes:
    """One answer with a Content-Length body, from a connection that stays open."""
    def more() -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("the gateway closed the connection before the whole answer")
        return chunk

    data = b""
    while b"\r\n\r\n" not in data:
        data += more()
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += more()
    return head + b"\r\n\r\n" + body


# --- The same bytes, the same request: plain gthread against the head-reading worker ---------

def echo_app(environ: dict, start_response: t.Callable) -> list[bytes]:
    """What a WSGI app sees of a request, as JSON: the request line, every header in order, the body."""
    seen = {
        "request_line": [environ["REQUEST_METHOD"], environ["RAW_URI"], environ["SERVER_PROTOCOL"]],
        "path": [environ["PATH_INFO"], environ["QUERY_STRING"]],
        "headers": [[key, value] for key, value in environ.items()
                    if key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")],
        "body": environ["wsgi.input"].read().decode("latin-1"),
    }
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


LIMITS = ["--limit-request-line", "200", "--limit-request-fields", "10", "--limit-request-field_size", "300"]


def echo_server(tmp_dir, name: str, worker_class: str) -> ServerProcess:
    port = free_port()
    argv = [GUNICORN, "-k", worker_class, "-w", "1", "--threads", "2", *LIMITS, "--no-control-socket",
            "--graceful-timeout", "1", "-b", f"127.0.0.1:{port}", "tests.e2e.test_slow_clients:echo_app"]
    return ServerProcess(name, argv, port, tmp_dir, ready_url=f"http://127.0.0.1:{port}/ready")


@pytest.fixture(scope="module")
def echo_servers(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[tuple[ServerProcess, ServerProcess]]:
    tmp = tmp_path_factory.mktemp("echo")
    with echo_server(tmp, "echo-gthread", "gthread") as plain, \
            echo_server(tmp, "echo-head-reading", "gateway_app.worker.HeadReadingWorker") as head_reading:
        yield plain, head_reading


def exchange(port: int, packets: list[bytes], pause: float = 0.0) -> bytes:
    """Send ``packets`` (``pause`` seconds apart) on one connection; everything read until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for packet in packets:
            sock.sendall(packet)
            if pause:
                time.sleep(pause)
        return read_until_closed(sock)


def without_date(answer: bytes) -> bytes:
    return b"\r\n".join(line for line in answer.split(b"\r\n") if not line.lower().startswith(b"date:"))


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


GET = b"GET /p/a%2Fb?q=1&r=%25 HTTP/1.1\r\nHost: x\r\nX-One: 1\r\nx-two:  2 \r\nConnection: close\r\n\r\n"
PIPELINED = (b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
             b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
             b"POST /third HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
             b"GET /fourth?x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")

BIG_BODY = bytes(range(256)) * 800           # 204,800 bytes: spilled to a temporary file by the loop
CHUNKED_WITH_TRAILER = (b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
                        b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
SIZED = b"POST /sized HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world"
EXPECTING = (b"POST /expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n"
             b"Connection: close\r\n\r\n")

CASES = {
    "one packet": ([GET], 0.0),
    "a head in one-byte packets": (split_every(GET, 1), 0.002),
    "four pipelined requests in one packet": ([PIPELINED], 0.0),
    "pipelined requests in 7-byte packets": (split_every(PIPELINED, 7), 0.002),
    "the next request's head arriving after a pause": ([PIPELINED[:40], PIPELINED[40:]], 0.2),
    "an empty line before the request line": ([b"\r\n" + GET], 0.0),
    "a sized body in one-byte packets": (split_every(SIZED, 1), 0.002),
    "a chunked body with extensions and trailers in 5-byte packets, then a request":
        (split_every(CHUNKED_WITH_TRAILER, 5), 0.002),
    "a 200 KB body (spilled to a file) in 64 KB packets": (
        split_every(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                    % len(BIG_BODY) + BIG_BODY, 65536), 0.01),
    "Expect: 100-continue with the body in the same packet": ([EXPECTING + b"hello"], 0.0),
    "Expect: 100-continue, the body after a pause": ([EXPECTING, b"hello"], 0.3),
}
REFUSED = {
    "a bare LF": [b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n"],
    "a request line over the limit": [b"GET /" + b"a" * 300],
    "obs-fold": [b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n"],
    "more header fields than the limit": [b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % n for n in range(12)) + b"\r\n"],
    "an invalid HTTP version": [b"GET / HTTP/9.9\r\nHost: x\r\n\r\n"],
    "an invalid method": [b"G<T / HTTP/1.1\r\nHost: x\r\n\r\n"],
    "Expect: 200-ok": [b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n"],
    "an invalid chunk size": [b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_the_app_sees_byte_for_byte_what_a_plain_gthread_worker_gives(echo_servers, case):
    packets, pause = CASES[case]
    plain, head_reading = echo_servers
    expected = without_date(exchange(plain.port, packets, pause))
    assert expected.startswith(b"HTTP/1.1 ")
    assert without_date(exchange(head_reading.port, packets, pause)) == expected


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_a_request_gunicorn_refuses_gets_its_status_as_the_gateways_json_error(echo_servers, case):
    """Class 4: gunicorn's HTML answers become the gateway's JSON error, same status, input never reflected."""
    plain, head_reading = echo_servers
    packets = REFUSED[case]
    expected = exchange(plain.port, packets)
    answer = exchange(head_reading.port, packets)
    assert status_of(answer) == status_of(expected)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\nContent-Type: application/json\r\n" in head and b"\r\nConnection: close\r\n" in head
    error = json.loads(body)
    assert set(error) == {"error", "message", "request_id"} and error["request_id"] is None
    for sent in (b"HTTP/9.9", b"G<T", b"200-ok", b"zz", b"aaaa"):
        if sent in packets[0]:
            assert sent not in body


def test_a_head_larger_than_gunicorns_limits_is_answered_431_at_once(echo_servers):
    _, head_reading = echo_servers
    head = b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"v" * 290 + b"\r\n"
    answer = exchange(head_reading.port, [head * 12])
    assert status_of(answer) == 431


# --- Request buffering and the overload rule: each red-team class with an open route probed ---

def probe_during(url: str, attack: t.Callable[[threading.Event], None], seconds: float,
                 attackers: int) -> tuple[OpenRouteProbe, list]:
    """Run ``attackers`` copies of ``attack(stop)`` for ``seconds`` while probing ``url`` (after a 1 s head start)."""
    stop = threading.Event()
    probe = OpenRouteProbe(url)
    with concurrent.futures.ThreadPoolExecutor(attackers) as pool:
        futures = [pool.submit(attack, stop) for _ in range(attackers)]
        time.sleep(1.0)
        deadline = time.monotonic() + seconds
        probe.run_until(lambda: time.monotonic() > deadline)
        stop.set()
        results = [future.result(timeout=60) for future in futures]
    return probe, results


def assert_open_route_answered(probe: OpenRouteProbe) -> None:
    """Most probes answered 200 within OPEN_ROUTE_TIMEOUT each (one slow one on a shared machine is no stall)."""
    answered = len(probe.statuses) - len(probe.failures)
    assert len(probe.statuses) >= 5 and answered >= 0.8 * len(probe.statuses), probe.statuses


def reconnecting(port: int, stop: threading.Event, attack: t.Callable[[socket.socket], None]) -> list[bytes]:
    """``attack(sock)`` on one connection after another until ``stop``; the answers (send errors ignored)."""
    answers = []
    while not stop.is_set():
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            try:
                attack(sock)
            except OSError:
                pass
            answers.append(read_until_closed(sock))
    return answers


def heads_without_bodies(port: int, stop: threading.Event) -> list[bytes]:
    """Red team F1: ``Content-Length: 10`` and no body, reconnecting after each answer."""
    return reconnecting(port, stop, lambda sock: sock.sendall(
        b"POST /anything/open HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 10\r\n\r\n"))


def test_heads_whose_bodies_never_come_leave_an_open_route_answering_and_get_408(gateway):
    """F1: 16 loops (2 x 4 threads) of a whole head and no body: the body is awaited in the loop, not on a thread."""
    probe, results = probe_during(gateway.url + "/anything/public",
                                  lambda stop: heads_without_bodies(gateway.port, stop), seconds=6.0, attackers=16)
    assert_open_route_answered(probe)
    answers = [answer for answers in results for answer in answers]
    assert answers and {status_of(answer) for answer in answers} == {408}
    assert all(b'"body_too_slow"' in answer and b"Connection: close" in answer for answer in answers)


def burst_then_trickle(port: int, stop: threading.Event) -> tuple[bytes, int]:
    """Red team F2: 1 MB at once, then a byte a second (the average from the first read stays above 240 B/s);
    12 declare 18 MB in all, within one worker's buffered-body budget."""
    trickled = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /anything/upload HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 1500000\r\n\r\n"
                     + b"x" * 1_000_000)
        try:
            while trickled < 60 and not select.select([sock], [], [], 1.0)[0]:
                sock.sendall(b"x")
                trickled += 1
        except OSError:
            pass
        return read_until_closed(sock), trickled


def test_a_burst_then_a_trickle_is_cut_408_one_window_after_the_burst_and_the_open_route_answers(gateway):
    """F2: 12 clients (8 stalled a 2 x 4 gateway before) burst 1 MB then trickle; each window needs 1200 bytes."""
    probe, results = probe_during(gateway.url + "/anything/public",
                                  lambda stop: burst_then_trickle(gateway.port, stop), seconds=5.0, attackers=12)
    assert_open_route_answered(probe)
    assert [status_of(answer) for answer, _ in results] == [408] * 12
    assert all(b'"body_too_slow"' in answer for answer, _ in results)
    assert max(trickled for _, trickled in results) < 20, "cut about one 5 s window after the burst"


def hold_connections(port: int, stop: threading.Event, start: t.Callable[[socket.socket], None],
                     connections: int, source: str | None = None) -> list[bytes]:
    """``connections`` sockets (from the loopback address ``source``) each begun by ``start(sock)`` and then
    held, re-opened as the gateway closes them."""
    answers: list[bytes] = []
    selector = selectors.DefaultSelector()

    def open_one() -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5,
                                            source_address=(source, 0) if source else None)
        except OSError:
            return
        try:
            start(sock)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        except (OSError, StopIteration):
            sock.close()                    # closed by the gateway before it was held

    for _ in range(connections):
        open_one()
    while not stop.is_set():
        for key, _ in selector.select(0.1):
            selector.unregister(key.fileobj)
            try:
                key.fileobj.setblocking(True)
                answers.append(read_until_closed(key.fileobj))
            finally:
                key.fileobj.close()
            open_one()
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    selector.close()
    return answers


def hold_unfinished_heads(port: int, stop: threading.Event, connections: int = 150,
                          source: str | None = None) -> list[bytes]:
    """Red team F3: ``connections`` sockets each holding a head that never ends, re-opened as they close."""
    return hold_connections(port, stop, lambda sock: sock.sendall(b"GET /anything/hold HTTP/1.1\r\nHost: gateway.test\r\n"),
                            connections, source)


def one_worker_gateway(httpbin: ServerProcess, tmp_path_factory: pytest.TempPathFactory, name: str,
                       env: dict[str, str]) -> t.ContextManager[ServerProcess]:
    """The gateway with one worker of 4 threads and ``env`` (info logging)."""
    tmp = tmp_path_factory.mktemp(name)
    conf = render_config(CONFIG, tmp / "conf", UPSTREAM_PORT=httpbin.port, IDP_PORT=free_port())
    (tmp / "rego").mkdir()
    return gateway_server(tmp, conf, tmp / "rego", workers=1, threads=4, env={"GATEWAY_LOG_LEVEL": "info", **env},
                          name=name)


@pytest.fixture(scope="module")
def small_gateway(httpbin: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[ServerProcess]:
    """One worker, 4 threads, 100 worker_connections, the default 10 s head deadline."""
    with one_worker_gateway(httpbin, tmp_path_factory, "small",
                            {"GUNICORN_CMD_ARGS": "--worker-connections 100"}) as server:
        yield server


def test_more_unfinished_heads_than_worker_connections_are_shed_408_and_the_open_route_answers(small_gateway):
    """F3: 300 connections hold unfinished heads against 100 worker_connections; above 75 a connection
    that never completed a request has 1 s, so the open route's connections are accepted and answered."""
    probe, results = probe_during(small_gateway.url + "/anything/public",
                                  lambda stop: hold_unfinished_heads(small_gateway.port, stop),
                                  seconds=5.0, attackers=2)
    assert_open_route_answered(probe)
    answers = [answer for answers in results for answer in answers]
    assert len(answers) > 300, "the held heads were closed well before the 10 s head deadline"
    assert {status_of(answer) for answer in answers} <= {408, None}
    assert any(b'"head_too_slow"' in answer for answer in answers)


def paced_upload(port: int, size: int, rate: int, source: str, path: str = "/anything/upload",
                 fields: str = "") -> bytes:
    """A ``size``-byte POST from the loopback address ``source``, its body sent at ``rate`` bytes/s in
    tenths of a second; the answer (empty when the connection was cut). ``fields``: more header
    lines, each ending in CRLF."""
    piece = rate // 10
    with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0)) as sock:
        try:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: {size}\r\n"
                         f"{fields}Connection: close\r\n\r\n".encode())
            for sent in range(0, size, piece):
                sock.sendall(b"u" * min(piece, size - sent))
                time.sleep(0.1)
        except OSError:
            pass
        return read_until_closed(sock)


def test_uploads_of_other_clients_and_fast_ones_complete_while_one_address_floods_the_worker(small_gateway):
    """Red team 4 F2: one address holds 300 unfinished heads against 100 worker_connections, re-opened
    as they are shed. Two 3 s uploads complete: a slow but legal one (800 B/s, below the spared rate) from another address,
    whose peer holds no more than its share, and a fast one (100 kB/s) from the flooding address,
    spared by its rate. Before, every upload longer than 1 s was cut with a reset."""
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        floods = [pool.submit(hold_unfinished_heads, small_gateway.port, stop, 150, "127.0.0.2") for _ in range(2)]
        time.sleep(1.5)
        slow = pool.submit(paced_upload, small_gateway.port, 2_400, 800, "127.0.0.1")
        fast = pool.submit(paced_upload, small_gateway.port, 300_000, 100_000, "127.0.0.2")
        uploads = [slow.result(timeout=30), fast.result(timeout=30)]
        stop.set()
        shed = [answer for flood in floods for answer in flood.result(timeout=60)]
    assert [status_of(answer) for answer in uploads] == [200, 200], uploads
    assert b'"uuuu' in uploads[0] and len(shed) > 100
    assert {status_of(answer) for answer in shed} <= {408, None}


def hold_unfinished_heads_spread(port: int, stop: threading.Event, addresses: range) -> list[bytes]:
    """Unfinished heads from many loopback addresses, a few connections each, re-opened as they close."""
    with concurrent.futures.ThreadPoolExecutor(len(addresses)) as pool:
        floods = [pool.submit(hold_unfinished_heads, port, stop, 2, f"127.1.0.{n}") for n in addresses]
        return [answer for flood in floods for answer in flood.result(timeout=60)]


def test_uploads_complete_while_a_flood_spread_over_many_addresses_holds_the_worker(small_gateway):
    """Red team 5: 1,700 addresses of one connection each made the client holding three the "heaviest"
    and shed its uploads first; red team 6: 200 addresses of 8 heads each cut every upload under
    8 KiB/s. 100 addresses of 2 heads each (200 against 100 worker_connections): no address is
    heavy, and a 100 kB/s upload and a 3 kB/s one from a client that also holds two idle
    connections complete."""
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(2) as pool, \
            socket.create_connection(("127.0.0.1", small_gateway.port), timeout=10), \
            socket.create_connection(("127.0.0.1", small_gateway.port), timeout=10):
        flood = pool.submit(hold_unfinished_heads_spread, small_gateway.port, stop, range(1, 101))
        time.sleep(1.5)
        upload = pool.submit(paced_upload, small_gateway.port, 300_000, 100_000, "127.0.0.1")
        slow_upload = paced_upload(small_gateway.port, 9_000, 3_000, "127.0.0.1")
        answer = upload.result(timeout=30)
        stop.set()
        shed = flood.result(timeout=90)
    assert [status_of(answer), status_of(slow_upload)] == [200, 200], (answer, slow_upload)
    assert len(shed) > 100 and {status_of(answer) for answer in shed} <= {408, None}


def whole_request(port: int, path: str, source: str) -> tuple[float, bytes]:
    """One whole ``GET path`` from the loopback address ``source``: (when its answer ended, the answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(source, 0)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n".encode())
        answer = read_until_closed(sock)
    return time.monotonic(), answer


def test_a_flood_of_whole_requests_from_one_address_does_not_queue_another_clients_request(small_gateway):
    """Red team 7 stall7w: gthread's executor serves the pool first come, first served, so one
    address's whole requests put every other client's request behind all of them. 32 requests
    that each hold a thread 0.5 s at the upstream, from one address, on one worker of 4 threads
    (over 5 s of queue, within the queue timeout); a request from another address, sent once
    they are all queued, is answered before all but the first few: the queue is served in
    turns between addresses."""
    flood_size = 32
    with concurrent.futures.ThreadPoolExecutor(flood_size + 1) as pool:
        flood = [pool.submit(whole_request, small_gateway.port, "/delay/0.5", "127.0.0.2") for _ in range(flood_size)]
        time.sleep(0.5)                 # every flood request is whole and queued
        other = pool.submit(whole_request, small_gateway.port, "/anything/fair", "127.0.0.3")
        answered_at, answer = other.result(timeout=60)
        flooded = [future.result(timeout=60) for future in flood]
    assert status_of(answer) == 200
    assert {status_of(flood_answer) for _, flood_answer in flooded} == {200}
    served_before = sum(1 for done_at, _ in flooded if done_at < answered_at)
    assert served_before <= 8, f"{served_before} of the flood's {flood_size} requests were served first"


def test_one_address_may_hold_every_thread_of_a_worker_and_another_address_is_answered_meanwhile(small_gateway):
    """Red team 9 F2: with every thread free, kept-alive requests to a slow upstream from one address
    took all of them (8 of the demo's 8, for 10 s), and nobody else was answered. One worker of
    4 threads: 4 requests that hold a thread 2 s from one address run at once (a single client
    still gets every thread), and another address's request takes the reserve thread and is
    answered before any of them."""
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        flood = [pool.submit(whole_request, small_gateway.port, "/delay/2", "127.0.0.2") for _ in range(4)]
        time.sleep(0.5)                 # every flood request is whole, and holds a thread
        answered_at, answer = pool.submit(whole_request, small_gateway.port, "/anything/lane", "127.0.0.3").result(60)
        flooded = [future.result(timeout=60) for future in flood]
    assert status_of(answer) == 200 and {status_of(flood_answer) for _, flood_answer in flooded} == {200}
    assert answered_at < min(done_at for done_at, _ in flooded)
    finished = sorted(done_at for done_at, _ in flooded)
    assert finished[-1] - finished[0] < 1.0, "the fourth waited for a thread: one address was capped"


def test_whole_requests_from_one_address_holding_every_connection_are_shed_503_and_others_are_served(
        httpbin, tmp_path_factory):
    """One address keeps 150 whole requests that each hold a thread 1 s at the upstream against 100
    worker_connections: they wait for a thread, not in the loop, so closing requests being read
    frees nothing, and the overload rule closed the only connections it could: other clients'
    new ones. At the limit the newest requests of the address with most waiting are answered
    503 first, and another address's requests are accepted and served (each within about the
    1 s a thread is held)."""
    with one_worker_gateway(httpbin, tmp_path_factory, "queued", {"GUNICORN_CMD_ARGS": "--worker-connections 100"}) \
            as gateway:
        def slow_request(sock: socket.socket) -> None:
            sock.sendall(b"GET /delay/1 HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n")

        probe, results = probe_during(gateway.url + "/anything/public",
                                      lambda stop: hold_connections(gateway.port, stop, slow_request, 75, "127.0.0.2"),
                                      seconds=8.0, attackers=2)
    assert_open_route_answered(probe)
    answers = [answer for answers in results for answer in answers]
    assert any(b'"server_busy"' in answer and status_of(answer) == 503 for answer in answers), len(answers)
    assert {status_of(answer) for answer in answers} <= {200, 503, None}


def test_expect_100_continue_is_answered_before_the_body_and_once(impatient_gateway):
    """The loop waits for the body, so it says ``100 Continue`` itself; gunicorn then sends none."""
    with socket.create_connection(("127.0.0.1", impatient_gateway.port), timeout=10) as sock:
        sock.sendall(b"POST /anything/expect HTTP/1.1\r\nHost: gateway.test\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 5\r\nConnection: close\r\n\r\n")
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        sock.sendall(b"hello")
        rest = read_until_closed(sock)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert status_of(rest) == 200 and b"100 Continue" not in rest


@pytest.mark.parametrize("expect", [b"", b"Expect: 100-continue\r\n"], ids=["plain", "expect 100-continue"])
def test_an_upload_without_a_token_to_a_protected_route_is_refused_on_its_head_before_its_body(impatient_gateway,
                                                                                               expect):
    """Red team 4 F1/F3, 5 F1, 6 F1: bodies were read and held before auth, and 100 Continue invited them.
    The route and credential are decided on the head (as nginx's auth_request): 403 at once, no
    100 Continue, nothing of the 1 MB body awaited."""
    with socket.create_connection(("127.0.0.1", impatient_gateway.port), timeout=10) as sock:
        sock.sendall(b"POST /secure/upload HTTP/1.1\r\nHost: gateway.test\r\n" + expect +
                     b"Content-Length: 1000000\r\n\r\n" + b"x" * 1000)
        started = time.monotonic()
        answer = read_until_closed(sock)
    assert status_of(answer) == 403 and b"token_missing" in answer and b"Connection: close" in answer
    assert b"100 Continue" not in answer
    assert time.monotonic() - started < 1.5, "answered on the head, not after a body deadline"


def test_a_kept_alive_connections_next_upload_without_a_token_is_refused_on_its_head(impatient_gateway):
    with socket.create_connection(("127.0.0.1", impatient_gateway.port), timeout=10) as sock:
        sock.sendall(b"GET /anything/first HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        assert status_of(read_answer(sock)) == 200
        sock.sendall(b"POST /secure/upload HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 100000\r\n\r\n"
                     + b"x" * 100)
        answer = read_until_closed(sock)
    assert status_of(answer) == 403


def test_an_upload_that_passes_on_its_head_is_read_whole_and_recorded_once(impatient_gateway):
    """The decision on the head is not the request: an open route's upload goes on, is forwarded
    with its whole body, and has one access record."""
    log_before = len(impatient_gateway.log_text())
    with socket.create_connection(("127.0.0.1", impatient_gateway.port), timeout=10) as sock:
        sock.sendall(b"POST /anything/passed HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 6\r\n"
                     b"Connection: close\r\n\r\nabc")
        time.sleep(0.3)
        sock.sendall(b"def")
        answer = read_until_closed(sock)
    assert status_of(answer) == 200 and b'"data": "abcdef"' in answer
    time.sleep(0.2)
    assert impatient_gateway.log_text()[log_before:].count("path=/anything/passed") == 1


def test_an_upload_that_passes_on_its_head_and_stalls_is_answered_408_and_recorded_once(impatient_gateway):
    """Red team 11: the loop's 408 after a passed head had no access record (the application records a
    request when it serves it, and this one it never serves)."""
    log_before = len(impatient_gateway.log_text())
    with socket.create_connection(("127.0.0.1", impatient_gateway.port), timeout=10) as sock:
        sock.sendall(b"POST /anything/stalled HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 6\r\n\r\nabc")
        answer = read_until_closed(sock)
    assert status_of(answer) == 408 and b'"body_too_slow"' in answer
    time.sleep(0.2)
    records = [line for line in impatient_gateway.log_text()[log_before:].splitlines() if "path=/anything/stalled" in line]
    assert len(records) == 1 and "status=408" in records[0] and "reason=body_too_slow" in records[0], records


def test_an_expect_head_beyond_its_addresses_decision_slots_waits_for_a_decision_not_for_its_body(
        httpbin, tmp_path_factory):
    """Red team 11: while an address had as many heads being decided as its slots (half the threads),
    its next ``Expect: 100-continue`` head got ``100 Continue`` at once, then 403 after its body. It
    now waits for a slot and is refused on its head: no client that will be refused is invited to
    send its body (RFC 9110 §10.1.1)."""
    def head(n: int, expect: bool = False) -> bytes:
        return (f"POST /secure/upload HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer bogus-{n}\r\n"
                f"Content-Length: 5\r\n{'Expect: 100-continue' + chr(13) + chr(10) if expect else ''}\r\n").encode()

    tmp = tmp_path_factory.mktemp("awaiting")
    with HeldIdp() as idp:
        conf = render_config(CONFIG, tmp / "conf", UPSTREAM_PORT=httpbin.port, IDP_PORT=idp.port)
        (tmp / "rego").mkdir()
        with gateway_server(tmp, conf, tmp / "rego", workers=1, threads=4, env={"GATEWAY_LOG_LEVEL": "info"},
                            name="awaiting") as gateway:
            held = [socket.create_connection(("127.0.0.1", gateway.port), timeout=10) for _ in range(2)]
            try:
                for n, sock in enumerate(held):
                    sock.sendall(head(n))
                for _ in held:
                    assert idp.entered.acquire(timeout=10)       # both of the address's slots are deciding
                with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as expecting:
                    expecting.sendall(head(2, expect=True))
                    early = select.select([expecting], [], [], 1.0)[0]
                    idp.release.set()
                    answer = read_until_closed(expecting)
                held_answers = [read_until_closed(sock) for sock in held]
            finally:
                idp.release.set()
                for sock in held:
                    sock.close()
    assert not early, "the gateway answered before a slot was free"
    assert status_of(answer) == 403 and b"token_inactive" in answer and b"100 Continue" not in answer, answer[:200]
    assert [status_of(held_answer) for held_answer in held_answers] == [403, 403]


def test_expect_100_continue_with_a_length_above_the_limit_is_refused_413_without_continue(impatient_gateway):
    with socket.create_connection(("127.0.0.1", impatient_gateway.port), timeout=10) as sock:
        sock.sendall(b"POST /anything/expect HTTP/1.1\r\nHost: gateway.test\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 20000000\r\n\r\n")
        answer = read_until_closed(sock)
    assert status_of(answer) == 413 and b"100 Continue" not in answer


def test_a_kept_alive_connection_stalling_its_next_body_holds_no_thread_and_gets_408(impatient_gateway):
    """The body of a kept-alive connection's next request goes back to the loop too (one thread here)."""
    with socket.create_connection(("127.0.0.1", impatient_gateway.port), timeout=30) as sock:
        sock.sendall(b"GET /anything/first HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        assert status_of(read_answer(sock)) == 200
        sock.sendall(b"POST /anything/second HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 10\r\n\r\nabc")
        with requests.Session() as session:
            session.trust_env = False
            statuses = [session.get(impatient_gateway.url + "/anything/public", timeout=OPEN_ROUTE_TIMEOUT).status_code
                        for _ in range(3)]
        answer = read_until_closed(sock)
    assert statuses == [200] * 3
    assert status_of(answer) == 408 and b'"body_too_slow"' in answer


# --- Red team 3: what the loop cannot frame, overload after a first request, budgets, fragmentation ---

def bare_lf_chunked_trickle(port: int, stop: threading.Event) -> list[bytes]:
    """Red team 3 F1: a chunked body whose size line ends in a bare LF, then a byte now and then."""
    def attack(sock: socket.socket) -> None:
        sock.sendall(b"POST /anything/open HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\r\n5\n")
        while not select.select([sock], [], [], 1.0)[0] and not stop.is_set():
            sock.sendall(b"h")

    return reconnecting(port, stop, attack)


def test_bare_lf_chunk_framing_is_refused_400_by_the_loop_and_the_open_route_answers(gateway):
    """16 clients (2 x 4 threads; 0/6 probes answered before) send framing gunicorn's reader would
    wait on: each is answered 400 by the loop at once, before a byte more."""
    probe, results = probe_during(gateway.url + "/anything/public",
                                  lambda stop: bare_lf_chunked_trickle(gateway.port, stop), seconds=5.0, attackers=16)
    assert_open_route_answered(probe)
    answers = [answer for answers in results for answer in answers]
    assert len(answers) > 16, "each answered at once, not after a timeout"
    assert {status_of(answer) for answer in answers} == {400}
    assert all(b'"invalid_chunked_body"' in answer and b"Connection: close" in answer for answer in answers)


def hold_second_requests(port: int, stop: threading.Event, connections: int = 70) -> list[bytes]:
    """Red team 3 F2: each connection completes a GET, then sends a 100 kB body's first bytes and holds
    it (re-opened as the gateway closes it)."""
    def start(sock: socket.socket) -> None:
        sock.sendall(b"GET /anything/first HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        read_answer(sock)
        sock.sendall(b"POST /anything/second HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 100000\r\n\r\n"
                     + b"x" * 1200)

    return hold_connections(port, stop, start, connections)


def test_second_requests_held_at_the_minimum_rate_are_shed_under_overload_and_the_open_route_answers(small_gateway):
    """F2 of red team 3: 140 connections (100 worker_connections) that each completed a request hold a
    second one; above 75 every connection outside a thread has 1 s, whether or not it was served before."""
    probe, results = probe_during(small_gateway.url + "/anything/public",
                                  lambda stop: hold_second_requests(small_gateway.port, stop),
                                  seconds=5.0, attackers=2)
    assert_open_route_answered(probe)
    answers = [answer for answers in results for answer in answers]
    assert answers and {status_of(answer) for answer in answers} <= {408, None}
    assert any(b'"body_too_slow"' in answer for answer in answers)


@pytest.fixture(scope="module")
def budget_gateway(httpbin: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[ServerProcess]:
    """One worker, 4 threads, 2 MB of buffered body bytes."""
    with one_worker_gateway(httpbin, tmp_path_factory, "budget", {"GATEWAY_BUFFERED_BODY_BYTES": "2000000"}) as server:
        yield server


def hold_uploads(port: int, stop: threading.Event, source: str | None = None) -> list[bytes]:
    """Red team 3 F3: uploads of 900 kB that send 400 kB and hold, re-opened as they are answered
    (a body holds the bytes it sent: red team 4)."""
    def start(sock: socket.socket) -> None:
        sock.sendall(b"POST /anything/upload HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 900000\r\n\r\n"
                     + b"x" * 400_000)

    return hold_connections(port, stop, start, connections=10, source=source)


def test_uploads_beyond_the_buffered_body_budget_are_refused_503_at_once_and_the_open_route_answers(budget_gateway):
    """20 held uploads from one address that each sent 400 kB against a 2 MB budget: two fit (one address
    holds at most half), the others are answered 503 with Retry-After as their bytes arrive."""
    probe, results = probe_during(budget_gateway.url + "/anything/public",
                                  lambda stop: hold_uploads(budget_gateway.port, stop), seconds=4.0, attackers=2)
    assert_open_route_answered(probe)
    answers = [answer for answers in results for answer in answers]
    assert len(answers) > 18, "refused at once, not after a timeout"
    busy = [answer for answer in answers if status_of(answer) == 503]
    assert busy and all(b'"server_busy"' in answer and b"Retry-After: 5" in answer for answer in busy)
    assert {status_of(answer) for answer in answers} <= {503, 408}


def test_an_upload_from_another_address_fits_while_one_address_holds_all_it_can_of_the_budget(budget_gateway):
    """Red team 5 F1: one address's held uploads had taken 43 of 48 MB and every other upload got 503.
    20 held uploads of 400 kB from 127.0.0.2 hold at most half of the 2 MB budget; a 400 kB upload
    from 127.0.0.1 is granted its share and answered 200."""
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        floods = [pool.submit(hold_uploads, budget_gateway.port, stop, "127.0.0.2") for _ in range(2)]
        time.sleep(1.5)
        answers = [paced_upload(budget_gateway.port, 400_000, 4_000_000, "127.0.0.1") for _ in range(3)]
        stop.set()
        held = [answer for flood in floods for answer in flood.result(timeout=60)]
    assert [status_of(answer) for answer in answers] == [200, 200, 200], answers
    assert any(b'"server_busy"' in answer for answer in held)


def stream_one_byte_chunks(port: int, stop: threading.Event) -> list[bytes]:
    """Red team 3 F4: a chunked body of 1-byte chunks streamed as fast as the gateway takes it, reconnecting."""
    chunks = b"1\r\na\r\n" * 10_000

    def attack(sock: socket.socket) -> None:
        sock.sendall(b"POST /anything/tiny HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        while not stop.is_set() and not select.select([sock], [], [], 0)[0]:
            sock.sendall(chunks)

    return reconnecting(port, stop, attack)


def test_bodies_of_one_byte_chunks_are_refused_400_and_the_open_route_answers(gateway):
    """4 clients streaming 1-byte chunks pegged both workers (probes 2.5-5.4 s): each is refused after 1000 chunks."""
    probe, results = probe_during(gateway.url + "/anything/public",
                                  lambda stop: stream_one_byte_chunks(gateway.port, stop), seconds=5.0, attackers=4)
    assert_open_route_answered(probe)
    answers = [answer for answers in results for answer in answers]
    assert answers and {status_of(answer) for answer in answers} <= {400, 408, None}   # 408: stopped at the end
    assert any(b'"chunks_too_small"' in answer for answer in answers)


def send_big_heads(port: int, stop: threading.Event) -> list[bytes]:
    """Red team 3 F5: heads of up to 95 fields of 8 kB (gunicorn's per-line limits allow them), reconnecting."""
    def attack(sock: socket.socket) -> None:
        sock.sendall(b"GET /anything/big HTTP/1.1\r\nHost: gateway.test\r\n")
        for n in range(95):
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(b"X-Big-%d: %s\r\n" % (n, b"v" * 8000))

    return reconnecting(port, stop, attack)


def test_heads_beyond_the_head_cap_are_refused_431_at_once_and_the_open_route_answers(gateway):
    """Each head is refused once it passes 64 KiB (about 8 fields here), not held up to 1.5 MB."""
    probe, results = probe_during(gateway.url + "/anything/public",
                                  lambda stop: send_big_heads(gateway.port, stop), seconds=4.0, attackers=8)
    assert_open_route_answered(probe)
    answers = [answer for answers in results for answer in answers]
    assert answers and {status_of(answer) for answer in answers} <= {431, None}
    assert any(b'"header_fields_too_large"' in answer for answer in answers)


@pytest.mark.parametrize("request_bytes, status, reason", [
    (b"GET /anything/v HTTP/1.2\r\nHost: gateway.test\r\n\r\n", 505, b'"http_version_not_supported"'),
    (b"GET /anything/c HTTP/1.1\r\nHost: gateway.test\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n", 400, b'"cookie_repeated"'),
], ids=["HTTP/1.2", "two Cookie fields"])
def test_heads_the_loop_refuses_get_a_json_answer_and_an_http_1_1_status_line(impatient_gateway, request_bytes,
                                                                               status, reason):
    """Red team 3 F8 (HTTP/1.2 was answered ``HTTP/1.2 200``) and F6 (two Cookie fields, joined with ``,``)."""
    with socket.create_connection(("127.0.0.1", impatient_gateway.port), timeout=10) as sock:
        sock.sendall(request_bytes)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 %d " % status) and reason in answer and b"Connection: close" in answer


def test_an_authenticated_upload_takes_the_buffers_of_anonymous_uploads_that_hold_the_whole_budget(budget_gateway):
    """Red team 7: uploads to an open route from many addresses hold the whole body budget, and every
    upload with a valid token got 503. 8 addresses each hold 10 uploads of 400 kB sent (2 MB budget);
    a 600 kB upload with a valid JWT, decided on its head, is read whole: anonymous bodies being
    read are answered 503 to make room, the heaviest address's first."""
    token = make_jwt(claims(), rsa_key())
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        floods = [pool.submit(hold_uploads, budget_gateway.port, stop, f"127.0.3.{n}") for n in range(1, 9)]
        time.sleep(2.0)
        answer = paced_upload(budget_gateway.port, 600_000, 300_000, "127.0.0.1", path="/signed/upload",
                              fields=f"Authorization: Bearer {token}\r\n")
        stop.set()
        held = [flood_answer for flood in floods for flood_answer in flood.result(timeout=60)]
    assert status_of(answer) == 200 and b'"url": "http://gateway.test/anything/upload"' in answer, answer[:300]
    assert any(b'"server_busy"' in flood_answer for flood_answer in held)


def hold_big_uploads(port: int, stop: threading.Event, addresses: t.Iterable[str], fields: str = "",
                     path: str = "/anything/upload") -> list[bytes]:
    """Red team 9 F1: from each address, 2 uploads that declare 10 MB, send 3 MB at once, then 1,300 bytes
    every 0.5 s, re-opened as they are answered."""
    def upload(source: str) -> list[bytes]:
        answers = []
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as sock:
                    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: gateway.test\r\n{fields}"
                                 "Content-Length: 10000000\r\n\r\n".encode())
                    time.sleep(0.1)
                    sock.sendall(b"x" * 3_000_000)
                    sock.settimeout(0.5)
                    answer = b""
                    while not stop.is_set() and not answer:
                        try:
                            answer = sock.recv(65536) or b"closed"
                        except TimeoutError:
                            sock.sendall(b"y" * 1300)
                    answers.append(answer)
            except OSError:
                answers.append(b"")
        return answers

    sources = [source for source in addresses for _ in range(2)]
    with concurrent.futures.ThreadPoolExecutor(len(sources)) as pool:
        floods = [pool.submit(upload, source) for source in sources]
        return [answer for flood in floods for answer in flood.result(timeout=60)]


def test_making_room_for_authenticated_uploads_never_crashes_the_worker(httpbin, tmp_path_factory):
    """Red team 9 F1: making room for an authenticated upload ended bodies whose readable events the
    same turn of the loop still held, and the loop failed with KeyError: the worker exited and
    dropped every connection (10 times in 25 s). Anonymous uploads from 16 addresses that keep
    sending fill a 24 MiB budget while uploads with a valid token from 4 more take room from
    them; the worker never fails."""
    token = make_jwt(claims(), rsa_key())
    with one_worker_gateway(httpbin, tmp_path_factory, "room", {}) as gateway:
        def attack(stop: threading.Event) -> list[bytes]:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                anonymous = pool.submit(hold_big_uploads, gateway.port, stop, [f"127.0.4.{n}" for n in range(1, 17)])
                time.sleep(1.0)
                signed = pool.submit(hold_big_uploads, gateway.port, stop, [f"127.0.7.{n}" for n in range(1, 5)],
                                     f"Authorization: Bearer {token}\r\n", "/signed/upload")
                return anonymous.result(timeout=60) + signed.result(timeout=60)

        probe, _ = probe_during(gateway.url + "/anything/public", attack, seconds=10.0, attackers=1)
        log = gateway.log_text()
    assert "Exception in worker process" not in log and "Traceback" not in log
    assert "taken by an authenticated upload" in log
    assert_open_route_answered(probe)


def test_one_token_spread_over_many_addresses_holds_one_share_of_the_body_budget(budget_gateway):
    """Red team 9 F4: one valid token's uploads from 16 addresses held 16 per-address shares, and other
    users' authenticated uploads got 503 (0/10). Bodies decided on with a credential count for its
    subject: one token's uploads from 8 addresses, 250 kB held each, hold at most half of the 2 MB
    budget, and another user's 400 kB upload fits beside them."""
    mallory, alice = make_jwt(claims(sub="mallory"), rsa_key()), make_jwt(claims(sub="alice"), rsa_key())

    def start(sock: socket.socket) -> None:
        sock.sendall(f"POST /signed/upload HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {mallory}\r\n"
                     "Content-Length: 900000\r\n\r\n".encode())
        time.sleep(0.2)                                 # decided on its head
        sock.sendall(b"m" * 250_000)

    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        holds = [pool.submit(hold_connections, budget_gateway.port, stop, start, 2, f"127.0.6.{n}") for n in range(1, 9)]
        time.sleep(2.5)
        answers = [paced_upload(budget_gateway.port, 400_000, 1_000_000, "127.0.0.1", path="/signed/upload",
                                fields=f"Authorization: Bearer {alice}\r\n") for _ in range(3)]
        stop.set()
        held = [answer for hold in holds for answer in hold.result(timeout=60)]
    assert [status_of(answer) for answer in answers] == [200, 200, 200], [answer[:200] for answer in answers]
    assert any(b'"server_busy"' in answer for answer in held), "the token's uploads never reached its share"


def send_and_close(port: int, path: str, source: str, reset: bool = False) -> None:
    """One whole request from ``source``, then the connection closed at once (with a reset: RST, not
    FIN): the client keeps nothing."""
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: gateway.test\r\n\r\n".encode())
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_requests_whose_clients_closed_while_they_waited_for_a_thread_are_dropped(httpbin, tmp_path_factory):
    """Red team 10 F1: clients that send a request to a slow route and close at once, keeping no
    socket, queued hundreds of requests that then ran one after another for minutes. 16 such
    requests from 2 addresses on one worker of 4 threads, a quarter of them closed with a
    reset: those that had to wait for a thread are dropped when one takes them (HAProxy's
    abortonclose); those served at once are forwarded."""
    with one_worker_gateway(httpbin, tmp_path_factory, "orphans", {}) as gateway:
        for n in range(16):
            send_and_close(gateway.port, f"/delay/1?n={n}", f"127.0.8.{n % 2 + 1}", reset=n % 4 == 3)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and gateway.log_text().count("closed while its request waited") < 10:
            time.sleep(0.2)
        time.sleep(1.5)                                 # the last ones forwarded have ended
        log = gateway.log_text()
    forwarded = log.count("path=/delay/1")
    assert forwarded <= 6 and log.count("closed while its request waited") >= 10, forwarded


def test_a_request_that_waited_longer_than_the_queue_timeout_is_answered_503(httpbin, tmp_path_factory):
    """GATEWAY_QUEUE_TIMEOUT (HAProxy's timeout queue): 8 requests holding a thread 2 s from one
    address on 4 threads; the 4 that wait more than 1 s for a thread are answered 503
    server_busy when one takes them, not served seconds late."""
    with one_worker_gateway(httpbin, tmp_path_factory, "queue", {"GATEWAY_QUEUE_TIMEOUT": "1"}) as gateway:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda n: whole_request(gateway.port, f"/delay/2?n={n}", "127.0.0.2")[1], range(8)))
    statuses = sorted(status_of(answer) for answer in answers)
    assert statuses == [200] * 4 + [503] * 4, statuses
    assert all(b'"server_busy"' in answer and b"Retry-After: 5" in answer
               for answer in answers if status_of(answer) == 503)
