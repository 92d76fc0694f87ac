"""gunicorn settings for the gateway: ``gunicorn -c conf/gunicorn.conf.py wsgi:app``.

The stack is synchronous (Flask + requests), so each request holds a thread while it waits
for the IdP or the upstream: gthread workers give many such threads per process cheaply.
Every value can be overridden with ``GUNICORN_*``-style env vars below or on the command line.
"""

import multiprocessing
import os

# One worker per core keeps the CPU busy; threads cover I/O waits (IdP, upstream).
workers = int(os.environ.get("GATEWAY_WORKERS", multiprocessing.cpu_count()))
worker_class = "gthread"
threads = int(os.environ.get("GATEWAY_THREADS", 8))
bind = os.environ.get("GATEWAY_BIND", "127.0.0.1:8080")

# A worker silent for longer than this is killed and replaced; keep it above the
# longest upstream timeout (Upstream requestTimeout, default 30 s).
timeout = int(os.environ.get("GATEWAY_WORKER_TIMEOUT", 60))
# On SIGTERM/SIGHUP, in-flight requests get this long to finish.
graceful_timeout = int(os.environ.get("GATEWAY_GRACEFUL_TIMEOUT", 30))
keepalive = int(os.environ.get("GATEWAY_KEEPALIVE", 5))

# Recycle workers now and then (bounded memory growth), staggered so they don't restart together.
max_requests = int(os.environ.get("GATEWAY_MAX_REQUESTS", 100000))
max_requests_jitter = int(os.environ.get("GATEWAY_MAX_REQUESTS_JITTER", 10000))

# Request line and header limits (400 beyond): see README "Limits".
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 16384

# Each worker loads config itself (no preload): reload watchers and sessions live per worker.
preload_app = False
accesslog = None            # the gateway writes its own access log (one line per request)
errorlog = "-"
loglevel = os.environ.get("GATEWAY_LOG_LEVEL", "info")
