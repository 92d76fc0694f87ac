"""Start-up: a broken config stops the server with one readable block, no traceback.

**Under gunicorn** the master checks the config before it forks any worker
(``on_starting`` in conf/gunicorn.conf.py calls :func:`check_before_fork`). The check runs
``gateway-app validate --format json`` in a child process, so the master imports neither
regorus nor the IdP clients nor the metrics (multi-process mode is set up after this import),
and no engine or thread crosses the fork. Each rejected resource is logged once by the master
(logger ``gateway_app.config``: the ``validate`` line; in JSON also ``file``, ``line``,
``resource``, ``field`` and ``reason`` as keys) and the master exits with status 1.

**In a worker** whose config broke after that check (files changed during boot), the app
fails to load with the same lines as gunicorn's "App failed to load" (exit status 4, one
message, no traceback): :func:`load_app` in wsgi.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import typing as t

from .observability import configure_logging
from .observability import log_rejections
from .settings import Settings

if t.TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("gateway_app.config")

CHECK_TIMEOUT = 120.0          # seconds; validate needs no network
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def check_before_fork(settings: Settings | None = None) -> None:
    """Validate the config in a child process; on any rejection log each rejected resource
    once and exit 1 (``SystemExit``, which gunicorn lets through without a traceback).

    :raises SystemExit: the configuration is invalid, or could not be checked.
    """
    settings = settings or Settings.from_env()
    configure_logging(settings)
    command = [sys.executable, "-m", "gateway_app", "validate", "--format", "json",
               "--config-dir", str(settings.config_dir), "--rego-dir", str(settings.rego_dir)]
    # The check must not count as a worker in the multi-process metrics (nor need their directory).
    env = {name: value for name, value in os.environ.items() if name != METRICS_DIR_ENV}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_TIMEOUT, check=False, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.error("not starting: the config check could not run: %s", e)
        raise SystemExit(1) from None
    if done.returncode == 0:
        return
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    rejected = [record for record in records if record.get("state") == "REJECTED"]
    if not rejected:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        log.error("not starting: the config check failed: %s", last)
        raise SystemExit(1)
    log_rejections(log, rejected, "config rejected")
    log.error("not starting: %d of %d resources rejected (gateway-app validate lists them)",
              len(rejected), len(records))
    raise SystemExit(1)


def load_app() -> Flask:
    """:func:`create_app` for wsgi.py; a broken config becomes gunicorn's ``AppImportError``
    carrying the rejected resources' lines (printed once by gunicorn, exit status 4)."""
    from . import create_app
    from .errors import ConfigError

    try:
        return create_app()
    except ConfigError as e:
        try:
            from gunicorn.errors import AppImportError
        except ImportError:            # not under gunicorn: the caller gets the ConfigError
            raise e from None
        raise AppImportError(str(e)) from None
