"""Reload and readiness through real gunicorn: changes written during a worker's boot, a JWKS
endpoint that is down at start and comes back, reloads followed by a clean stop.
"""

from __future__ import annotations

import os
import pathlib
import signal
import threading
import time
import typing as t

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.keys import public_jwk
from tests.keys import rsa_key
from tests.support.jwks_server import JwksServer
from tests.support.servers import ServerProcess
from tests.support.servers import gateway_server
from tests.support.servers import render_config
from tests.e2e.test_reload_under_load import CONFIG as RELOADED_CONFIG

ROUTES = """\
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: httpbin, namespace: gloo-system}
spec:
  static:
    hosts: [{addr: 127.0.0.1, port: {UPSTREAM_PORT}}]
---
apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {name: petstore-rt, namespace: gloo-mesh-gateways}
spec:
  hosts: ['*']
  portalMetadata: {apiProductId: petstore}
  http:
  - name: pets-api
    labels: {LABELS}
    matchers: [{uri: {prefix: /petstore}}]
    forwardTo:
      pathRewrite: /anything/petstore
      destinations: [{ref: {name: httpbin, namespace: gloo-system}, kind: UPSTREAM}]
  - name: jwks-api
    labels: {auth: jwks}
    matchers: [{uri: {prefix: /tracks}}]
    forwardTo:
      pathRewrite: /anything/tracks
      destinations: [{ref: {name: httpbin, namespace: gloo-system}, kind: UPSTREAM}]
---
apiVersion: security.policy.gloo.solo.io/v2
kind: ExtAuthPolicy
metadata: {name: oauth-okta, namespace: gloo-system}
spec:
  applyToRoutes:
  - route:
      labels: {auth: jwks}
  - route:
      labels: {usagePlans: dev-portal}
  config:
    glooAuth:
      configs:
      - oauth2:
          accessTokenValidation:
            jwt:
              remoteJwks:
                url: {JWKS_URL}
                refreshInterval: {REFRESH}
---
apiVersion: gateway-app/v1
kind: UsagePlan
metadata: {name: dev-portal, namespace: gloo-mesh-gateways}
spec:
  rateLimit: {requestsPerUnit: 100000, unit: SECOND}
"""
OPEN = "{}"
PROTECTED = "{usagePlans: dev-portal}"


def _config(tmp_path: pathlib.Path, upstream: ServerProcess, jwks: JwksServer, labels: str,
            refresh: str = "5m") -> pathlib.Path:
    (tmp_path / "rego").mkdir(exist_ok=True)
    return render_config(ROUTES, tmp_path / "conf", filename="routes.yaml", UPSTREAM_PORT=upstream.port,
                         JWKS_URL=jwks.url, LABELS=labels, REFRESH=refresh)


def _jwks() -> dict[str, t.Any]:
    return {"keys": [public_jwk(rsa_key(), kid="ops-1", alg="RS256")]}


def _fresh(http: requests.Session, url: str) -> int:
    """A request on a new connection, so that the kernel spreads them over the workers.

    Connection errors and timeouts are retried: with ``reuse_port`` a worker that exits
    (``max_requests``) resets the connections still queued on its own listening socket, and
    while every worker is being replaced (a 3 s JWKS wait at boot) nothing accepts.
    """
    for _ in range(50):
        try:
            return http.get(url, headers={"Connection": "close"}, timeout=30).status_code
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.1)
    return http.get(url, headers={"Connection": "close"}, timeout=30).status_code


