"""The gateway benchmark (issue 7): ``bash bench/run.sh`` or ``python -m bench.run``.

Starts on 127.0.0.1 nginx (the upstream, a small JSON), the test OAuth server, the gateway
under gunicorn with the shipped ``conf/gunicorn.conf.py`` (plus a per-worker request counter),
the same gateway with gunicorn's plain gthread worker (the cost of the head-reading worker),
and the naive Flask + ``requests`` proxy with the same gunicorn settings; then drives each
setup with ``wrk -t2 -c32``, in short rounds that alternate the order (A B C, C B A, …) so
drift cancels in the ratios, and prints the median of the rounds, and each setup's CPU per request
(its gunicorn processes, plus Redis where it has one). ``--only`` measures a subset of setups
(e.g. the usage-plan pairs). ``--memory`` instead measures worker RSS after
1,000 and 100,000 requests. Every process started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import pathlib
import platform
import shutil
import statistics
import sys
import tempfile
import time
import typing as t

import requests

from tests.support.oauth_server import request_token
from tests.support.servers import GUNICORN
from tests.support.servers import REPO_ROOT
from tests.support.servers import ServerProcess
from tests.support.servers import free_port
from tests.support.servers import oauth_server

from .config import write_gateway_config
from .config import write_nginx_config
from .wrk import WrkResult
from .wrk import run_wrk

BENCH_DIR = pathlib.Path(__file__).resolve().parent
GUNICORN_CONF = BENCH_DIR / "gunicorn_bench.py"
TOKENS = 10
WARM_UP_SECONDS = 2
RSS_MARKS = (1_000, 100_000)

TARGETS = (  # (label, numerator, denominator, comparison, bound)
    ("JWT+Rego+header / no-auth (rps)", "jwt", "open", ">=", 0.90),
    ("introspection+Rego+header / no-auth (rps)", "introspection", "open", ">=", 0.90),
    ("no-auth / naive proxy (rps)", "open", "naive", ">=", 1.0),
    ("p99 JWT / p99 no-auth", "jwt", "open", "p99<=", 1.2),
    ("p99 introspection / p99 no-auth", "introspection", "open", "p99<=", 1.2),
    ("JWT + usage plan / JWT, in-process counters (rps)", "jwt-limited", "jwt", ">=", 0.98),
    ("JWT + usage plan / JWT, Redis counters (rps)", "jwt-limited-redis", "jwt-redis", ">=", 0.95),
    # issue 12: the head-reading worker costs at most 3 % against gunicorn's plain gthread worker.
    ("no-auth, head-reading worker / plain gthread (rps)", "open", "open-gthread", ">=", 0.97),
)
CPU_RATIOS = (  # (label, with the stage, without): throughput ratio estimated from CPU per request
    ("usage plan, in-process counters: throughput ratio from CPU", "jwt-limited", "jwt"),
    ("usage plan, Redis counters: throughput ratio from CPU", "jwt-limited-redis", "jwt-redis"),
)


@dataclasses.dataclass
class Setup:
    """One thing to measure: a server, a path and the requests wrk cycles through."""

    key: str
    label: str
    server: ServerProcess
    requests: list[tuple[str, str | None]]
    results: list[WrkResult] = dataclasses.field(default_factory=list)
    served: dict[int, int] = dataclasses.field(default_factory=dict)
    cpu_us: list[float] = dataclasses.field(default_factory=list)     # CPU per request, per round
    helpers: tuple[ServerProcess, ...] = ()                            # e.g. the Redis it talks to

    @property
    def url(self) -> str:
        return self.server.url + self.requests[0][0]

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(r, attribute) for r in self.results)


class Stack(contextlib.ExitStack):
    """Starts servers, records their process groups for run.sh's trap, stops them at exit."""

    def __init__(self, root: pathlib.Path) -> None:
        super().__init__()
        self.root = root
        self.pid_file = pathlib.Path(os.environ.get("BENCH_PID_FILE", root / "pids"))

    def start(self, server: ServerProcess) -> ServerProcess:
        self.callback(server.stop)
        server.start()
        with open(self.pid_file, "a") as pids:
            pids.write(f"{server.process.pid}\n")
        return server

    def gunicorn(self, name: str, app: str, env: t.Mapping[str, str], options: t.Sequence[str] = ()) -> ServerProcess:
        """``app`` under gunicorn with the bench config; ``options`` (command line) override it."""
        port = free_port()
        counts = self.root / "counts" / name
        counts.mkdir(parents=True)
        argv = [GUNICORN, "-c", str(GUNICORN_CONF), *options, "--no-control-socket", "-b", f"127.0.0.1:{port}", app]
        server = ServerProcess(name, argv, port, self.root / "logs",
                               env={"BENCH_COUNTS_DIR": str(counts), "GATEWAY_MAX_REQUESTS": "0", **env},
                               ready_url=f"http://127.0.0.1:{port}/open", start_timeout=60)
        server.counts_dir = counts  # type: ignore[attr-defined]
        return self.start(server)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    root = pathlib.Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    print(f"# logs and configs under {root}", flush=True)
    with Stack(root) as stack:
        upstream = _start_nginx(stack, root)
        idp = stack.start(oauth_server(root / "logs"))
        config_dir, rego_dir = write_gateway_config(root, upstream.port, idp.port)
        gateway_env = {"GATEWAY_CONFIG_DIR": str(config_dir), "GATEWAY_REGO_DIR": str(rego_dir)}
        gateway = stack.gunicorn("gateway", "wsgi:app", gateway_env)
        jwt_token = request_token(idp.url, "jwt-client", "jwt-secret", "petstore")["access_token"]
        opaque = [request_token(idp.url, "my-client", "secret", "petstore")["access_token"] for _ in range(TOKENS)]
        if args.memory:
            return _memory(args, gateway, jwt_token, opaque)
        setups = _setups(args, stack, root, upstream, gateway, gateway_env, jwt_token, opaque)
        if args.only:
            setups = [s for s in setups if s.key in args.only.split(",")]
        report = Report(args, setups, idp)
        report.prepare()
        report.measure()
        text = report.render()
    print(text)
    if args.results:
        pathlib.Path(args.results).write_text(text)
        print(f"# written to {args.results}")
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--only", help="comma-separated setup keys to measure, e.g. "
                                       "jwt,jwt-limited,jwt-redis,jwt-limited-redis (the usage-plan ratios)")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip the access-log-off and Redis rows")
    parser.add_argument("--results", help="also write the report (markdown) to this file")
    parser.add_argument("--memory", action="store_true",
                        help="measure worker RSS after 1,000 and 100,000 requests instead")
    parser.add_argument("--memory-limit", type=int, default=600, help="seconds before --memory gives up")
    return parser.parse_args(argv)


