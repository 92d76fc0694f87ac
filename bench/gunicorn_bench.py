"""gunicorn settings for benchmark runs: the shipped ``conf/gunicorn.conf.py`` unchanged, plus a
request counter per worker (for the worker-balance figures).

Each worker writes its count to ``$BENCH_COUNTS_DIR/<pid>`` every ``FLUSH_EVERY`` requests
and when it exits; bench/run.py reads the files before and after each run.
"""

import itertools
import os
import pathlib
import runpy

_SHIPPED = pathlib.Path(__file__).resolve().parent.parent / "conf" / "gunicorn.conf.py"
_shipped = runpy.run_path(str(_SHIPPED))
globals().update({k: v for k, v in _shipped.items() if not k.startswith("_")})
_shipped_post_request = _shipped.get("post_request")
_shipped_worker_exit = _shipped.get("worker_exit")

FLUSH_EVERY = 500
_COUNTS_DIR = os.environ.get("BENCH_COUNTS_DIR")
_counter = itertools.count(1)   # next() on itertools.count is atomic under the GIL
_served = [0]


def _flush(pid: int) -> None:
    if _COUNTS_DIR:
        path = pathlib.Path(_COUNTS_DIR) / str(pid)
        path.write_text(str(_served[0]))


def post_request(worker, req, environ, resp):
    if _shipped_post_request is not None:
        _shipped_post_request(worker, req, environ, resp)
    _served[0] = next(_counter)
    if _served[0] % FLUSH_EVERY == 0:
        _flush(worker.pid)


def worker_exit(server, worker):
    if _shipped_worker_exit is not None:
        _shipped_worker_exit(server, worker)
    _flush(worker.pid)
