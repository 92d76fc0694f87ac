"""Memory over many hot reloads (issue 13 item 3): prints the RSS before and after.

    .venv/bin/python -m bench.reload_rss [--reloads 200] [--threads 4]

Builds the gateway in this process on a temporary config (an ``opaAuth`` policy in front of a
local upstream), then alternates: a reload on a separate thread (like the file watcher), and
requests from a pool of threads, so each generation's regorus engines are built on the
request threads and must be dropped there. RSS should stay flat (within ±5 %): engines,
routes and validators of old generations are released. Not a timed test: it prints figures.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.server
import pathlib
import tempfile
import threading

from gateway_app import create_app
from gateway_app.settings import Settings

CONFIG = """\
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: local, namespace: default}
spec:
  static:
    hosts: [{addr: 127.0.0.1, port: %(port)d}]
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: gate, namespace: default}
spec:
  configs:
  - opaAuth:
      modules: [{name: gate}]
      query: "data.gate.allow == true"
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: gated, namespace: default}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{prefix: /}]
      routeAction: {single: {upstream: {name: local, namespace: default}}}
      options: {extauth: {configRef: {name: gate, namespace: default}}}
"""
POLICY = 'package gate\n\ndefault allow = false\n\nallow {\n    input.attributes.request.http.method == "GET"\n}\n'


def rss_kib() -> int:
    """This process's resident set size, KiB (``VmRSS`` in /proc/self/status)."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reloads", type=int, default=200)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--requests", type=int, default=8, help="requests between two reloads")
    args = parser.parse_args()

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        conf, rego = pathlib.Path(tmp, "conf"), pathlib.Path(tmp, "rego")
        conf.mkdir()
        rego.mkdir()
        (conf / "gateway.yaml").write_text(CONFIG % {"port": upstream.server_address[1]})
        (rego / "gate.rego").write_text(POLICY)
        settings = Settings.from_env({}, config_dir=conf, rego_dir=rego, reload_interval=0, access_log=False,
                                     log_level="warning")
        app = create_app(settings=settings)
        gateway = app.extensions["gateway"]
        client = app.test_client()

        def serve(_: int) -> int:
            return client.get("/anything").status_code

        def reload_on_another_thread() -> None:
            watcher = threading.Thread(target=gateway.reload, name="reload")
            watcher.start()
            watcher.join()

        with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
            def round_trip() -> None:
                reload_on_another_thread()
                statuses = set(pool.map(serve, range(args.requests)))
                assert statuses == {200}, statuses

            for _ in range(20):                                  # warm-up: allocator pools, caches
                round_trip()
            before = rss_kib()
            for _ in range(args.reloads):
                round_trip()
            after = rss_kib()
        upstream.shutdown()
    change = (after - before) / before * 100
    print(f"reloads: {args.reloads} (generation {gateway.config.generation}), request threads: {args.threads}")
    print(f"RSS before: {before} KiB, after: {after} KiB, change: {change:+.1f} %")


if __name__ == "__main__":
    main()
