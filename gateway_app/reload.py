"""Hot reload: watch conf/ and rego/ and swap in a new config generation when they change.

Each worker polls file names, sizes and mtimes every ``GATEWAY_RELOAD_INTERVAL`` seconds
(and on SIGHUP sent to the worker process, when running in the main thread). A changed tree
is validated as a whole; a rejected change is logged and the last good config keeps serving.
"""

from __future__ import annotations

import logging
import os
import pathlib
import threading
import typing as t

if t.TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger("gateway_app.reload")


def tree_fingerprint(*roots: pathlib.Path) -> tuple[tuple[str, int, int], ...]:
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


class Watcher:
    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway
        self.interval = gateway.settings.reload_interval
        self.roots = (gateway.settings.config_dir, gateway.settings.rego_dir)
        self.fingerprint = tree_fingerprint(*self.roots)
        self._stop = threading.Event()

    def check(self) -> bool:
        """Reload if the files changed; True when a new generation was swapped in."""
        current = tree_fingerprint(*self.roots)
        if current == self.fingerprint:
            return False
        self.fingerprint = current
        return self.gateway.reload().config is not None

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # a watcher must never die; the error is logged with its traceback
                log.exception("config watch failed")

    def stop(self) -> None:
        self._stop.set()


def start_watcher(gateway: "Gateway") -> Watcher | None:
    if gateway.settings.reload_interval <= 0:
        return None
    watcher = Watcher(gateway)
    thread = threading.Thread(target=watcher.run, name=f"config-watch-{os.getpid()}", daemon=True)
    thread.start()
    gateway.watcher = watcher  # type: ignore[attr-defined]
    return watcher
