"""Soak run: many requests through gunicorn, every decision checked, worker memory compared.

    .venv/bin/python -m bench.soak [--requests 100000] [--connections 16] [--max-seconds 600]

Starts on 127.0.0.1 a tiny upstream (gunicorn, echoes the ``X-User`` header it receives) and
the gateway (``wsgi:app`` with ``conf/gunicorn.conf.py``, worker recycling off) on a config
with a JWT route (local JWKS, ``claimsToHeaders`` sub -> x-user), an open route and a route
to a closed port. Keep-alive raw-socket clients then mix, per request:

=========================  ===============================================  ==========
kind                       request                                           expected
=========================  ===============================================  ==========
valid                      one of 20 valid JWTs (distinct ``sub``)           200, body = sub
forged header              a valid JWT plus a forged ``X-User: root``        200, body = sub
expired                    a JWT whose ``exp`` has passed                    403
bad signature              a JWT signed by another key                       403
garbage                    random characters                                 403
missing                    no token                                          403
open                       the open route                                    200
injected fault             the route to a closed port                        502
=========================  ===============================================  ==========

Any other answer is a wrong decision; any 5xx other than the injected 502s is counted
apart. RSS of every worker is read from /proc after a warm-up and at the end. Not a test:
CI does not run it. Exit status 1 when a decision was wrong or an unexpected 5xx was seen.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import pathlib
import random
import socket
import string
import sys
import tempfile
import threading
import time
import typing as t

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.servers import GUNICORN  # noqa: E402
from tests.support.servers import ServerProcess  # noqa: E402
from tests.support.servers import free_port  # noqa: E402
from tests.support.servers import gateway_server  # noqa: E402
from tests.support.servers import render_config  # noqa: E402

UPSTREAM_APP = '''\
def app(environ, start_response):
    body = environ.get("HTTP_X_USER", "-").encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

CONFIG = """\
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: signed, namespace: soak}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        jwt:
          localJwks: {inlineString: '{JWKS}'}
        claimsToHeaders: [{claim: sub, header: x-user}]
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: soak, namespace: soak}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{prefix: /api}]
      routeAction: {single: {url: 'http://127.0.0.1:{UPSTREAM_PORT}'}}
      options: {extauth: {configRef: {name: signed, namespace: soak}}}
    - matchers: [{prefix: /fault}]
      routeAction: {single: {url: 'http://127.0.0.1:{DEAD_PORT}'}}
    - matchers: [{prefix: /}]
      routeAction: {single: {url: 'http://127.0.0.1:{UPSTREAM_PORT}'}}
