"""HTTP endpoints: admin endpoints through Flask, routed traffic straight to the gateway.

Admin endpoints (``GATEWAY_ADMIN_PREFIX``, default ``/__gateway``): ``/health/live``,
``/health/ready`` (503 until the config is loaded and remote JWKS fetched; the body's
``waiting_for`` lists what is missing), ``/metrics`` (Prometheus text format) and ``/config``
(the running config, :mod:`gateway_app.admin`). They take precedence over routed traffic;
their error bodies carry the request id. Every other path
skips Flask's URL map and request context: :class:`GatewayDispatcher` hands it to
:meth:`Gateway.respond`, which renders its own errors.
"""

from __future__ import annotations

import typing as t

from flask import Flask
from flask import Response
from flask import abort
from flask import g
from flask import jsonify
from flask import request
from werkzeug.wrappers import Request

from .admin import config_view
from .errors import BadRequestError
from .gateway import Gateway
from .incoming import target_path
from .metrics import exposition
from .observability import request_id
from .preflight import PREFLIGHT
from .preflight import PREFLIGHT_PASSED

OWN_SPELLING = "gateway_app.admin_own_spelling"   # environ key: the raw target is an admin endpoint's own path
WSGIApp = t.Callable[[dict[str, t.Any], t.Callable[..., t.Any]], t.Iterable[bytes]]


class GatewayDispatcher:
    """Wraps ``app.wsgi_app``: admin paths go to Flask, everything else to the gateway.

    The admin prefix is matched on the path routing reads (:func:`incoming.target_path`, the
    raw target normalized), never on the decoded ``PATH_INFO``: ``/__gateway%2fconfig`` is
    refused like any ``%2F`` (400 ``path_invalid``, by the gateway), and an admin endpoint
    answers only to its own spelling, byte for byte: ``/%5f_gateway/config``,
    ``//__gateway/config``, ``/__gateway/config/`` (other spellings of an admin path) are 404,
    so an ingress rule on the prefix sees every request that reaches one.
    """

    def __init__(self, flask_app: WSGIApp, gateway: Gateway, endpoints: t.Iterable[str]) -> None:
        self.flask_app = flask_app
        self.gateway = gateway
        self.admin_prefix = gateway.settings.admin_prefix.rstrip("/") + "/"
        self.endpoints = frozenset(endpoints)

    def __call__(self, environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> t.Iterable[bytes]:
        try:
            raw_path, path = target_path(environ)
        except BadRequestError:
            raw_path = path = ""                    # the gateway refuses it, with its own parse
        if path.startswith(self.admin_prefix):
            if environ.get(PREFLIGHT):                 # admin endpoints decide with the body there
                environ[PREFLIGHT] = PREFLIGHT_PASSED
                return Response(status=204)(environ, start_response)
            environ["PATH_INFO"] = path
            environ[OWN_SPELLING] = raw_path == path and path in self.endpoints
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

    def running_config() -> Response:
        return jsonify(config_view(gateway))

    @app.before_request
    def _request_id() -> None:          # error bodies of admin endpoints carry it (errors.py reads g)
        g.request_id = request_id(request.headers.get("X-Request-Id"), gateway.settings.trust_request_id)

    @app.before_request
    def _own_spelling_only() -> None:
        if not request.environ.get(OWN_SPELLING, True):
            abort(404)

    app.url_map.merge_slashes = False         # no redirects built from the client's Host: 404 instead
    endpoints = ((f"{prefix}/health/live", "health_live", live), (f"{prefix}/health/ready", "health_ready", ready),
                 (f"{prefix}/metrics", "metrics", metrics), (f"{prefix}/config", "running_config", running_config))
    for path, endpoint, view in endpoints:
        app.add_url_rule(path, endpoint, view, methods=["GET"], provide_automatic_options=False)
    app.wsgi_app = GatewayDispatcher(app.wsgi_app, gateway, (path for path, _, _ in endpoints))  # type: ignore[method-assign]
