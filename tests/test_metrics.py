"""Prometheus metrics, scraped from ``/__gateway/metrics`` after known sequences of requests.

The metrics are process-wide counters, so every test compares two scrapes (before and after)
and uses its own route names and IdP hosts.
"""

from __future__ import annotations

import os
import pathlib
import re
import runpy
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gateway_app.auth.jwks import FIRST_RETRY
from gateway_app.auth.jwks import JwksCache
from gateway_app.errors import IdentityProviderError
from gateway_app.metrics import IDP_ERROR_REASONS
from gateway_app.metrics import REGISTRY
from tests.conftest import REPO
from tests.keys import jwks
from tests.keys import public_jwk
from tests.keys import rsa_key
from tests.factories import upstream_yaml
from tests.factories import bearer

UPSTREAM = "http://upstream.test:8000"
GOOD = "ory_at_metricstoken123"

UPSTREAM_YAML = upstream_yaml("backend", "default")

VS_YAML = """
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: metrics, namespace: default}
spec:
  virtualHost:
    domains: ['api.example.com']
    routes:
    - name: %(route)s
      matchers: [{prefix: /}]
      routeAction:
        single:
          upstream: {name: backend, namespace: default}
      options:
        extauth:
          configRef: {name: %(auth)s, namespace: default}
"""

INTROSPECTION_YAML = """
apiVersion: v1
kind: Secret
metadata: {name: client-secret, namespace: default}
stringData: {client-secret: secret}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: introspect, namespace: default}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        introspection:
          introspectionUrl: http://%(idp)s/introspect
          clientId: my-client
          clientSecretRef: {name: client-secret, namespace: default}
          retries: 0
"""

POLICY_YAML = """
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: policy, namespace: default}
spec:
  configs:
  - opaAuth:
      modules: [{name: methods}]
      query: "data.methods.allow == true"
"""

