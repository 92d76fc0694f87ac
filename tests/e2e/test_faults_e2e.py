"""Faults through real gunicorn: the IdP and the upstream misbehave on command (issue 8, item 5).

Both are raw-socket servers started here whose behaviour is switched per test: answer,
hang, send malformed JSON, reset the connection, or reset in the middle of a body. The
gateway runs with small timeouts; every fault must give its documented status within its
timeout, leave the workers alive, and the gateway must recover when the fault ends.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import os
import pathlib
import socket
import struct
import threading
import time
import typing as t

import pytest
import requests

from tests.support.servers import RawSocketServer
from tests.support.servers import ServerProcess
from tests.support.servers import free_port
from tests.support.servers import gateway_server
from tests.support.servers import render_config

CONFIG = """\
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: api, namespace: gloo-system}
spec:
  static: {hosts: [{addr: 127.0.0.1, port: {UPSTREAM_PORT}}]}
  connectionConfig: {connectTimeout: 300ms}
  requestTimeout: 500ms
---
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: dead, namespace: gloo-system}
spec:
  static: {hosts: [{addr: 127.0.0.1, port: {DEAD_PORT}}]}
---
apiVersion: v1
kind: Secret
metadata: {name: idp, namespace: gloo-system}
stringData: {client-secret: fault-secret}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: guard, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        introspection:
          introspectionUrl: http://127.0.0.1:{IDP_PORT}/introspect
          clientId: gw
          clientSecretRef: {name: idp, namespace: gloo-system}
          timeout: 300ms
          retries: 0
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: api, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{prefix: /secure}]
      routeAction: {single: {upstream: {name: api, namespace: gloo-system}}}
      options: {extauth: {configRef: {name: guard, namespace: gloo-system}}}
    - matchers: [{prefix: /dead}]
      routeAction: {single: {upstream: {name: dead, namespace: gloo-system}}}
    - matchers: [{prefix: /}]
      routeAction: {single: {upstream: {name: api, namespace: gloo-system}}}
