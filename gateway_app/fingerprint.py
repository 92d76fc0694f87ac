"""A snapshot of the config and Rego trees, to tell whether they changed since they were read.

The snapshot is ``(path, mtime_ns, size)`` of every ``.yaml``/``.yml``/``.rego`` file: the
gateway takes one *before* it reads the files (:attr:`Gateway.loaded_fingerprint`), and the
reload watcher (:mod:`gateway_app.reload`) compares a fresh one with it on each poll.
"""

from __future__ import annotations

import pathlib
import typing as t

Fingerprint = t.Tuple[t.Tuple[str, int, int], ...]


def tree_fingerprint(*roots: pathlib.Path) -> Fingerprint:
    """``(path, mtime_ns, size)`` of every ``.yaml``/``.yml``/``.rego`` file under ``roots``, sorted."""
    entries = []
    for root in roots:
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            if path.suffix in (".yaml", ".yml", ".rego") and path.is_file():
                try:
                    stat = path.stat()
                except OSError:
                    continue
                entries.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(sorted(entries))
