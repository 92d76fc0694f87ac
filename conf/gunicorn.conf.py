"""gunicorn settings for the gateway: ``gunicorn -c conf/gunicorn.conf.py wsgi:app``.

The stack is synchronous (Flask + requests), so each request holds a thread while it waits
for the IdP or the upstream: gthread workers give many such threads per process cheaply.
Every value can be overridden with the ``GATEWAY_*`` env vars below or on the command line.

Hooks (run by the gunicorn master unless said otherwise):

* ``on_starting``: the config is validated before any worker is forked: a broken one is
  listed once (one line per rejected resource) and gunicorn exits with status 1, no traceback
  (``gateway_app.startup.check_before_fork``). Then Prometheus multi-process mode:
  ``PROMETHEUS_MULTIPROC_DIR`` is created (a fresh temporary directory when unset) and emptied
  of a previous run's files, before any worker imports ``prometheus_client``.
* ``post_worker_init`` (in each worker, after the app is built): ``SIGHUP`` sent to a worker
  reloads its config in place, validated first (``pkill -HUP -P <master pid>``); relayed
  answers keep the upstream's ``Date`` and ``Server`` (``gateway_app.server_response``).
* ``child_exit``: a dead worker's live gauges are dropped from the metrics.
* ``on_exit``: the temporary metrics directory is removed.

``kill -HUP <master pid>`` is gunicorn's own reload: new workers boot with the config on disk
and the old ones finish their requests. A broken config makes the new workers fail to boot
and gunicorn then stops, so run ``gateway-app validate`` first, or rely on the file watch
(``GATEWAY_RELOAD_INTERVAL``), which validates before it swaps.
"""

import glob
import multiprocessing
import os
import shutil
import tempfile

# One worker per core keeps the CPU busy; threads cover I/O waits (IdP, upstream).
workers = int(os.environ.get("GATEWAY_WORKERS", multiprocessing.cpu_count()))
# gthread, except that each request head is read whole in the worker's event loop before it takes
# a thread: a head not complete within GATEWAY_HEAD_TIMEOUT seconds (default 10) gets 408 and is
# closed; later waits on the client (body, answer) end after GATEWAY_CLIENT_TIMEOUT seconds
# (default 30). See gateway_app/worker.py and README "Security and limits".
worker_class = "gateway_app.worker.HeadReadingWorker"
# Threads per worker. The gateway's own work is CPU-bound Python: more threads than a few only
# add GIL contention (measured here: 4 threads gave ~10% more requests/s than 8 on a local
# upstream). Raise it when upstreams or the IdP are slow, since a waiting request holds a thread.
threads = int(os.environ.get("GATEWAY_THREADS", 4))
# Connections per worker. One waiting for its request costs the event loop ~1.6 KiB and no thread, but
# may buffer up to a whole head (limit_request_fields x limit_request_field_size, ~1.6 MiB) plus 64 KiB
# of body in memory: the worst case grows with this. Above 75 % of it, incomplete requests on new
# connections get 1 s (gateway_app.worker.overload_victims).
worker_connections = int(os.environ.get("GATEWAY_WORKER_CONNECTIONS", 1000))
bind = os.environ.get("GATEWAY_BIND", "127.0.0.1:8080")

# A worker silent for longer than this is killed and replaced; keep it above the
# longest upstream timeout (Upstream requestTimeout, default 30 s).
timeout = int(os.environ.get("GATEWAY_WORKER_TIMEOUT", 60))
# On SIGTERM (and for old workers on a master SIGHUP), in-flight requests get this long to
# finish; keep Kubernetes' terminationGracePeriodSeconds above it.
graceful_timeout = int(os.environ.get("GATEWAY_GRACEFUL_TIMEOUT", 30))
keepalive = int(os.environ.get("GATEWAY_KEEPALIVE", 5))

# Recycle workers now and then (bounded memory growth), staggered so they don't restart together.
max_requests = int(os.environ.get("GATEWAY_MAX_REQUESTS", 100000))
max_requests_jitter = int(os.environ.get("GATEWAY_MAX_REQUESTS_JITTER", 10000))

# Request line and header limits (400 beyond): see README "Limits".
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 16384

# The gateway alone decides what a forwarding header is worth (GATEWAY_TRUSTED_PROXIES; see
# gateway_app.incoming): gunicorn trusts none. Its defaults would let any loopback peer set
# wsgi.url_scheme with X-Forwarded-Proto / X-Forwarded-Ssl / X-Forwarded-Protocol, and a trusted
# peer (or any peer on a UNIX socket) override SCRIPT_NAME / PATH_INFO with headers.
forwarded_allow_ips = ""
secure_scheme_headers: dict[str, str] = {}
forwarder_headers = ""

# Each worker loads config itself (no preload): reload watchers and sessions live per worker.
preload_app = False
accesslog = None            # the gateway writes its own access log (one line per request)
errorlog = "-"
loglevel = os.environ.get("GATEWAY_LOG_LEVEL", "info")
# GATEWAY_LOG_FORMAT=json: gunicorn's own lines are JSON too, in the gateway's format
# (gateway_app.observability imports nothing heavy: safe in the master before the fork).
from gateway_app.observability import gunicorn_logconfig  # noqa: E402

logconfig_dict = gunicorn_logconfig(os.environ.get("GATEWAY_LOG_FORMAT", "plain"))


_METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_OWNED_DIR_ENV = "GATEWAY_OWNED_METRICS_DIR"   # set when this file created the directory


def on_starting(server):
    """Check the config, then prepare the multi-process metrics directory, before the first worker is forked."""
    from gateway_app.startup import check_before_fork
    check_before_fork()
    directory = os.environ.get(_METRICS_DIR_ENV)
    if not directory:
        directory = tempfile.mkdtemp(prefix="gateway-metrics-")
        os.environ[_METRICS_DIR_ENV] = directory
        os.environ[_OWNED_DIR_ENV] = directory
    os.makedirs(directory, exist_ok=True)
    for stale in glob.glob(os.path.join(directory, "*.db")):
        os.remove(stale)
    server.log.info("Prometheus multi-process metrics in %s", directory)


def post_worker_init(worker):
    """In the worker: SIGHUP forces a validated config reload; answers keep the upstream's Date and Server."""
    from gateway_app import server_response
    server_response.install()
    gateway = getattr(worker.wsgi, "extensions", {}).get("gateway")
    if gateway is not None:
        from gateway_app.reload import install_reload_signal
        install_reload_signal(gateway)


def child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    owned = os.environ.get(_OWNED_DIR_ENV)
    if owned and owned == os.environ.get(_METRICS_DIR_ENV):
        shutil.rmtree(owned, ignore_errors=True)

# Spread connections over workers: with SO_REUSEPORT each worker listens on its own socket and
# the kernel balances new connections, instead of one worker winning most accept() races
# (keep-alive clients then stay unevenly spread for their whole life).
reuse_port = os.environ.get("GATEWAY_REUSE_PORT", "true").lower() in ("1", "true", "yes")