"""

IDP_TIMEOUT = 0.3
UPSTREAM_TIMEOUT = 0.5
SLACK = 1.5                 # scheduling and connection set-up on a busy CI machine
BODY = b"x" * 200_000
_tokens = itertools.count()


class ScriptedServer(RawSocketServer):
    """A raw-socket HTTP server whose ``mode`` decides what each new connection gets."""

    def __init__(self, answer: t.Callable[[], bytes]) -> None:
        super().__init__()
        self.answer = answer
        self.mode = "ok"

    def __enter__(self) -> ScriptedServer:
        super().__enter__()
        return self

    def handle(self, conn: socket.socket) -> None:
        """The mode is fixed when the connection is accepted; the answer runs in its own thread."""
        threading.Thread(target=self._handle, args=(conn, self.mode), daemon=True).start()

    def _handle(self, conn: socket.socket, mode: str) -> None:
        with conn:
            conn.settimeout(3)
            try:
                _read_head(conn)
                if mode == "hang":
                    self._stop.wait(3)
                elif mode == "reset":
                    _reset(conn)
                elif mode == "malformed":
                    conn.sendall(_response(b'{"active": true, "sub": '))
                elif mode.startswith("reset_after_"):
                    conn.sendall(_response(BODY)[:int(mode.rsplit("_", 1)[1])])
                    _reset(conn)
                else:
                    conn.sendall(self.answer())
            except OSError:
                pass


def _read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _response(body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


def _introspection_answer() -> bytes:
    return _response(json.dumps({"active": True, "sub": "alice", "exp": int(time.time()) + 600}).encode())


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[tuple[ServerProcess, ScriptedServer,
                                                                          ScriptedServer]]:
    tmp = tmp_path_factory.mktemp("faults")
    with ScriptedServer(_introspection_answer) as idp, \
            ScriptedServer(lambda: _response(BODY, b"text/plain")) as upstream:
        conf = render_config(CONFIG, tmp / "conf", IDP_PORT=idp.port, UPSTREAM_PORT=upstream.port,
                             DEAD_PORT=free_port())
        (tmp / "rego").mkdir()
        with gateway_server(tmp, conf, tmp / "rego", workers=1, threads=4) as gateway:
            yield gateway, idp, upstream


@pytest.fixture
def servers(faults):
    gateway, idp, upstream = faults
    yield faults
    idp.mode = upstream.mode = "ok"


def timed_get(gateway: ServerProcess, path: str, token: str | None = None) -> tuple[int, float]:
    headers = {"Authorization": f"Bearer {token or f'tok-{next(_tokens)}-abcdefgh'}"}
    started = time.monotonic()
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(gateway.url + path, headers=headers, timeout=10)
    return response.status_code, time.monotonic() - started


def worker_pids(arbiter: int) -> set[int]:
    pids = set()
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == arbiter:
                pids.add(int(entry.name))
    return pids


@pytest.mark.parametrize("mode", ["hang", "malformed", "reset"], ids=["IdP slower than the timeout",
                                                                       "IdP malformed JSON", "IdP reset"])
def test_idp_faults_answer_503_in_bounded_time_and_recover(servers, mode):
    gateway, idp, upstream = servers
    idp.mode = mode
    status, took = timed_get(gateway, "/secure")
    assert status == 503
    assert took < IDP_TIMEOUT + SLACK
    idp.mode = "ok"
    assert timed_get(gateway, "/secure")[0] == 200


def test_a_flapping_idp_gives_503_only_while_it_fails(servers):
    gateway, idp, upstream = servers
    seen = []
    for mode in ["ok", "reset", "ok", "malformed", "ok", "hang", "ok"]:
        idp.mode = mode
        seen.append(timed_get(gateway, "/secure")[0])
    assert seen == [200, 503, 200, 503, 200, 503, 200]


def test_upstream_hanging_answers_504_in_bounded_time(servers):
    gateway, idp, upstream = servers
    upstream.mode = "hang"
    status, took = timed_get(gateway, "/open")
    assert status == 504
    assert took < UPSTREAM_TIMEOUT + SLACK
    upstream.mode = "ok"
    assert timed_get(gateway, "/open")[0] == 200


def test_upstream_refusing_answers_502_at_once(servers):
    gateway, idp, upstream = servers
    status, took = timed_get(gateway, "/dead")
    assert status == 502
    assert took < SLACK


def test_upstream_reset_before_answering_gives_502(servers):
    gateway, idp, upstream = servers
    upstream.mode = "reset"
    assert timed_get(gateway, "/open")[0] == 502


def test_upstream_reset_in_its_first_body_chunk_gives_502(servers):
    gateway, idp, upstream = servers
    upstream.mode = "reset_after_30000"
    assert timed_get(gateway, "/open")[0] == 502
    upstream.mode = "ok"
    assert timed_get(gateway, "/open")[0] == 200


def test_upstream_reset_later_in_the_body_truncates_the_answer_visibly(servers):
    gateway, idp, upstream = servers
    upstream.mode = "reset_after_150000"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"GET /open HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")             # the status was sent before the reset
    assert 0 < len(body) < len(BODY)                    # the client sees the truncation, not a clean end
    upstream.mode = "ok"
    assert timed_get(gateway, "/open")[0] == 200


def test_hanging_upstreams_do_not_hold_workers_past_their_timeout(servers):
    gateway, idp, upstream = servers
    workers = worker_pids(gateway.process.pid)
    upstream.mode = "hang"
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: timed_get(gateway, "/open"), range(12)))
    assert {status for status, _ in results} == {504}
    assert max(took for _, took in results) < 3 * UPSTREAM_TIMEOUT + 2 * SLACK      # 12 requests on 4 threads
    upstream.mode = "ok"
    status, took = timed_get(gateway, "/open")
    assert status == 200 and took < SLACK
    assert worker_pids(gateway.process.pid) == workers
    assert "WORKER TIMEOUT" not in gateway.log_text() and "Worker exiting" not in gateway.log_text()
    assert os.path.exists(f"/proc/{gateway.process.pid}")
