"""A JWKS endpoint on 127.0.0.1 whose behaviour a test switches: up, down (503), or slow.

Runs in a thread of the test process::

    with JwksServer(jwks={"keys": [...]}, mode="down") as idp:
        ...                      # the gateway's remoteJwks.url is idp.url
        idp.mode = "ok"          # the IdP is back

``delay`` seconds are waited before each answer in every mode (a slow IdP); ``fetches``
counts the requests received.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import typing as t

from tests.support.servers import free_port

JWKS_PATH = "/.well-known/jwks.json"


class JwksServer:
    def __init__(self, jwks: t.Mapping[str, t.Any], *, mode: str = "ok", delay: float = 0.0) -> None:
        self.jwks = dict(jwks)
        self.mode = mode
        self.delay = delay
        self.fetches = 0
        self.port = free_port()
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="jwks-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{JWKS_PATH}"

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _answer(self) -> tuple[int, bytes]:
        with self._lock:
            self.fetches += 1
        if self.delay:
            time.sleep(self.delay)
        if self.mode == "ok":
            return 200, json.dumps(self.jwks).encode()
        return 503, b'{"error": "temporarily_unavailable"}'

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                status, body = server._answer() if self.path == JWKS_PATH else (404, b"{}")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: t.Any) -> None:
                return None

        return Handler
