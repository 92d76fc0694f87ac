"""Start real servers in subprocesses on 127.0.0.1 and wait until they answer.

Modelled on werkzeug's ``tests/conftest.py`` ``DevServerClient``: a free port, a
log file under a test's temporary directory, polling until ready, and a clean
stop. Used by the e2e tests, and usable from benchmarks::

    with oauth_server(tmp_path) as idp, httpbin_server(tmp_path) as upstream:
        ...
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import typing as t

import requests

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN_DIR = pathlib.Path(sys.executable).parent
GUNICORN = str(BIN_DIR / "gunicorn")
GATEWAY_GUNICORN_CONF = REPO_ROOT / "conf" / "gunicorn.conf.py"
GATEWAY_LIVENESS_PATH = "/__gateway/health/live"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
_PLACEHOLDER = re.compile(r"\{[A-Z][A-Z0-9_]*\}")


class ServerStartError(RuntimeError):
    """A server exited or did not become ready before its deadline."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def child_environment(extra: t.Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` without proxy variables, with the repo importable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ServerProcess:
    """One server subprocess: started in its own process group, logging to ``log_dir/<name>.log``.

    Ready means the port accepts TCP *and*, when ``ready_url`` is given, that URL answers
    2xx (or 404 when ``ready_on_404``: the endpoint does not exist, TCP is then enough).
    """

    def __init__(self, name: str, argv: t.Sequence[str], port: int, log_dir: os.PathLike | str, *,
                 env: t.Mapping[str, str] | None = None, cwd: os.PathLike | str = REPO_ROOT,
                 ready_url: str | None = None, ready_on_404: bool = False,
                 start_timeout: float = 20.0, stop_timeout: float = 10.0) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.log_path = pathlib.Path(log_dir) / f"{name}.log"
        self.env = child_environment(env)
        self.cwd = pathlib.Path(cwd)
        self.ready_url = ready_url
        self.ready_on_404 = ready_on_404
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        """Start the process and wait until it is ready.

        :raises ServerStartError: if it exits or is not ready in ``start_timeout`` seconds;
            the message ends with the log's tail.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                            start_new_session=True)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        with requests.Session() as session:
            session.trust_env = False
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerStartError(self._failure(f"exited with status {self.process.returncode}"))
                if port_accepts(self.port) and self._answers(session):
                    return
                time.sleep(0.1)
        raise ServerStartError(self._failure(f"not ready after {self.start_timeout:g} s"))

    def _answers(self, session: requests.Session) -> bool:
        if self.ready_url is None:
            return True
        try:
            status = session.get(self.ready_url, timeout=2).status_code
        except requests.RequestException:
            return False
        return 200 <= status < 300 or (status == 404 and self.ready_on_404)

    def _failure(self, what: str) -> str:
        return f"{self.name} ({' '.join(self.argv)}) {what}; log {self.log_path}:\n{self.log_tail()}"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM the process group; SIGKILL it if still alive after ``stop_timeout`` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.process.wait(timeout=self.stop_timeout)

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ServerProcess {self.name} {self.url} running={self.running()}>"


def oauth_server(tmp_dir: os.PathLike | str, port: int | None = None,
                 extra_args: t.Sequence[str] = ()) -> ServerProcess:
    """The test OAuth server (:mod:`tests.support.oauth_server`): gunicorn, 1 worker, 8 threads."""
    port = port or free_port()
    argv = [sys.executable, "-m", "tests.support.oauth_server", "--host", "127.0.0.1",
            "--port", str(port), "--threads", "8", *extra_args]
    return ServerProcess("oauth", argv, port, tmp_dir,
                         ready_url=f"http://127.0.0.1:{port}/.well-known/openid-configuration")


def httpbin_server(tmp_dir: os.PathLike | str, port: int | None = None) -> ServerProcess:
    """httpbin under gunicorn: 2 gthread workers."""
    port = port or free_port()
    argv = [GUNICORN, "-w", "2", "-k", "gthread", "--threads", "4", "--graceful-timeout", "1",
            "--no-control-socket", "-b", f"127.0.0.1:{port}", "httpbin:app"]
    return ServerProcess("httpbin", argv, port, tmp_dir, ready_url=f"http://127.0.0.1:{port}/get")


def gateway_server(tmp_dir: os.PathLike | str, config_dir: os.PathLike | str,
                   rego_dir: os.PathLike | str, port: int | None = None, workers: int = 2,
                   threads: int = 4, env: t.Mapping[str, str] | None = None,
                   name: str = "gateway") -> ServerProcess:
    """The gateway (``wsgi:app``) under gunicorn, with ``conf/gunicorn.conf.py`` when it exists.

    ``workers``, ``threads`` and the bind address are passed on the command line, so they
    win over the config file.
    """
    port = port or free_port()
    argv = [GUNICORN]
    if GATEWAY_GUNICORN_CONF.is_file():
        argv += ["-c", str(GATEWAY_GUNICORN_CONF)]
    else:
        argv += ["-k", "gthread"]
    argv += ["-w", str(workers), "--threads", str(threads), "--graceful-timeout", "1",
             "--no-control-socket", "-b", f"127.0.0.1:{port}", "wsgi:app"]
    gateway_env = {
        "GATEWAY_CONFIG_DIR": str(config_dir),
        "GATEWAY_REGO_DIR": str(rego_dir),
        "GATEWAY_LOG_LEVEL": "debug",
        **(env or {}),
    }
    return ServerProcess(name, argv, port, tmp_dir, env=gateway_env,
                         ready_url=f"http://127.0.0.1:{port}{GATEWAY_LIVENESS_PATH}", ready_on_404=True)


def render_config(source: str | os.PathLike, dest_dir: os.PathLike | str,
                  filename: str = "gateway.yaml", **values: object) -> pathlib.Path:
    """Write YAML config with ``{NAME}`` placeholders replaced by ``values`` (e.g. ``IDP_PORT=4445``).

    ``source`` is YAML text (written to ``dest_dir/filename``) or a path to a file or a
    directory of ``*.yaml``/``*.yml`` files (each written under ``dest_dir``). Only the
    given names are replaced, so Gloo templates such as ``{{ dynamic_metadata(...) }}``
    pass through.

    :raises ValueError: if a ``{UPPER_CASE}`` placeholder is left unreplaced.
    :returns: ``dest_dir``.
    """
    dest = pathlib.Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    for name, text in _config_sources(source, filename):
        (dest / name).write_text(_substitute(text, values, name))
    return dest


def _config_sources(source: str | os.PathLike, filename: str) -> list[tuple[str, str]]:
    if isinstance(source, str):
        return [(filename, source)]
    path = pathlib.Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        return [(p.name, p.read_text()) for p in files]
    return [(path.name, path.read_text())]


def _substitute(text: str, values: t.Mapping[str, object], name: str) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    left = sorted(set(_PLACEHOLDER.findall(text)))
    if left:
        raise ValueError(f"{name}: placeholders without a value: {', '.join(left)}")
    return text


class RawSocketServer:
    """A raw-socket server on 127.0.0.1 for tests that must control every byte a peer sees.

    Subclasses implement :meth:`handle`; each accepted connection gets it, in its own thread
    when ``threaded`` (so a hanging answer does not block the next connection).
    """

    threaded = False

    def __init__(self) -> None:
        self.port = free_port()
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "RawSocketServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            if self.threaded:
                threading.Thread(target=self.handle, args=(conn,), daemon=True).start()
            else:
                self.handle(conn)
