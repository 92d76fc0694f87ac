"""HTTP endpoints: admin endpoints through Flask, routed traffic straight to the gateway.

Admin endpoints (``GATEWAY_ADMIN_PREFIX``, default ``/__gateway``): ``/health/live``,
``/health/ready`` (503 until the config is loaded and remote JWKS fetched; the body's
``waiting_for`` lists what is missing) and ``/metrics``
(Prometheus text format). They take precedence over routed traffic. Every other path
skips Flask's URL map and request context: :class:`GatewayDispatcher` hands it to
:meth:`Gateway.respond`, which renders its own errors.
"""

from __future__ import annotations

import typing as t

from flask import Flask
from flask import Response
from flask import jsonify
from werkzeug.wrappers import Request

from .gateway import Gateway
from .metrics import exposition

WSGIApp = t.Callable[[dict[str, t.Any], t.Callable[..., t.Any]], t.Iterable[bytes]]


class GatewayDispatcher:
    """Wraps ``app.wsgi_app``: admin paths go to Flask, everything else to the gateway."""

    def __init__(self, flask_app: WSGIApp, gateway: Gateway) -> None:
        self.flask_app = flask_app
        self.gateway = gateway
        self.admin_prefix = gateway.settings.admin_prefix.rstrip("/") + "/"

    def __call__(self, environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> t.Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith(self.admin_prefix):
            return self.flask_app(environ, start_response)
        response = self.gateway.respond(Request(environ))
        return response(environ, start_response)


def register_views(app: Flask, gateway: Gateway) -> None:
    prefix = gateway.settings.admin_prefix

    def live() -> Response:
        return jsonify(status="ok")

    def ready() -> Response:
        waiting = gateway.waiting_for()
        body: dict[str, t.Any] = {"status": "not ready" if waiting else "ready",
                                  "generation": gateway.config.generation}
        if waiting:
            body["waiting_for"] = waiting
        response = jsonify(body)
        response.status_code = 503 if waiting else 200
        return response

    def metrics() -> Response:
        body, content_type = exposition()
        return Response(body, content_type=content_type)

    app.add_url_rule(f"{prefix}/health/live", "health_live", live, methods=["GET"])
    app.add_url_rule(f"{prefix}/health/ready", "health_ready", ready, methods=["GET"])
    app.add_url_rule(f"{prefix}/metrics", "metrics", metrics, methods=["GET"])
    app.wsgi_app = GatewayDispatcher(app.wsgi_app, gateway)  # type: ignore[method-assign]
