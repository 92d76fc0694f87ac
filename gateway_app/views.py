"""HTTP endpoints: the catch-all gateway view and the admin endpoints under a prefix.

Admin endpoints (``GATEWAY_ADMIN_PREFIX``, default ``/__gateway``): ``/health/live``,
``/health/ready`` (503 until the config is loaded and remote JWKS fetched) and ``/metrics``
(Prometheus text format). They take precedence over routed traffic.
"""

from __future__ import annotations

from flask import Flask
from flask import Response
from flask import jsonify
from flask import request

from .gateway import Gateway
from .metrics import exposition

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]


def register_views(app: Flask, gateway: Gateway) -> None:
    prefix = gateway.settings.admin_prefix

    def live() -> Response:
        return jsonify(status="ok")

    def ready() -> Response:
        ok = gateway.ready()
        response = jsonify(status="ready" if ok else "not ready", generation=gateway.config.generation)
        response.status_code = 200 if ok else 503
        return response

    def metrics() -> Response:
        body, content_type = exposition()
        return Response(body, content_type=content_type)

    def proxy(path: str = "") -> Response:
        return gateway.handle(request)

    app.add_url_rule(f"{prefix}/health/live", "health_live", live, methods=["GET"])
    app.add_url_rule(f"{prefix}/health/ready", "health_ready", ready, methods=["GET"])
    app.add_url_rule(f"{prefix}/metrics", "metrics", metrics, methods=["GET"])
    app.add_url_rule("/", "gateway_root", proxy, methods=ALL_METHODS, strict_slashes=False)
    app.add_url_rule("/<path:path>", "gateway", proxy, methods=ALL_METHODS, strict_slashes=False)
