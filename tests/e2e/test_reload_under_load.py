"""Hot reload under load, through real gunicorn (2 workers) and a real httpbin upstream.

A thread sends requests on fresh connections (so both workers serve them) while the policy
file is changed from allow to deny, then replaced by a module that does not compile. No
request may fail with a 5xx; the decision flips from allow to deny once and never back;
the broken module is rejected, logged by each worker, and deny keeps serving.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import threading
import time
import typing as t

import pytest
import requests

from tests.support.servers import ServerProcess
from tests.support.servers import gateway_server
from tests.support.servers import render_config

WORKERS = 2
RELOAD_INTERVAL = 0.2
# The two workers poll independently: one may still allow for up to one interval (plus a
# reload's build time) after the other denies.
SWITCH_GRACE = 1.5
LOOP_LIMIT = 8.0

CONFIG = """\
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: httpbin, namespace: default}
spec:
  static:
    hosts: [{addr: 127.0.0.1, port: {UPSTREAM_PORT}}]
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
    - name: gated
      matchers: [{prefix: /}]
      routeAction:
        single:
          upstream: {name: httpbin, namespace: default}
      options:
        extauth:
          configRef: {name: gate, namespace: default}
"""

ALLOW = "package gate\n\ndefault allow = false\n\nallow {\n    input.attributes.request.http.method == \"GET\"\n}\n"
DENY = "package gate\n\ndefault allow = false\n"
BROKEN = "package gate\n\ndefault allow = false\n\nallow {\n    input.attributes.request.http.method ==\n}\n"


@dataclasses.dataclass
class Outcome:
    at: float
    status: int | None
    error: str = ""


class Load:
    """Sends GET requests in a loop from one thread until stopped (at most ``LOOP_LIMIT`` seconds)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reload-load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        deadline = time.monotonic() + LOOP_LIMIT
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                # A fresh connection each time (Connection: close): the kernel spreads them over both workers.
                status = requests.get(self.url, headers={"Connection": "close"}, timeout=5).status_code
                self.outcomes.append(Outcome(time.monotonic(), status))
            except requests.RequestException as e:
                self.outcomes.append(Outcome(time.monotonic(), None, type(e).__name__))

    def statuses_since(self, start: float) -> list[int | None]:
        return [o.status for o in list(self.outcomes) if o.at >= start]

    def wait_for(self, status: int, since: float, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if status in self.statuses_since(since):
                return time.monotonic()
            time.sleep(0.05)
        raise AssertionError(f"no {status} within {timeout}s; seen {self.statuses_since(since)[-20:]}")


def replace_file(path: pathlib.Path, text: str) -> None:
    """Write through a temporary file and rename: a poll never reads half a module."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@pytest.fixture
def gateway(tmp_path: pathlib.Path, httpbin: ServerProcess) -> t.Iterator[tuple[ServerProcess, pathlib.Path]]:
    config_dir = render_config(CONFIG, tmp_path / "conf", UPSTREAM_PORT=httpbin.port)
    rego_dir = tmp_path / "rego"
    rego_dir.mkdir()
    (rego_dir / "gate.rego").write_text(ALLOW)
    server = gateway_server(tmp_path, config_dir, rego_dir, workers=WORKERS, threads=4,
                            env={"GATEWAY_RELOAD_INTERVAL": str(RELOAD_INTERVAL), "GATEWAY_LOG_LEVEL": "info"})
    with server:
        yield server, rego_dir / "gate.rego"


def test_policy_flips_once_under_load_and_a_broken_policy_is_rejected_without_5xx(gateway):
    server, policy = gateway
    with Load(server.url + "/get") as load:
        load.wait_for(200, since=0.0)
        time.sleep(0.5)

        replace_file(policy, DENY)
        changed = time.monotonic()
        load.wait_for(403, since=changed)
        time.sleep(SWITCH_GRACE)

        replace_file(policy, BROKEN)
        broken_at = time.monotonic()
        time.sleep(1.0)

    outcomes = load.outcomes
    statuses = [o.status for o in outcomes]
    assert all(o.status is not None for o in outcomes), {o.error for o in outcomes if o.error}
    assert set(statuses) <= {200, 403}, f"unexpected statuses {sorted(set(statuses))}"
    last_allow = max(i for i, status in enumerate(statuses) if status == 200)
    first_deny = statuses.index(403)
    assert all(status == 403 for status in statuses[last_allow + 1:]), "an allow came back after the flip"
    assert all(status == 200 for status in statuses[:first_deny]), "a deny came before the policy changed"
    assert outcomes[last_allow].at - outcomes[first_deny].at < SWITCH_GRACE, "workers switched too far apart"
    assert outcomes[first_deny].at >= changed
    after_broken = [o.status for o in outcomes if o.at > broken_at]
    assert len(after_broken) >= 5 and set(after_broken) == {403}, "the last good (deny) policy must keep serving"

    log = server.log_text()
    rejections = re.findall(r"config reload rejected: RegoModule .*gate\.rego:\d+\).*REJECTED: .*gate\.rego:\d+:\d+: .+", log)
    assert len(rejections) == WORKERS, f"each worker rejects the broken module once:\n{server.log_tail()}"
    assert log.count("config generation 2 loaded") == WORKERS
    assert "config generation 3 loaded" not in log
