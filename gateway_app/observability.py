"""Logging: set-up, one access record per request that also carries its auth decision, and redaction.

Tokens never reach a log line: :func:`redact` keeps a short prefix and a hash only, and
:func:`redact_input` is the one redactor of documents that hold request data (the policy
input document logged for ``GATEWAY_DEBUG_ROUTE`` and printed by ``gateway-app eval``).
Every logged value is printable text: :func:`escape_controls` writes controls as ``\\xNN``.

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

import dataclasses
import datetime
import hashlib
import json
import logging
import re
import sys
import typing as t
import urllib.parse
import uuid

if t.TYPE_CHECKING:
    from .settings import Settings

access_log = logging.getLogger("gateway_app.access")

# C0 controls, DEL and C1 controls: terminal escapes (ESC), NUL (grep then reads the log as binary),
# CR/LF (forged lines). ECMA-48 §5 / Unicode category Cc.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")
_REQUEST_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def redact(token: str) -> str:
    """``abcd…#1a2b3c4d``: enough to correlate log lines, useless to an attacker."""
    digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{token[:4]}…#{digest}"


def escape_controls(text: str) -> str:
    """``text`` with every C0 control, DEL and C1 control written as ``\\xNN``, so a log line is printable.

    The one home of the rule for every logged value (plain and JSON formats, messages and
    exception text alike); other characters are kept as they are.
    """
    return _CONTROLS.sub(_hex_escape, text)


def _hex_escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


@dataclasses.dataclass(frozen=True)
class CredentialLocations:
    """Where a request may carry a credential: header names (lower-case), query parameters, cookies.

    The defaults are where credentials travel whatever the route says: ``Authorization`` and
    ``Proxy-Authorization`` (RFC 9110 §11.6.2, §11.7.2), the whole ``Cookie`` header, and the
    ``access_token`` query parameter (RFC 6750 §2.3). A route's token sources add theirs.
    """

    headers: frozenset[str] = frozenset({"authorization", "proxy-authorization", "cookie"})
    query: frozenset[str] = frozenset({"access_token"})
    cookies: frozenset[str] = frozenset()

    def including(self, headers: t.Iterable[str] = (), query: t.Iterable[str] = (),
                  cookies: t.Iterable[str] = ()) -> CredentialLocations:
        """These locations plus more (header names are lower-cased)."""
        return CredentialLocations(self.headers | {h.lower() for h in headers}, self.query | set(query),
                                   self.cookies | set(cookies))


DEFAULT_CREDENTIAL_LOCATIONS = CredentialLocations()

# Keys of the input document (Gloo's and OPA-Envoy's shapes) whose values carry the query.
_PATH_KEYS = frozenset({"path"})
_RAW_QUERY_KEYS = frozenset({"query", "query_string"})
_PARSED_QUERY_KEYS = frozenset({"parsed_query"})


def redact_input(document: t.Any, locations: CredentialLocations = DEFAULT_CREDENTIAL_LOCATIONS,
                 secrets: t.Collection[str] = ()) -> t.Any:
    """A copy of ``document`` with every credential location replaced by its :func:`redact` form.

    Walks any JSON-like document: header mappings (under a ``headers`` key, or ``headers_*``
    as ``gateway-app explain`` names the headers set and sent: credential headers), ``path``
    strings (the query after ``?``), raw ``query`` strings and ``parsed_query`` mappings
    (credential parameters). Cookie headers are redacted whole. Every other string has each
    occurrence of ``secrets`` (e.g. the token a source found) redacted. The input is not changed.
    """
    return _Redactor(locations, tuple(secret for secret in secrets if secret)).document(document)


@dataclasses.dataclass(frozen=True)
class _Redactor:
    locations: CredentialLocations
    secrets: tuple[str, ...]

    def document(self, value: t.Any) -> t.Any:
        if isinstance(value, dict):
            return {key: self.member(str(key), item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.document(item) for item in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    def member(self, key: str, value: t.Any) -> t.Any:
        locations = self.locations
        if (key == "headers" or key.startswith("headers_")) and isinstance(value, dict):
            return {name: _redact_credential(item) if str(name).lower() in locations.headers
                    else self.document(item) for name, item in value.items()}
        if key in _PATH_KEYS and isinstance(value, str) and "?" in value:
            path, _, query = value.partition("?")
            return self.text(f"{path}?{_redact_query(query, locations.query)}")
        if key in _RAW_QUERY_KEYS and isinstance(value, str):
            return self.text(_redact_query(value, locations.query))
        if key in _PARSED_QUERY_KEYS and isinstance(value, dict):
            return {name: _redact_values(item) if name in locations.query else self.document(item)
                    for name, item in value.items()}
        return self.document(value)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, redact(secret))
        return value


def _redact_values(value: t.Any) -> t.Any:
    return [redact(str(v)) for v in value] if isinstance(value, list) else redact(str(value))


def _redact_credential(value: t.Any) -> str:
    """``Bearer eyJh…#1a2b3c4d``: the scheme, if any, then the redacted credential."""
    text = str(value)
    scheme, sep, credential = text.partition(" ")
    if sep and credential and scheme.isalpha():
        return f"{scheme} {redact(credential)}"
    return redact(text)


def _redact_query(query: str, names: frozenset[str]) -> str:
    """A raw query string with the values of ``names`` redacted; other pairs kept as sent."""
    if not names or not query:
        return query
    pairs = []
    for pair in query.split("&"):
        name, sep, value = pair.partition("=")
        if sep and urllib.parse.unquote_plus(name) in names:
            pair = f"{name}={redact(urllib.parse.unquote_plus(value))}"
        pairs.append(pair)
    return "&".join(pairs)


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
        # json.dumps escapes C0 and (ensure_ascii) every non-ASCII character, but leaves DEL raw.
        return json.dumps(payload, default=str).replace("\x7f", "\\u007f")


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
        elif _CONTROLS.search(message := record.getMessage()):
            record = logging.makeLogRecord(record.__dict__)   # other handlers keep the message as logged
            record.msg, record.args = escape_controls(message), None
        # A traceback keeps its line breaks; any other control in it is escaped.
        return "\n".join(escape_controls(line) for line in super().format(record).split("\n"))


def _plain(value: t.Any) -> str:
    """``-`` for None; text with spaces (or empty) JSON-quoted, so every line splits on spaces."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else str(value)
    if text and " " not in text and not _CONTROLS.search(text):
        return text
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'               # what json.dumps gives for such text, without its cost
    return json.dumps(text).replace("\x7f", "\\u007f")


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
