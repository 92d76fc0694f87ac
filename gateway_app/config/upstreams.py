"""``Upstream`` resources and destination references -> :class:`UpstreamTarget` tuples."""

from __future__ import annotations

import pathlib
import urllib.parse

from ..proxy import UpstreamTarget
from .fields import Node
from .loader import RawResource

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0


def parse_upstream(resource: RawResource) -> tuple[UpstreamTarget, ...]:
    """``spec.static.hosts[{addr, port}]``, ``useTls``, ``sslConfig``, timeouts."""
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
    """The ``url`` shorthand: ``http://127.0.0.1:8000`` (an optional base path is kept)."""
    url = node.str(field, required=True)
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise node.error(field, f"expected an http(s) URL, got {url!r}")
    if parsed.query or parsed.fragment:
        raise node.error(field, "must not have a query or fragment")
    return (UpstreamTarget(name=name, base_url=url.rstrip("/"), connect_timeout=DEFAULT_CONNECT_TIMEOUT,
                           read_timeout=DEFAULT_READ_TIMEOUT),)