def _wait(condition: t.Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_label_written_while_workers_wait_for_the_jwks_protects_the_route_on_every_worker(
        tmp_path, httpbin, http):
    """Issue 13 item 1: the file-change snapshot is taken before the first config load."""
    with JwksServer(_jwks(), delay=3.0) as idp:
        conf = _config(tmp_path, httpbin, idp, OPEN)
        gateway = gateway_server(tmp_path, conf, tmp_path / "rego", workers=2,
                                 env={"GATEWAY_RELOAD_INTERVAL": "0.2"})
        booting = threading.Thread(target=gateway.start)
        booting.start()
        try:
            # Both workers are inside their first load, waiting for the slow JWKS.
            assert _wait(lambda: idp.fetches >= 2, timeout=30), "the workers never fetched the JWKS"
            _config(tmp_path, httpbin, idp, PROTECTED)
            booting.join()
            assert gateway.running()
            url = f"{gateway.url}/petstore/pets"
            # Each worker polls on its own: once both reloaded, no request is let through.
            assert _wait(lambda: all(_fresh(http, url) in (401, 403) for _ in range(20)), timeout=15)
            statuses = [_fresh(http, url) for _ in range(30)]
            assert set(statuses) <= {401, 403}, statuses
        finally:
            booting.join()
            gateway.stop()


def test_a_pod_started_during_a_jwks_outage_becomes_ready_by_itself_when_the_idp_is_back(tmp_path, httpbin, http):
    """Issue 13 item 2: background retry, no traffic needed; /ready says what it waits for."""
    with JwksServer(_jwks(), mode="down") as idp:
        conf = _config(tmp_path, httpbin, idp, PROTECTED, refresh="5s")
        with gateway_server(tmp_path, conf, tmp_path / "rego", workers=2) as gateway:
            ready_url = f"{gateway.url}/__gateway/health/ready"
            answer = http.get(ready_url, headers={"Connection": "close"}, timeout=10)
            assert answer.status_code == 503
            assert answer.json()["waiting_for"] == [
                "jwks: gloo-system/oauth-okta not fetched: JWKS fetch answered HTTP 503"]
            assert str(idp.port) not in answer.text and "127.0.0.1" not in answer.text
            # Issue 13 item 13: the series alerts watch exist from the first scrape (all workers).
            scraped = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                       for family in text_string_to_metric_families(
                           http.get(f"{gateway.url}/__gateway/metrics", timeout=10).text)
                       for sample in family.samples}
            assert scraped[("gateway_config_reloads_total", (("result", "rejected"),))] == 0
            assert scraped[("gateway_stale_if_error_served_total", ())] == 0
            assert scraped[("gateway_idp_errors_total", (("idp", "127.0.0.1:%d" % idp.port), ("kind", "jwks"),
                                                         ("reason", "jwks_fetch_failed")))] >= 1
            # Retries go on in the background (1 s, 2 s, 4 s, then every refreshInterval = 5 s).
            fetched = idp.fetches
            assert _wait(lambda: idp.fetches >= fetched + 2, timeout=15)

            idp.mode = "ok"                   # no request reaches a route meanwhile
            assert _wait(lambda: all(_fresh(http, ready_url) == 200 for _ in range(10)), timeout=15)
            assert _fresh(http, f"{gateway.url}/petstore/pets") in (401, 403)

POLICY_ROUTES = RELOADED_CONFIG     # one upstream, one route gated by the reloaded policy
ALLOW = 'package gate\n\ndefault allow = false\n\nallow {\n    input.attributes.request.http.method == "GET"\n}\n'
DENY = "package gate\n\ndefault allow = false\n"


def _worker_pids(master_pid: int) -> list[int]:
    children = pathlib.Path(f"/proc/{master_pid}/task/{master_pid}/children")
    return [int(pid) for pid in children.read_text().split()]


@pytest.mark.parametrize("reload_by", ["sighup", "file_change"])
def test_stopping_workers_after_reloads_drops_every_engine_on_its_own_thread(tmp_path, httpbin, http, reload_by):
    """Issue 13 item 3: no "Engine is unsendable, but is being dropped on another thread"."""
    conf = render_config(POLICY_ROUTES, tmp_path / "conf", UPSTREAM_PORT=httpbin.port)
    rego = tmp_path / "rego"
    rego.mkdir()
    (rego / "gate.rego").write_text(ALLOW)
    gateway = gateway_server(tmp_path, conf, rego, workers=2, env={"GATEWAY_RELOAD_INTERVAL": "0.2"})
    with gateway:
        url = f"{gateway.url}/anything/x"
        assert {_fresh(http, url) for _ in range(10)} == {200}
        for round_, policy in enumerate([DENY, ALLOW, DENY, ALLOW], start=2):
            if reload_by == "sighup":
                for pid in _worker_pids(gateway.process.pid):
                    os.kill(pid, signal.SIGHUP)
            else:                                         # atomically: a poll never reads half a module
                (rego / "gate.tmp").write_text(policy)
                os.replace(rego / "gate.tmp", rego / "gate.rego")
            expected = 200 if policy == ALLOW else 403
            assert _wait(lambda: gateway.log_text().count(f"config generation {round_} loaded") >= 2, timeout=20)
            statuses = [_fresh(http, url) for _ in range(10)]   # every pool thread may build an engine
            if reload_by == "file_change":
                assert set(statuses) == {expected}, statuses
    assert gateway.process.returncode == 0
    log = gateway.log_text()
    assert "Worker exiting" in log
    assert "unsendable" not in log and "panicked" not in log, log[-3000:]
