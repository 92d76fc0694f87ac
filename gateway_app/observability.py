"""Logging: set-up, and one access record per request that also carries its auth decision.

Tokens never reach a log line: :func:`redact` keeps a short prefix and a hash only.

**Format.** ``json``: one object per line, ``ts`` in UTC ISO 8601 with milliseconds and zone
(``2026-11-30T21:40:00.123+00:00``), ``level``, ``logger``, then either the record's ``fields``
(access and decision records) or ``msg`` plus its ``context`` keys (``extra={"context": {...}}``,
e.g. a rejected resource's ``file``, ``line``, ``field``). ``plain``: the same timestamp, level,
logger and message; ``fields`` as ``key=value``. gunicorn's own lines use the same formatters
through :func:`gunicorn_logconfig` (``logconfig_dict`` in conf/gunicorn.conf.py).
This module imports nothing of the gateway but :mod:`.settings`: the gunicorn master loads it
before forking, when :mod:`.metrics` must not be imported yet.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import sys
import typing as t
import uuid

if t.TYPE_CHECKING:
    from .settings import Settings

access_log = logging.getLogger("gateway_app.access")

_REQUEST_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def redact(token: str) -> str:
    """``abcd…#1a2b3c4d``: enough to correlate log lines, useless to an attacker."""
    digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{token[:4]}…#{digest}"


def request_id(incoming: str | None, trust: bool) -> str:
    """Keep a client's well-formed id when trusted, else make one."""
    if trust and incoming and len(incoming) <= 128 and set(incoming) <= _REQUEST_ID_CHARS:
        return incoming
    return str(uuid.uuid4())


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, t.Any] = {"ts": _timestamp(record), "level": record.levelname.lower(),
                                     "logger": record.name}
        fields = getattr(record, "fields", None)
        if fields:
            payload.update(fields)
        else:
            payload["msg"] = record.getMessage()
            payload.update(getattr(record, "context", None) or {})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class PlainFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger> <message>``; ``fields`` rendered as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _timestamp(record)

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if fields:
            record.msg = " ".join(f"{k}={_plain(v)}" for k, v in fields.items())
            record.args = None
        return super().format(record)


def _plain(value: t.Any) -> str:
    """``-`` for None; text with spaces (or empty) JSON-quoted, so every line splits on spaces."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else str(value)
    if text and " " not in text:
        return text
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'               # what json.dumps gives for such text, without its cost
    return json.dumps(text)


def configure_logging(settings: Settings) -> None:
    """Route ``gateway_app.*`` loggers to stderr in the chosen format and level."""
    root = logging.getLogger("gateway_app")
    root.setLevel(settings.log_level.upper())
    for handler in list(root.handlers):
        if getattr(handler, "_gateway", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._gateway = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else PlainFormatter())
    root.addHandler(handler)
    root.propagate = False
    access_log.disabled = not settings.access_log


REJECTION_KEYS = ("kind", "resource", "file", "line", "field", "reason")


def log_rejections(logger: logging.Logger, records: t.Iterable[t.Mapping[str, t.Any]], message: str) -> None:
    """One ERROR line per rejected resource: ``<message>: <the validate line>``, with
    :data:`REJECTION_KEYS` as keys in JSON. ``records`` are :meth:`ResourceStatus.record` dicts."""
    for record in records:
        logger.error("%s: %s", message, record["describe"],
                     extra={"context": {key: record.get(key) for key in REJECTION_KEYS}})


def log_access(**fields: t.Any) -> None:
    if access_log.isEnabledFor(logging.INFO):
        access_log.info("access", extra={"fields": fields})


def gunicorn_logconfig(log_format: str) -> dict[str, t.Any]:
    """gunicorn's ``logconfig_dict``: its own lines (``gunicorn.error``) on stderr in the gateway's
    format; its access log stays off (the gateway writes one record per request). Empty for the
    plain format: gunicorn's default lines are then kept, and its access log costs nothing."""
    if log_format != "json":
        return {}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": "WARNING", "handlers": []},
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
        },
    }
