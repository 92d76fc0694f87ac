"""The head-reading worker against gunicorn's plain gthread worker, in adjacent runs.

``.venv/bin/python -m bench.worker_ab [--rounds N] [--duration S]``: the bench's nginx upstream,
OAuth server and gateway config, two gateways (``conf/gunicorn.conf.py``, one with ``-k
gthread``), then ``wrk -t2 -c32`` on the no-auth route of each in turn, the order swapped every
round, and the median of the per-round ratios. ``bench/run.py`` measures the same pair a few
runs apart, which a busy machine turns into noise; here the two runs of a round are adjacent.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile

from tests.support.servers import oauth_server

from .config import write_gateway_config
from .run import Stack
from .run import _start_nginx
from .wrk import run_wrk

ROUTE = [("/open", None)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_ab", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    args = parser.parse_args(argv)
    root = pathlib.Path(tempfile.mkdtemp(prefix="gateway-worker-ab-"))
    with Stack(root) as stack:
        upstream = _start_nginx(stack, root)
        idp = stack.start(oauth_server(root / "logs"))
        config_dir, rego_dir = write_gateway_config(root, upstream.port, idp.port)
        env = {"GATEWAY_CONFIG_DIR": str(config_dir), "GATEWAY_REGO_DIR": str(rego_dir)}
        servers = {"head-reading": stack.gunicorn("head-reading", "wsgi:app", env),
                   "gthread": stack.gunicorn("gthread", "wsgi:app", env, options=["-k", "gthread"])}
        for server in servers.values():
            run_wrk(server.url + ROUTE[0][0], ROUTE, seconds=2, threads=2, connections=32)
        rps: dict[str, list[float]] = {name: [] for name in servers}
        ratios = []
        for number in range(args.rounds):
            order = list(servers.items()) if number % 2 == 0 else list(servers.items())[::-1]
            for name, server in order:
                result = run_wrk(server.url + ROUTE[0][0], ROUTE, seconds=args.duration, threads=2, connections=32)
                rps[name].append(result.requests_per_second)
            ratios.append(rps["head-reading"][-1] / rps["gthread"][-1])
            print(f"# round {number + 1}: head-reading {rps['head-reading'][-1]:.0f} req/s, "
                  f"gthread {rps['gthread'][-1]:.0f} req/s, ratio {ratios[-1]:.2f}", flush=True)
    print(f"head-reading / gthread, no auth: median {statistics.median(rps['head-reading']):.0f} / "
          f"{statistics.median(rps['gthread']):.0f} req/s; median per-round ratio {statistics.median(ratios):.2f} "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
