"""The floor: a naive Flask proxy forwarding every request with a pooled ``requests.Session``.

No routing table, no auth, no header policy: what a "few lines of Flask" gateway costs.
``NAIVE_UPSTREAM`` is the upstream's base URL. Served by gunicorn with the gateway's settings.
"""

from __future__ import annotations

import os
import threading

import requests
from flask import Flask
from flask import Response
from flask import request

UPSTREAM = os.environ.get("NAIVE_UPSTREAM", "http://127.0.0.1:8000")
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host",
                        "proxy-connection", "te", "trailer", "upgrade", "content-encoding"})
TIMEOUT = (5.0, 30.0)

app = Flask(__name__)
_local = threading.local()


def _session() -> requests.Session:
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    return session


@app.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
@app.route("/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
def proxy(path: str) -> Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    upstream = _session().request(request.method, f"{UPSTREAM}/{path}", params=request.args, headers=headers,
                                  data=request.get_data(), timeout=TIMEOUT, allow_redirects=False)
    reply = [(k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP]
    return Response(upstream.content, status=upstream.status_code, headers=reply)