def _start_nginx(stack: Stack, root: pathlib.Path) -> ServerProcess:
    port = free_port()
    conf = write_nginx_config(root / "nginx", port)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    argv = [nginx, "-p", str(root / "nginx"), "-c", str(conf), "-e", "stderr"]
    return stack.start(ServerProcess("nginx", argv, port, root / "logs", ready_url=f"http://127.0.0.1:{port}/"))


def _setups(args: argparse.Namespace, stack: Stack, root: pathlib.Path, upstream: ServerProcess,
            gateway: ServerProcess, gateway_env: dict[str, str], jwt_token: str, opaque: list[str]) -> list[Setup]:
    naive = stack.gunicorn("naive", "bench.naive_proxy:app", {"NAIVE_UPSTREAM": upstream.url})
    plain = stack.gunicorn("gateway-gthread", "wsgi:app", gateway_env, options=["-k", "gthread"])
    setups = [
        Setup("direct", "upstream direct (nginx)", upstream, [("/open", None)]),
        Setup("open-gthread", "gateway, no auth, plain gthread worker", plain, [("/open", None)]),
        Setup("open", "gateway, no auth", gateway, [("/open", None)]),
        Setup("jwt", "gateway, JWT + Rego + claim header", gateway, [("/jwt", jwt_token)]),
        Setup("jwt-limited", "gateway, JWT + Rego + claim header + usage plan (per worker)", gateway,
              [("/jwt-limited", jwt_token)]),
        Setup("introspection", f"gateway, introspection (cached, {TOKENS} tokens) + Rego + claim header", gateway,
              [("/introspection", token) for token in opaque]),
        Setup("naive", "naive Flask + requests.Session proxy", naive, [("/open", None)]),
    ]
    if not args.no_extras:
        quiet = stack.gunicorn("gateway-nolog", "wsgi:app", {**gateway_env, "GATEWAY_ACCESS_LOG": "false"})
        setups.insert(2, Setup("open-nolog", "gateway, no auth, access log off", quiet, [("/open", None)]))
        redis = _start_redis(stack, root)
        if redis is not None:
            shared = stack.gunicorn("gateway-redis", "wsgi:app",
                                    {**gateway_env, "GATEWAY_TOKEN_CACHE_URL": f"redis://127.0.0.1:{redis.port}/0"})
            setups.insert(5, Setup("introspection-redis", "gateway, introspection, Redis-shared cache + Rego + header",
                                   shared, [("/introspection", token) for token in opaque]))
            setups += [Setup("jwt-redis", "gateway with Redis, JWT + Rego + claim header", shared,
                             [("/jwt", jwt_token)], helpers=(redis,)),
                       Setup("jwt-limited-redis", "gateway with Redis, JWT + Rego + header + usage plan (Redis)",
                             shared, [("/jwt-limited", jwt_token)], helpers=(redis,))]
    # The no-auth run sits between the two auth runs it is compared with, so each pair is adjacent in time.
    order = ["direct", "open-gthread", "jwt-limited", "jwt", "open", "introspection", "naive", "open-nolog",
             "introspection-redis", "jwt-redis", "jwt-limited-redis"]
    return sorted(setups, key=lambda s: order.index(s.key) if s.key in order else len(order))


