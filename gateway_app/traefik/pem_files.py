"""PEM material given inline (or as a Secret) where the HTTP client needs a file path.

Traefik Hub's ``clientConfig.tls.{ca, cert, key}`` hold PEM text or ``urn:k8s:secret:NAME:KEY``;
``requests`` takes paths. Each distinct PEM is written once per process to a private directory
(mode 0700, files 0600) under a name derived from its SHA-256, so equal settings give equal paths
and a reload keeps the validators (and their token caches) that use them. The directory is
removed at exit.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import threading

_lock = threading.Lock()
_directory: str | None = None


def pem_file(pem: str) -> str:
    """The path of a private file holding ``pem`` (created on first use)."""
    name = hashlib.sha256(pem.encode()).hexdigest()[:32] + ".pem"
    with _lock:
        path = os.path.join(_private_directory(), name)
        if not os.path.exists(path):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(pem)
    return path


def _private_directory() -> str:
    global _directory
    if _directory is None or not os.path.isdir(_directory):
        _directory = tempfile.mkdtemp(prefix="gateway-pem-")        # mode 0700
        atexit.register(shutil.rmtree, _directory, True)
    return _directory