METHODS_REGO = """
package methods

default allow = false

allow {
    input.attributes.request.http.method == "GET"
}
"""


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/__gateway/metrics``, keyed by (name, sorted labels)."""
    response = client.get("/__gateway/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def introspection_app(make_app, route: str, idp: str):
    return make_app({"upstream.yaml": UPSTREAM_YAML, "auth.yaml": INTROSPECTION_YAML % {"idp": idp},
                     "vs.yaml": VS_YAML % {"route": route, "auth": "introspect"}})


def idp_answers(requests_mock, idp: str):
    def answer(request, context):
        if f"token={GOOD}" in request.text:
            return {"active": True, "sub": "alice", "exp": int(time.time()) + 3600}
        return {"active": False}
    return requests_mock.post(f"http://{idp}/introspect", json=answer)


def test_requests_are_counted_by_route_status_and_auth_outcome(make_app, requests_mock):
    app = introspection_app(make_app, "counted", "idp-counted.test")
    idp_answers(requests_mock, "idp-counted.test")
    requests_mock.get(f"{UPSTREAM}/things", json={"ok": True})
    client = app.test_client()
    host = {"Host": "api.example.com"}
    before = scrape(client)

    assert client.get("/things", headers={**host, **bearer(GOOD)}).status_code == 200
    assert client.get("/things", headers={**host, **bearer(GOOD)}).status_code == 200
    assert client.get("/things", headers=host).status_code == 403
    assert client.get("/things", headers={**host, "Authorization": "Bearer inactive-token"}).status_code == 403
    assert client.get("/things", headers={"Host": "unknown.example.com"}).status_code == 404

    after = scrape(client)
    assert delta(before, after, "gateway_requests_total", route="counted", status="200", auth="allowed") == 2
    assert delta(before, after, "gateway_requests_total", route="counted", status="403", auth="denied") == 2
    assert delta(before, after, "gateway_requests_total", route="(none)", status="404", auth="none") == 1
    assert delta(before, after, "gateway_request_duration_seconds_count", route="counted") == 4
    assert delta(before, after, "gateway_upstream_duration_seconds_count", route="counted") == 2


def test_idp_calls_and_token_cache_hits_and_misses_are_counted(make_app, requests_mock):
    app = introspection_app(make_app, "cached", "idp-cache.test")
    idp = idp_answers(requests_mock, "idp-cache.test")
    requests_mock.get(f"{UPSTREAM}/things", json={"ok": True})
    client = app.test_client()
    before = scrape(client)

    for token in (GOOD, GOOD, GOOD, "inactive-token"):
        client.get("/things", headers={"Host": "api.example.com", **bearer(token)})

    after = scrape(client)
    assert idp.call_count == 2
    assert delta(before, after, "gateway_idp_requests_total", idp="idp-cache.test", kind="introspection") == 2
    assert delta(before, after, "gateway_idp_request_duration_seconds_count",
                 idp="idp-cache.test", kind="introspection") == 2
    assert delta(before, after, "gateway_token_cache_hits_total", idp="idp-cache.test") == 2
    assert delta(before, after, "gateway_token_cache_misses_total", idp="idp-cache.test") == 2


@pytest.mark.parametrize("answer, reason", [
    ({"status_code": 500, "text": "oops"}, "status_5xx"),
    ({"status_code": 401, "json": {"error": "invalid_client"}}, "status_4xx"),
    ({"exc": requests.exceptions.ConnectTimeout}, "timeout"),
    ({"exc": requests.exceptions.ConnectionError}, "connection"),
    ({"status_code": 200, "text": "<html>login</html>", "headers": {"Content-Type": "text/html"}}, "bad_answer"),
    ({"status_code": 200, "json": {"active": "true"}}, "bad_answer"),
], ids=["idp 500", "idp 401", "idp timeout", "idp refused", "idp html", "active as a string"])
def test_idp_errors_are_counted_by_reason_and_answer_503(make_app, requests_mock, answer, reason):
    app = introspection_app(make_app, "idp-errors", "idp-errors.test")
    requests_mock.post("http://idp-errors.test/introspect", **answer)
    client = app.test_client()
    before = scrape(client)

    response = client.get("/things", headers={"Host": "api.example.com", **bearer(GOOD)})

    after = scrape(client)
    assert response.status_code == 503
    assert delta(before, after, "gateway_idp_errors_total", idp="idp-errors.test", kind="introspection",
                 reason=reason) == 1
    assert delta(before, after, "gateway_requests_total", route="idp-errors", status="503", auth="error") == 1


def test_policy_evaluation_is_timed_per_route(make_app, requests_mock):
    app = make_app({"upstream.yaml": UPSTREAM_YAML, "auth.yaml": POLICY_YAML,
                    "vs.yaml": VS_YAML % {"route": "policed", "auth": "policy"}}, rego={"methods.rego": METHODS_REGO})
    requests_mock.get(f"{UPSTREAM}/things", json={"ok": True})
    client = app.test_client()
    before = scrape(client)

    assert client.get("/things", headers={"Host": "api.example.com"}).status_code == 200
    assert client.delete("/things", headers={"Host": "api.example.com"}).status_code == 403

    after = scrape(client)
    assert delta(before, after, "gateway_policy_evaluation_duration_seconds_count", route="policed") == 2
    assert delta(before, after, "gateway_policy_evaluation_duration_seconds_sum", route="policed") > 0
    assert delta(before, after, "gateway_requests_total", route="policed", status="403", auth="denied") == 1


def test_config_reloads_are_counted_accepted_and_rejected(make_app, tmp_path):
    app = make_app({"upstream.yaml": UPSTREAM_YAML, "auth.yaml": POLICY_YAML,
                    "vs.yaml": VS_YAML % {"route": "reloaded", "auth": "policy"}}, rego={"methods.rego": METHODS_REGO})
    gateway = app.extensions["gateway"]
    client = app.test_client()
    before = scrape(client)

    gateway.reload()
    (tmp_path / "rego" / "methods.rego").write_text("package methods\nallow {\n")
    gateway.reload()

    after = scrape(client)
    assert delta(before, after, "gateway_config_reloads_total", result="accepted") == 1
    assert delta(before, after, "gateway_config_reloads_total", result="rejected") == 1
    assert after[("gateway_config_generation", ())] == gateway.config.generation == 2


def test_jwks_refreshes_are_counted_ok_and_failed(requests_mock, make_app):
    app = introspection_app(make_app, "jwks-scrape", "idp-jwks-scrape.test")
    client = app.test_client()
    url = "http://jwks-metrics.test/jwks.json"
    requests_mock.get(url, [{"status_code": 500}, {"json": jwks(public_jwk(rsa_key(), kid="metrics"))}])
    now = [0.0]
    cache = JwksCache(url=url, clock=lambda: now[0], spawn=lambda target, name: None)
    before = scrape(client)

    with pytest.raises(IdentityProviderError):
        cache.current()
    now[0] += FIRST_RETRY
    cache.current()

    after = scrape(client)
    assert delta(before, after, "gateway_jwks_refreshes_total", idp="jwks-metrics.test", result="failed") == 1
    assert delta(before, after, "gateway_jwks_refreshes_total", idp="jwks-metrics.test", result="ok") == 1
    assert delta(before, after, "gateway_idp_requests_total", idp="jwks-metrics.test", kind="jwks") == 2
    assert delta(before, after, "gateway_idp_errors_total", idp="jwks-metrics.test", kind="jwks",
                 reason="jwks_fetch_failed") == 1


def test_metric_labels_hold_no_tokens_subjects_or_paths(make_app, requests_mock):
    app = introspection_app(make_app, "private", "idp-private.test")
    idp_answers(requests_mock, "idp-private.test")
    requests_mock.get(f"{UPSTREAM}/users/12345/secret-report", json={"ok": True})
    client = app.test_client()

    client.get("/users/12345/secret-report", headers={"Host": "api.example.com", **bearer(GOOD)})
    client.get("/users/12345/secret-report", headers={"Host": "api.example.com",
                                                      "Authorization": "Bearer another-token"})

    text = client.get("/__gateway/metrics").get_data(as_text=True)
    assert 'route="private"' in text
    # Names and labels only: a sample value (a float timestamp) may hold any digits.
    series = "\n".join(line.rpartition(" ")[0] for line in text.splitlines() if not line.startswith("#"))
    for private in (GOOD, "another-token", "alice", "12345", "secret-report", "/introspect"):
        assert private not in series


def test_metrics_endpoint_is_not_routed_upstream(make_app, requests_mock):
    app = make_app({"upstream.yaml": UPSTREAM_YAML, "auth.yaml": POLICY_YAML,
                    "vs.yaml": VS_YAML.replace("'api.example.com'", "'*'") % {"route": "catch-all", "auth": "policy"}},
                   rego={"methods.rego": METHODS_REGO})
    upstream = requests_mock.get(f"{UPSTREAM}/__gateway/metrics", text="upstream")
    response = app.test_client().get("/__gateway/metrics")
    assert response.status_code == 200
    assert "# TYPE gateway_requests_total counter" in response.get_data(as_text=True)
    assert upstream.call_count == 0


class _Log:
    def info(self, *args: object) -> None:
        pass


class _Server:
    log = _Log()


def test_gunicorn_hooks_create_clean_and_remove_their_own_metrics_directory(monkeypatch):
    hooks = runpy.run_path(str(REPO / "conf" / "gunicorn.conf.py"))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")   # empty means unset; monkeypatch restores both
    monkeypatch.setenv("GATEWAY_OWNED_METRICS_DIR", "")

    hooks["on_starting"](_Server())
    directory = pathlib.Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    (directory / "counter_999999.db").write_bytes(b"stale")
    hooks["on_starting"](_Server())
    assert directory.is_dir() and not list(directory.iterdir()), "a previous run's values are wiped"
    hooks["on_exit"](_Server())
    assert not directory.exists()


def test_gunicorn_hooks_keep_a_metrics_directory_the_operator_chose(monkeypatch, tmp_path):
    hooks = runpy.run_path(str(REPO / "conf" / "gunicorn.conf.py"))
    chosen = tmp_path / "metrics"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(chosen))
    monkeypatch.setenv("GATEWAY_OWNED_METRICS_DIR", "")

    hooks["on_starting"](_Server())
    hooks["on_exit"](_Server())

    assert chosen.is_dir()


def test_alerted_series_are_exported_at_zero_before_their_first_event(make_app):
    client = introspection_app(make_app, "zero-series", "idp-zero.test").test_client()

    samples = scrape(client)

    assert ("gateway_config_reloads_total", (("result", "rejected"),)) in samples
    assert ("gateway_config_reloads_total", (("result", "accepted"),)) in samples
    assert ("gateway_stale_if_error_served_total", ()) in samples
    for reason in IDP_ERROR_REASONS["introspection"]:
        key = ("gateway_idp_errors_total", (("idp", "idp-zero.test"), ("kind", "introspection"), ("reason", reason)))
        assert samples.get(key) == 0.0, reason


def _readme_metric_names() -> set[str]:
    """The first column of the README's metrics table (``a`` / ``b`` cells hold two names)."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Metrics", 1)[1].split("\n### ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `gateway_"):
            names.update(re.findall(r"`(gateway_[a-z_]+)`", line.split("|")[1]))
    return names


def _exported_metric_names() -> set[str]:
    """The names a scrape shows for every metric the gateway defines (counters end in ``_total``)."""
    return {family.name + "_total" if family.type == "counter" else family.name for family in REGISTRY.collect()}


def test_every_exported_metric_is_in_the_readme_table_and_every_row_is_exported():
    assert _readme_metric_names() == _exported_metric_names()
