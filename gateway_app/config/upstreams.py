"""Gloo ``Upstream`` resources and ``url`` destinations -> :class:`UpstreamTarget` tuples:
the upstream side of the config model, built once per generation and read by the forwarder."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import urllib.parse

from ..errors import ConfigError
from .fields import Node
from .loader import RawResource

DEFAULT_CONNECT_TIMEOUT = 5.0      # seconds, when an Upstream sets no connectionConfig.connectTimeout
DEFAULT_READ_TIMEOUT = 30.0        # seconds, when an Upstream sets no requestTimeout


@dataclasses.dataclass(frozen=True)
class UpstreamTarget:
    """One host of an upstream: where a route's traffic goes, with everything per-request work
    needs precomputed when the config is built.

    ``name`` is the Upstream's ``namespace/name`` (or the route's, for a ``url``); ``base_url``
    is ``scheme://host[:port][/base/path]``, the base path prefixing every forwarded path.
    ``connect_timeout`` / ``read_timeout`` are seconds (Gloo ``connectionConfig.connectTimeout``,
    ``requestTimeout``); ``verify`` is a bool or a CA bundle path for https upstreams;
    ``host_rewrite`` replaces the forwarded Host (Gloo ``hostRewrite``). Derived: ``origin``
    (``scheme://netloc``), ``base_path`` and ``timeout`` (the pair requests takes).

    :raises ConfigError: ``base_url`` is not a plain http(s) URL, a timeout is not
        positive, or the CA bundle is missing.
    """

    name: str
    base_url: str
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    verify: bool | str = True
    host_rewrite: str | None = None
    origin: str = dataclasses.field(init=False, repr=False, compare=False)
    base_path: str = dataclasses.field(init=False, repr=False, compare=False)
    timeout: tuple[float, float] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        origin, base_path = _split_base_url(self.name, self.base_url)
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ConfigError(f"upstream {self.name}: timeouts must be positive")
        if isinstance(self.verify, str) and not os.path.exists(self.verify):
            raise ConfigError(f"upstream {self.name}: CA bundle {self.verify} does not exist")
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "base_path", base_path)
        object.__setattr__(self, "timeout", (self.connect_timeout, self.read_timeout))


def _split_base_url(name: str, base_url: str) -> tuple[str, str]:
    """``("http://host:port", "/base")`` from a base URL, or ConfigError."""
    parts = urllib.parse.urlsplit(base_url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"upstream {name}: base_url must be an http:// or https:// URL with a host")
    if "@" in parts.netloc:
        raise ConfigError(f"upstream {name}: base_url must not carry credentials")
    if parts.query or parts.fragment:
        raise ConfigError(f"upstream {name}: base_url must not have a query or fragment")
    return f"{scheme}://{parts.netloc}", parts.path.rstrip("/")



def parse_upstream(resource: RawResource) -> tuple[UpstreamTarget, ...]:
    """An ``Upstream``'s targets, one per ``spec.static.hosts[{addr, port}]``, with ``useTls``,
    ``sslConfig``, ``connectionConfig.connectTimeout``, ``requestTimeout`` and ``hostRewrite``.

    :raises ConfigError: a ``kube`` upstream, no hosts, an unknown field or a bad value.
    """
    spec = Node(resource.body.get("spec"), resource.where)
    if spec.has("kube"):
        spec.raw("kube")
        raise spec.error("kube", "kube upstreams need a Kubernetes cluster; use static.hosts with addr and port")
    static = spec.child("static", required=True)
    assert static is not None
    use_tls = static.bool("useTls")
    hosts = static.children("hosts", required=True)
    if not hosts:
        raise static.error("hosts", "needs at least one host")
    static.done()
    verify = _parse_ssl(spec.child("sslConfig"))
    connection = spec.child("connectionConfig")
    connect_timeout = DEFAULT_CONNECT_TIMEOUT
    if connection is not None:
        connect_timeout = connection.duration("connectTimeout", default=DEFAULT_CONNECT_TIMEOUT, minimum=0.001)
        connection.done()
    read_timeout = spec.duration("requestTimeout", default=DEFAULT_READ_TIMEOUT, minimum=0.001)
    host_rewrite = spec.str("hostRewrite")
    for field in ("discoveryMetadata", "healthChecks"):
        spec.raw(field)
    spec.done()
    name = f"{resource.namespace}/{resource.name}"
    targets = []
    for host in hosts:
        addr = host.str("addr", required=True)
        port = host.int("port", required=True, minimum=1, maximum=65535)
        host.done()
        scheme = "https" if use_tls else "http"
        netloc = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
        targets.append(UpstreamTarget(name=name, base_url=f"{scheme}://{netloc}", connect_timeout=connect_timeout,
                                      read_timeout=read_timeout, verify=verify, host_rewrite=host_rewrite))
    return tuple(targets)


def _parse_ssl(node: Node | None) -> bool | str:
    if node is None:
        return True
    ca_bundle = node.str("caBundle")
    insecure = node.bool("insecureSkipVerify")
    node.done()
    if insecure:
        return False
    if ca_bundle:
        if not pathlib.Path(ca_bundle).is_file():
            raise node.error("caBundle", f"file {ca_bundle} not found")
        return ca_bundle
    return True


def target_from_url(node: Node, field: str, name: str) -> tuple[UpstreamTarget, ...]:
    """The ``url`` shorthand: ``http://127.0.0.1:8000`` (an optional base path is kept), with
    the default timeouts.

    :raises ConfigError: not an http(s) URL with a host, or one with a query or fragment.
    """
    url = node.str(field, required=True)
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise node.error(field, f"expected an http(s) URL, got {url!r}")
    if parsed.query or parsed.fragment:
        raise node.error(field, "must not have a query or fragment")
    return (UpstreamTarget(name=name, base_url=url.rstrip("/")),)
