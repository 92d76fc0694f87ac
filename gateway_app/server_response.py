"""How the HTTP server underneath writes an answer's head: relayed ``Date`` and ``Server`` kept.

gunicorn's :class:`gunicorn.http.wsgi.Response` counts ``Date`` and ``Server`` among the fields
it owns: it drops an application's and writes ``Server: gunicorn`` and the current date. A
gateway relays the upstream's: its ``Date`` is when the answer was made (caches compute ages
from it) and its ``Server`` is the upstream's business. :class:`RelayedFieldsResponse` writes
the application's ``Date`` and ``Server`` when it gave them, adds the current ``Date`` when it
did not (RFC 9110 §6.6.1) and never advertises gunicorn. ``conf/gunicorn.conf.py`` installs it
in each worker (:func:`install`).
"""

from __future__ import annotations

import typing as t

import gunicorn.http.wsgi
from gunicorn.http.message import TOKEN_RE
from gunicorn.http.wsgi import HEADER_VALUE_RE
from gunicorn.http.errors import InvalidResponseHeader

RELAYED_FIELDS = ("date", "server")


class RelayedFieldsResponse(gunicorn.http.wsgi.Response):
    """gunicorn's response writer, with ``Date`` and ``Server`` taken from the application when given."""

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self.relayed: dict[str, str] = {}

    def process_headers(self, headers: list[tuple[str, str]]) -> None:
        """gunicorn's checks and rules, then the application's ``Date`` and ``Server`` (first of each) kept.

        :raises InvalidResponseHeader: a ``Date`` or ``Server`` value gunicorn could not write.
        """
        super().process_headers(headers)
        for name, value in headers:
            lowered = name.lower()
            if lowered in RELAYED_FIELDS and lowered not in self.relayed and TOKEN_RE.fullmatch(name):
                if not HEADER_VALUE_RE.fullmatch(value):
                    raise InvalidResponseHeader(repr(name))
                self.relayed[lowered] = value.strip(" \t")

    def default_headers(self) -> list[str]:
        lines = []
        for line in super().default_headers():
            field = line.split(":", 1)[0].lower()
            if field == "server":
                continue
            if field in self.relayed:
                line = f"{line.split(':', 1)[0]}: {self.relayed[field]}\r\n"
            lines.append(line)
        if "server" in self.relayed:
            lines.append(f"Server: {self.relayed['server']}\r\n")
        return lines


def install() -> None:
    """Make gunicorn build every HTTP/1 response with :class:`RelayedFieldsResponse` (in a worker)."""
    gunicorn.http.wsgi.Response = RelayedFieldsResponse  # type: ignore[misc]