"""

KINDS = ("valid", "forged header", "expired", "bad signature", "garbage", "missing", "open", "injected fault")
WEIGHTS = (40, 10, 10, 10, 10, 5, 10, 5)


class Plan:
    """The requests to send and what each must get back."""

    def __init__(self) -> None:
        key, other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": "soak", "alg": "RS256", "use": "sig"}
        self.jwks = json.dumps({"keys": [jwk]})
        now = int(time.time())
        self.valid = [(f"user-{i}", self._sign(key, f"user-{i}", now + 7200)) for i in range(20)]
        self.expired = self._sign(key, "late", now - 120)
        self.bad_signature = self._sign(other, "mallory", now + 7200)
        self.random = random.Random(8)

    @staticmethod
    def _sign(key: t.Any, sub: str, exp: int) -> str:
        return jwt.encode({"sub": sub, "exp": exp, "iat": exp - 7200}, key, algorithm="RS256", headers={"kid": "soak"})

    def next(self, rng: random.Random) -> tuple[str, bytes, int, bytes | None]:
        """(kind, raw request, expected status, expected body or None)."""
        kind = rng.choices(KINDS, WEIGHTS)[0]
        sub, token = rng.choice(self.valid)
        headers: list[str] = []
        path, status, body = "/api/x", 403, None
        if kind == "valid":
            headers.append(f"Authorization: Bearer {token}")
            status, body = 200, sub.encode()
        elif kind == "forged header":
            headers += [f"Authorization: Bearer {token}", "X-User: root"]
            status, body = 200, sub.encode()
        elif kind == "expired":
            headers.append(f"Authorization: Bearer {self.expired}")
        elif kind == "bad signature":
            headers.append(f"Authorization: Bearer {self.bad_signature}")
        elif kind == "garbage":
            headers.append("Authorization: Bearer " + "".join(rng.choices(string.ascii_letters + "._-", k=40)))
        elif kind == "open":
            path, status, body = "/open", 200, b"-"
        elif kind == "injected fault":
            path, status = "/fault", 502
        head = "\r\n".join([f"GET {path} HTTP/1.1", "Host: soak", *headers, "", ""])
        return kind, head.encode(), status, body


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_kind: collections.Counter[str] = collections.Counter()
        self.wrong: list[str] = []
        self.unexpected_5xx = 0
        self.injected_5xx = 0
        self.latencies: list[float] = []

    def record(self, kind: str, status: int, body: bytes, expected: int, expected_body: bytes | None,
               latency: float) -> None:
        with self.lock:
            self.by_kind[kind] += 1
            self.latencies.append(latency)
            if status >= 500:
                if kind == "injected fault":
                    self.injected_5xx += 1
                else:
                    self.unexpected_5xx += 1
            if status != expected or (expected_body is not None and body != expected_body):
                if len(self.wrong) < 20:
                    self.wrong.append(f"{kind}: got {status} {body[:80]!r}, expected {expected} {expected_body!r}")
                else:
                    self.wrong.append("")


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buffer = b""

    def exchange(self, raw: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                if self.sock is None:
                    self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
                    self.buffer = b""
                self.sock.sendall(raw)
                return self._read_response()
            except (ConnectionError, EOFError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _read_response(self) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        length = int(fields.get(b"content-length", b"0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        if fields.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, body

    def _fill(self) -> None:
        assert self.sock is not None
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buffer += data

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def drive(port: int, plan: Plan, tally: Tally, total: int, connections: int, deadline: float) -> int:
    counter = itertools.count()
    sent = [0]

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        conn = Connection(port)
        try:
            while next(counter) < total and time.monotonic() < deadline:
                kind, raw, expected, expected_body = plan.next(rng)
                started = time.perf_counter()
                status, body = conn.exchange(raw)
                tally.record(kind, status, body, expected, expected_body, time.perf_counter() - started)
                with tally.lock:
                    sent[0] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sent[0]


def worker_rss(arbiter_pid: int) -> dict[int, int]:
    """RSS in KiB of each child of the gunicorn arbiter."""
    rss = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) != arbiter_pid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss[int(entry.name)] = int(line.split()[1])
        except OSError:
            continue
    return rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--warm-up", type=int, default=1_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=600)
    args = parser.parse_args(argv)
    plan = Plan()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        (tmp / "soak_upstream.py").write_text(UPSTREAM_APP)
        upstream_port = free_port()
        upstream = ServerProcess("upstream", [GUNICORN, "-w", "2", "-k", "gthread", "--threads", "8",
                                              "--no-control-socket", "--chdir", str(tmp),
                                              "-b", f"127.0.0.1:{upstream_port}", "soak_upstream:app"],
                                 upstream_port, tmp)
        conf = render_config(CONFIG, tmp / "conf", JWKS=plan.jwks, UPSTREAM_PORT=upstream_port,
                             DEAD_PORT=free_port())
        (tmp / "rego").mkdir()
        env = {"GATEWAY_LOG_LEVEL": "info", "GATEWAY_MAX_REQUESTS": "0", "GATEWAY_RELOAD_INTERVAL": "0"}
        with upstream, gateway_server(tmp, conf, tmp / "rego", workers=args.workers, threads=args.threads,
                                      env=env) as gateway:
            deadline = time.monotonic() + args.max_seconds
            drive(gateway.port, plan, Tally(), args.warm_up, args.connections, deadline)
            rss_start = worker_rss(gateway.process.pid)
            tally = Tally()
            started = time.monotonic()
            sent = drive(gateway.port, plan, tally, args.requests, args.connections, deadline)
            elapsed = time.monotonic() - started
            rss_end = worker_rss(gateway.process.pid)
            log_lines = gateway.log_text().count("\n")
    return report(args, tally, sent, elapsed, rss_start, rss_end, log_lines)


def report(args: argparse.Namespace, tally: Tally, sent: int, elapsed: float, rss_start: dict[int, int],
           rss_end: dict[int, int], log_lines: int) -> int:
    latencies = sorted(tally.latencies) or [0.0]
    print(f"soak: {sent} requests in {elapsed:.1f}s ({sent / max(elapsed, 1e-9):.0f}/s), "
          f"{args.connections} connections, {args.workers} workers x {args.threads} threads")
    print("  by kind: " + ", ".join(f"{kind} {tally.by_kind[kind]}" for kind in KINDS))
    print(f"  latency: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    print(f"  wrong decisions: {len(tally.wrong)}")
    for line in filter(None, tally.wrong):
        print(f"    {line}")
    print(f"  5xx: {tally.injected_5xx} injected, {tally.unexpected_5xx} unexpected")
    for pid in sorted(rss_start):
        start, end = rss_start[pid], rss_end.get(pid)
        change = f"{(end - start) / start * 100:+.1f}%" if end else "worker gone"
        print(f"  worker {pid} RSS: {start / 1024:.1f} MiB after warm-up -> "
              f"{(end or 0) / 1024:.1f} MiB at the end ({change})")
    print(f"  gateway log: {log_lines} lines")
    complete = sent >= args.requests
    if not complete:
        print(f"  stopped by --max-seconds after {sent} of {args.requests} requests")
    return 0 if complete and not tally.wrong and not tally.unexpected_5xx else 1


if __name__ == "__main__":
    sys.exit(main())
