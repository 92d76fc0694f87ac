"""The Flask app factory: wiring only (settings, logging, the gateway, error handlers, views, reload)."""

from __future__ import annotations

import pathlib
import typing as t

from flask import Flask

from .errors import register_error_handlers
from .gateway import Gateway
from .observability import configure_logging
from .reload import start_watcher
from .settings import Settings
from .views import register_views


def create_app(config_dir: str | pathlib.Path | None = None, rego_dir: str | pathlib.Path | None = None,
               settings: Settings | None = None, clock: t.Callable[[], float] | None = None) -> Flask:
    """Build the app from a config and a Rego directory (defaults: ``GATEWAY_*`` env, then conf/ and rego/).

    ``clock`` (epoch seconds) is what token validators and their caches read instead of
    ``time.time``; None means the real clocks.

    :raises ConfigError: the configuration is invalid; start-up stops.
    """
    settings = settings or Settings.from_env(config_dir=config_dir, rego_dir=rego_dir)
    configure_logging(settings)
    app = Flask("gateway_app")     # the package: its logger name and root path
    app.config["MAX_CONTENT_LENGTH"] = None
    gateway = Gateway(settings, clock=clock)
    app.extensions["gateway"] = gateway
    register_error_handlers(app)
    register_views(app, gateway)
    start_watcher(gateway)
    return app

