"""Config snippets the tests share, so a resource's shape is written once."""

from __future__ import annotations


def upstream_yaml(name: str, namespace: str, addr: str = "upstream.test", port: int = 8000) -> str:
    """An ``Upstream`` with one static host (requests-mock answers for ``http://addr:port``)."""
    return f"""
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  static:
    hosts: [{{addr: {addr}, port: {port}}}]
"""