def _start_redis(stack: Stack, root: pathlib.Path) -> ServerProcess | None:
    binary = shutil.which("redis-server")
    if binary is None:
        print("# redis-server not installed: no shared-cache row", flush=True)
        return None
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(root)]
    return stack.start(ServerProcess("redis", argv, port, root / "logs"))


class Report:
    """Runs the measurements and renders them as markdown."""

    def __init__(self, args: argparse.Namespace, setups: list[Setup], idp: ServerProcess) -> None:
        self.args = args
        self.setups = setups
        self.idp = idp
        self.introspection_calls: dict[str, int] = {}
        self.decision_checks: list[str] = []
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.load_before = os.getloadavg()

    def prepare(self) -> None:
        """Per setup: check its decisions, then warm it up (JWKS, sessions, policy engines, token cache).

        Every introspection call a setup causes happens here: its answers stay cached after.
        """
        with requests.Session() as http:
            http.trust_env = False
            for setup in self.setups:
                before = self._idp_stats()["introspection_calls"]
                self.decision_checks.append(_check_decisions(http, setup))
                self._wrk(setup, WARM_UP_SECONDS)
                if setup.key.startswith("introspection"):
                    self.introspection_calls[setup.key] = self._idp_stats()["introspection_calls"] - before

    def measure(self) -> None:
        before = self._idp_stats()["introspection_calls"]
        for round_number in range(self.args.rounds):
            # Forward, then reverse order (A B C, C B A, ...): drift within a round biases each
            # pair one way in one round and the other way in the next.
            for setup in self.setups if round_number % 2 == 0 else self.setups[::-1]:
                counts = _worker_counts(setup.server)
                cpu = _cpu_seconds(setup)
                result = self._wrk(setup, self.args.duration)
                setup.results.append(result)
                if result.requests:
                    setup.cpu_us.append((_cpu_seconds(setup) - cpu) / result.requests * 1e6)
                for pid, served in _worker_counts(setup.server).items():
                    setup.served[pid] = setup.served.get(pid, 0) + served - counts.get(pid, 0)
                print(f"# round {round_number + 1}: {setup.key:20} {result.requests_per_second:9.0f} req/s "
                      f"p50 {result.p50_ms:6.2f} ms p99 {result.p99_ms:6.2f} ms", flush=True)
        self.calls_during_runs = self._idp_stats()["introspection_calls"] - before

    def _wrk(self, setup: Setup, seconds: int) -> WrkResult:
        return run_wrk(setup.url, setup.requests, seconds=seconds, threads=self.args.threads,
                       connections=self.args.connections)

    def _idp_stats(self) -> dict[str, int]:
        return requests.get(f"{self.idp.url}/admin/stats", timeout=10).json()

    def render(self) -> str:
        by_key = {s.key: s for s in self.setups}
        lines = [
            "# Gateway benchmark",
            "",
            f"Run {self.started:%Y-%m-%d %H:%M} UTC on {_machine()}.",
            f"`wrk -t{self.args.threads} -c{self.args.connections} -d{self.args.duration}s --latency`, "
            f"{self.args.rounds} interleaved rounds (order reversed every other round), median shown. "
            f"gunicorn: {_gunicorn_shape()} "
            "(shipped conf/gunicorn.conf.py; worker recycling off so every round sees steady workers). "
            "Gateway logs at the production default (info, access log on) into a file.",
            f"Load average (1 min) before: {self.load_before[0]:.2f}, after: {os.getloadavg()[0]:.2f} "
            "(anything else running on the machine shifts absolute figures; interleaving keeps ratios fairer).",
            "",
            "| setup | requests/s | p50 ms | p99 ms | non-2xx | rounds (requests/s) |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for s in self.setups:
            rounds = ", ".join(f"{r.requests_per_second:.0f}" for r in s.results)
            errors = sum(r.non_2xx + r.socket_errors for r in s.results)
            lines.append(f"| {s.label} | {s.median('requests_per_second'):.0f} | {s.median('p50_ms'):.2f} | "
                         f"{s.median('p99_ms'):.2f} | {errors} | {rounds} |")
        lines += ["", "Ratios are the median of per-round ratios: each round measures the two setups a few "
                  "seconds apart, so machine drift cancels.", "",
                  "| target | measured | bound | met | per round |", "| --- | ---: | ---: | --- | --- |"]
        for label, top, bottom, comparison, bound in TARGETS:
            if top not in by_key or bottom not in by_key:
                continue                     # --no-extras or no redis-server: no Redis rows
            field = "requests_per_second" if comparison == ">=" else "p99_ms"
            ratios = _round_ratios(by_key[top], by_key[bottom], field)
            value = statistics.median(ratios)
            met = value >= bound if comparison == ">=" else value <= bound
            lines.append(f"| {label} | {value:.2f} | {comparison.replace('p99', '')} {bound} | "
                         f"{'yes' if met else 'NO'} | {', '.join(f'{r:.2f}' for r in ratios)} |")
        lines += ["", "CPU per request: user + system CPU of the gateway's gunicorn processes (and of the "
                  "Redis server it talks to, where it has one) over each measured run, divided by the requests "
                  "served. On a CPU-bound machine throughput is inversely proportional to it, and unlike "
                  "requests/s it does not depend on what else the machine runs.", "",
                  "| setup | CPU µs per request (median) | per round |", "| --- | ---: | --- |"]
        for s in self.setups:
            if s.cpu_us:
                lines.append(f"| {s.label} | {statistics.median(s.cpu_us):.0f} | "
                             f"{', '.join(f'{c:.0f}' for c in s.cpu_us)} |")
        for label, top, bottom in CPU_RATIOS:
            if top in by_key and bottom in by_key and by_key[top].cpu_us and by_key[bottom].cpu_us:
                ratio = statistics.median(by_key[bottom].cpu_us) / statistics.median(by_key[top].cpu_us)
                lines.append(f"| **{label}** (CPU of {bottom} / CPU of {top}) | {ratio:.3f} | |")
        lines += ["", "Introspection calls the IdP received (10 distinct tokens):", ""]
        workers = _gunicorn_shape().split(" ")[0]
        for key, calls in self.introspection_calls.items():
            expected = f"exactly {TOKENS}" if key.endswith("redis") else f"at most {TOKENS} x {workers} workers"
            lines.append(f"- {by_key[key].label}: {calls} during warm-up (expected {expected})")
        lines.append(f"- during all measured rounds: {self.calls_during_runs}")
        lines += ["", "Requests per worker process over the measured rounds (balance):", ""]
        for s in self.setups:
            if s.served:
                total = sum(s.served.values()) or 1
                shares = ", ".join(f"pid {pid}: {n} ({100 * n / total:.0f}%)" for pid, n in sorted(s.served.items()))
                lines.append(f"- {s.key}: {shares}")
        lines += ["", "Decision checks before measuring:", ""] + [f"- {line}" for line in self.decision_checks]
        return "\n".join(lines) + "\n"


def _round_ratios(top: Setup, bottom: Setup, field: str) -> list[float]:
    """``top / bottom`` for each round (rounds interleave the setups)."""
    return [getattr(a, field) / getattr(b, field) for a, b in zip(top.results, bottom.results)
            if getattr(b, field)]


def _check_decisions(http: requests.Session, setup: Setup) -> str:
    """The setup admits the benchmark's request and, when it sends a token, refuses one without."""
    path, token = setup.requests[0]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = http.get(setup.server.url + path, headers=headers, timeout=10)
    status = response.status_code
    if status != 200:
        raise SystemExit(f"{setup.key} answers {status}, not 200: see {setup.server.log_path}")
    line = f"{setup.key}: the benchmark's request -> {status}"
    if "RateLimit-Policy" in response.headers:
        line += f" (RateLimit-Policy: {response.headers['RateLimit-Policy']}, RateLimit: {response.headers['RateLimit']})"
    if token:
        refused = http.get(setup.server.url + path, timeout=10).status_code
        if refused not in (401, 403):
            raise SystemExit(f"{setup.key} admits requests without a token ({refused})")
        line += f", without a token -> {refused}"
    return line


def _cpu_seconds(setup: Setup) -> float:
    """User + system CPU seconds of the setup's server process tree and its helpers, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for server in (setup.server, *setup.helpers):
        process = getattr(server, "process", None)
        if process is None:
            continue
        for pid in _process_tree(process.pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])       # utime, stime
    return total / ticks


def _process_tree(pid: int) -> list[int]:
    pids = [pid]
    with contextlib.suppress(OSError):
        for child in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            pids.extend(_process_tree(int(child)))
    return pids


def _worker_counts(server: ServerProcess) -> dict[int, int]:
    counts_dir = getattr(server, "counts_dir", None)
    if counts_dir is None:
        return {}
    counts = {}
    for path in counts_dir.iterdir():
        with contextlib.suppress(ValueError, OSError):
            counts[int(path.name)] = int(path.read_text() or 0)
    return counts


def _gunicorn_shape() -> str:
    import runpy
    conf = runpy.run_path(str(REPO_ROOT / "conf" / "gunicorn.conf.py"))
    return f"{conf['workers']} workers x {conf['threads']} threads ({conf['worker_class']})"


def _machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{platform.node() or 'host'}: {os.cpu_count()} CPUs ({model}), Python {platform.python_version()}"


# -- memory mode ---------------------------------------------------------------------------
def _memory(args: argparse.Namespace, gateway: ServerProcess, jwt_token: str, opaque: list[str]) -> int:
    """RSS of each worker when its own count passes 1,000 and 100,000 requests (mixed routes)."""
    mix = [("/open", None), ("/jwt", jwt_token)] + [("/introspection", token) for token in opaque]
    workers = _worker_pids(gateway)
    marks: dict[int, dict[int, int]] = {pid: {} for pid in workers}
    process = run_wrk(gateway.url + "/open", mix, seconds=args.memory_limit, threads=args.threads,
                      connections=args.connections, background=True)
    deadline = time.monotonic() + args.memory_limit
    try:
        while time.monotonic() < deadline and any(len(m) < len(RSS_MARKS) for m in marks.values()):
            counts = _worker_counts(gateway)
            for pid in workers:
                for mark in RSS_MARKS:
                    if mark not in marks[pid] and counts.get(pid, 0) >= mark:
                        marks[pid][mark] = _rss_kib(pid)
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(timeout=10)
    print(f"# memory: RSS per gateway worker ({_gunicorn_shape()}), mixed /open, /jwt, /introspection")
    ok = True
    for pid, values in marks.items():
        first, last = values.get(RSS_MARKS[0]), values.get(RSS_MARKS[1])
        if first is None or last is None:
            print(f"- pid {pid}: did not reach {RSS_MARKS[1]:,} requests in {args.memory_limit} s: {values}")
            ok = False
            continue
        growth = (last - first) / first
        ok = ok and growth <= 0.10
        print(f"- pid {pid}: {first / 1024:.1f} MiB after {RSS_MARKS[0]:,} requests, "
              f"{last / 1024:.1f} MiB after {RSS_MARKS[1]:,} ({growth:+.1%}; target within 10%)")
    return 0 if ok else 1


def _worker_pids(server: ServerProcess) -> list[int]:
    master = server.process.pid
    children = pathlib.Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def _rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


if __name__ == "__main__":
    sys.exit(main())
