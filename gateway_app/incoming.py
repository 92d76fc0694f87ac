"""The request as the gateway's stages see it: read once from WSGI, immutable afterwards."""

from __future__ import annotations

import dataclasses
import typing as t


@dataclasses.dataclass(frozen=True)
class IncomingRequest:
    """What routing, auth and policy look at. Header names are lower-cased.

    ``path`` is the normalized path that routing and policy decide on and that is
    forwarded; ``query_string`` is the raw query string, forwarded byte for byte.
    """

    method: str
    scheme: str
    host: str                                   # the Host header as sent, port included
    path: str
    query_string: str
    headers: t.Mapping[str, str]                # lower-cased name -> value (repeats joined by ", ")
    query: t.Mapping[str, list[str]] = dataclasses.field(default_factory=dict)
    cookies: t.Mapping[str, str] = dataclasses.field(default_factory=dict)
    remote_addr: str = ""
    request_id: str = ""

    @property
    def hostname(self) -> str:
        """Host without port, lower-cased (``[::1]:80`` -> ``[::1]``)."""
        host = self.host.lower()
        if host.startswith("["):
            return host.split("]", 1)[0] + "]"
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)
