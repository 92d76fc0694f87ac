"""Hot reload: watch conf/ and rego/ and swap in a new config generation when they change.

Each worker polls file names, sizes and mtimes every ``GATEWAY_RELOAD_INTERVAL`` seconds
(0 turns polling off) and compares them with the snapshot taken *before* its config was
last read (:attr:`Gateway.loaded_fingerprint`): a file written while a worker boots (say,
while it waits for a remote JWKS) or while a reload builds is picked up by the next poll.
Every worker boot takes its own snapshot, including workers gunicorn starts after
``max_requests`` or a crash. A changed tree is validated as a whole; a rejected change is logged
and the last good config keeps serving. In-flight requests keep the generation they started
with (:meth:`Gateway.handle` reads ``gateway.config`` once).

**Signals.** Under gunicorn, ``conf/gunicorn.conf.py`` calls :func:`install_reload_signal`
in each worker: a ``SIGHUP`` sent to a *worker* forces a validated reload in place, even
when the files' mtimes did not change (``pkill -HUP -P <master pid>`` signals every worker).
A ``SIGHUP`` sent to the *master* is gunicorn's own: it replaces the workers, which load the
config at boot without the last-good safety net (see README.md, "Hot reload").
The signal handler only wakes the watcher thread: nothing heavy runs in signal context.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import typing as t

from .fingerprint import tree_fingerprint

if t.TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger("gateway_app.reload")


class Watcher:
    """Reloads ``gateway`` when its directories change (``poll``) or when asked (:meth:`request_reload`)."""

    def __init__(self, gateway: "Gateway", poll: bool = True) -> None:
        self.gateway = gateway
        self.interval = gateway.settings.reload_interval if poll else 0.0
        self.roots = (gateway.settings.config_dir, gateway.settings.rego_dir)
        self._stop = threading.Event()
        self._wake = threading.Event()

    def check(self, force: bool = False) -> bool:
        """Reload if the files changed (or ``force``); True when a new generation was swapped in.

        Compares with the snapshot the gateway took *before* it last read the files, so a
        change written while a config was being built (first boot included) is never missed.
        """
        current = tree_fingerprint(*self.roots)
        if current == self.gateway.loaded_fingerprint and not force:
            return False
        return self.gateway.reload(current).config is not None

    def request_reload(self) -> None:
        """Ask the watcher thread for a forced reload; safe to call from a signal handler."""
        self._wake.set()

    def run(self) -> None:
        timeout = self.interval if self.interval > 0 else None
        while not self._stop.is_set():
            forced = self._wake.wait(timeout)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check(force=forced)
            except Exception:  # a watcher must never die; the error is logged with its traceback
                log.exception("config watch failed")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


def start_watcher(gateway: "Gateway", poll: bool = True) -> Watcher | None:
    """Start the watcher thread; None when polling is off (``GATEWAY_RELOAD_INTERVAL=0``) and ``poll``."""
    if poll and gateway.settings.reload_interval <= 0:
        return None
    watcher = Watcher(gateway, poll=poll)
    thread = threading.Thread(target=watcher.run, name=f"config-watch-{os.getpid()}", daemon=True)
    thread.start()
    gateway.watcher = watcher  # type: ignore[attr-defined]
    return watcher


def install_reload_signal(gateway: "Gateway", signum: int = signal.SIGHUP) -> Watcher:
    """Make ``signum`` force a validated reload of this process's gateway. Call from the main thread.

    Starts a signal-only watcher when polling is off.
    """
    watcher = getattr(gateway, "watcher", None) or start_watcher(gateway, poll=False)
    assert watcher is not None

    def handle(received: int, frame: t.Any) -> None:
        watcher.request_reload()

    signal.signal(signum, handle)
    log.info("%s reloads the config of worker %d", signal.Signals(signum).name, os.getpid())
    return watcher
