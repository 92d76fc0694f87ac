"""Run ``wrk`` with bench/requests.lua and read its summary."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import typing as t

LUA_SCRIPT = pathlib.Path(__file__).resolve().parent / "requests.lua"
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclasses.dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


def run_wrk(url: str, requests: t.Sequence[tuple[str, str | None]], *, seconds: int, threads: int = 2,
            connections: int = 32, background: bool = False) -> t.Any:
    """One wrk run cycling through ``requests`` (path, bearer token or None).

    :returns: a :class:`WrkResult`, or the running ``Popen`` when ``background``.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (Debian package wrk): run bash bench/run.sh")
    lines = "\n".join(f"{path} {token}" if token else path for path, token in requests)
    env = {**os.environ, "BENCH_REQUESTS": lines}
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(LUA_SCRIPT), url]
    if background:
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return parse_wrk(done.stdout)


def parse_wrk(output: str) -> WrkResult:
    """The figures of wrk's ``--latency`` summary."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rps is None or total is None:
        raise RuntimeError(f"cannot read wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        requests_per_second=float(rps.group(1)),
        p50_ms=_percentile(output, "50%"),
        p99_ms=_percentile(output, "99%"),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def _percentile(output: str, label: str) -> float:
    match = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {label} latency in wrk output:\n{output}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]
