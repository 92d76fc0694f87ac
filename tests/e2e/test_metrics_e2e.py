"""Metrics in multi-process mode: gunicorn with 2 workers, real httpbin, one scrape sees both workers."""

from __future__ import annotations

import pathlib
import re
import typing as t

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import ServerProcess
from tests.support.servers import gateway_server
from tests.support.servers import render_config

WORKERS = 2
ALLOWED = 12
DENIED = 7

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
metadata: {name: get-only, namespace: default}
spec:
  configs:
  - opaAuth:
      modules: [{name: get_only}]
      query: "data.get_only.allow == true"
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: scraped, namespace: default}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - name: scraped
      matchers: [{prefix: /anything}]
      routeAction:
        single:
          upstream: {name: httpbin, namespace: default}
      options:
        extauth:
          configRef: {name: get-only, namespace: default}
"""

GET_ONLY = "package get_only\n\ndefault allow = false\n\nallow {\n    input.attributes.request.http.method == \"GET\"\n}\n"


@pytest.fixture
def gateway(tmp_path: pathlib.Path, httpbin: ServerProcess) -> t.Iterator[ServerProcess]:
    config_dir = render_config(CONFIG, tmp_path / "conf", UPSTREAM_PORT=httpbin.port)
    rego_dir = tmp_path / "rego"
    rego_dir.mkdir()
    (rego_dir / "get_only.rego").write_text(GET_ONLY)
    server = gateway_server(tmp_path, config_dir, rego_dir, workers=WORKERS, env={"GATEWAY_LOG_LEVEL": "info"})
    with server:
        yield server


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def fresh_connection(method: str, url: str) -> int:
    return requests.request(method, url, headers={"Connection": "close"}, timeout=10).status_code


def test_a_scrape_aggregates_the_counts_of_every_worker(gateway):
    for _ in range(ALLOWED):
        assert fresh_connection("GET", gateway.url + "/anything/x") == 200
    for _ in range(DENIED):
        assert fresh_connection("POST", gateway.url + "/anything/x") == 403
    assert fresh_connection("GET", gateway.url + "/elsewhere") == 404

    scrapes = [requests.get(gateway.url + "/__gateway/metrics", headers={"Connection": "close"}, timeout=10)
               for _ in range(4)]

    for scrape in scrapes:
        assert scrape.status_code == 200
        found = samples(scrape.text)
        assert found[("gateway_requests_total", (("auth", "allowed"), ("route", "scraped"), ("status", "200")))] \
            == ALLOWED
        assert found[("gateway_requests_total", (("auth", "denied"), ("route", "scraped"), ("status", "403")))] \
            == DENIED
        assert found[("gateway_requests_total", (("auth", "none"), ("route", "(none)"), ("status", "404")))] == 1
        assert found[("gateway_upstream_duration_seconds_count", (("route", "scraped"),))] == ALLOWED
        assert found[("gateway_policy_evaluation_duration_seconds_count", (("route", "scraped"),))] \
            == ALLOWED + DENIED
        workers = {labels for name, labels in found if name == "gateway_config_generation"}
        assert len(workers) == WORKERS, f"one generation gauge per live worker, got {workers}"


def test_the_metrics_directory_the_master_created_is_removed_at_exit(tmp_path, httpbin):
    config_dir = render_config(CONFIG, tmp_path / "conf", UPSTREAM_PORT=httpbin.port)
    rego_dir = tmp_path / "rego"
    rego_dir.mkdir()
    (rego_dir / "get_only.rego").write_text(GET_ONLY)
    server = gateway_server(tmp_path, config_dir, rego_dir, workers=1, name="gateway-metrics-dir")
    with server:
        assert fresh_connection("GET", server.url + "/anything/y") == 200
        match = re.search(r"Prometheus multi-process metrics in (\S+)", server.log_text())
        assert match, server.log_tail()
        directory = pathlib.Path(match.group(1))
        assert list(directory.glob("*.db")), "workers write their values here"
    assert not directory.exists()
