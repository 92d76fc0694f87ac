"""CPU per kept-alive request of the worker itself: the head-reading worker against plain gthread.

``.venv/bin/python -m bench.worker_path [--requests N] [--rounds R]``: each worker class serves
``N`` GET requests (wrk's head) on one kept-alive connection over a socket pair, calling the
worker's pool-thread entry (``handle``) directly, with a WSGI app that answers 200 at once. No
network, no event loop, no gateway app: what is left is what the worker adds per request
(reading and framing the head, handing it to gunicorn's parser, writing the answer). Process
CPU time (``time.process_time``), so a busy machine changes it far less than the req/s of
``bench.worker_ab``; the rounds alternate the classes and the median is printed, next to the
gateway's whole CPU per request for scale.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import statistics
import sys
import time
import typing as t

from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.workers import gthread

from gateway_app.worker import HeadReadingWorker

HEAD = b"GET /open HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"         # what wrk sends
ANSWER_BODY = b'{"ok": true}'


def app(environ: dict, start_response: t.Callable) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER_BODY)))])
    return [ANSWER_BODY]


def make_worker(kind: type[gthread.ThreadWorker]) -> gthread.ThreadWorker:
    cfg = Config()
    cfg.set("accesslog", None)
    log = Logger(cfg)
    log.error_log.setLevel(logging.CRITICAL)
    worker = kind(0, 0, [], None, 30, cfg, log)
    worker.wsgi = app
    return worker


def serve(kind: type[gthread.ThreadWorker], requests: int) -> float:
    """Microseconds of process CPU per request for ``requests`` kept-alive GETs through ``kind``."""
    worker = make_worker(kind)
    client, server = socket.socketpair()
    conn = gthread.TConn(worker.cfg, server, ("127.0.0.1", 40000), ("127.0.0.1", 8080))
    conn.init()
    answer_size = None
    with client, server, contextlib.closing(worker.tmp):      # worker.tmp: gunicorn's heartbeat file
        start = time.process_time()
        for _ in range(requests):
            client.sendall(HEAD)
            if not worker.handle(conn):
                raise RuntimeError(f"{kind.__name__} closed the connection")
            conn.sock.setblocking(False)               # as the loop does before the next request
            answer = client.recv(65536)
            answer_size = answer_size or len(answer)
            if len(answer) != answer_size or not answer.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer from {kind.__name__}: {answer[:80]!r}")
        return (time.process_time() - start) / requests * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_path", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    kinds = {"head-reading": HeadReadingWorker, "gthread": gthread.ThreadWorker}
    cost: dict[str, list[float]] = {name: [] for name in kinds}
    for number in range(args.rounds):
        order = list(kinds.items()) if number % 2 == 0 else list(kinds.items())[::-1]
        for name, kind in order:
            cost[name].append(serve(kind, args.requests))
        print(f"# round {number + 1}: head-reading {cost['head-reading'][-1]:.1f} us, "
              f"gthread {cost['gthread'][-1]:.1f} us per request", flush=True)
    head_reading, plain = statistics.median(cost["head-reading"]), statistics.median(cost["gthread"])
    print(f"worker CPU per kept-alive request: head-reading {head_reading:.1f} us, gthread {plain:.1f} us, "
          f"added {head_reading - plain:.1f} us (median of {args.rounds} rounds of {args.requests})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
