"""gateway-app explain: one request through the real stages, printed stage by stage, nothing forwarded."""

from __future__ import annotations

import json
import time

import pytest

from gateway_app.cli import main
from tests.factories import write_tree
from tests.test_app import AUTH_YAML
from tests.test_app import GOOD
from tests.test_app import IDP
from tests.test_app import UPSTREAM_YAML
from tests.test_app import VS_SECURED

UPSTREAM = "http://upstream.test:8000"

ADMIN_ROUTE = """
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: admin, namespace: gloo-system}
spec:
  virtualHost:
    domains: [admin.example.com]
    routes:
    - matchers: [{prefix: /admin, methods: [POST]}]
      routeAction: {single: {upstream: {name: httpbin, namespace: gloo-system}}}
"""

POLICY_AUTH = AUTH_YAML % {"extra": ""} + """\
  - opaAuth:
      modules: [{name: methods}]
      query: data.methods.allow
"""

METHODS_REGO = """package methods

import rego.v1

default allow := false

allow if input.http_request.method == "GET"
"""


@pytest.fixture
def conf(tmp_path):
    write_tree(tmp_path / "conf", {"upstream.yaml": UPSTREAM_YAML, "vs.yaml": VS_SECURED.replace(
        "    - matchers: [{prefix: /}]", "    - matchers: [{prefix: /status, methods: [POST]}]\n"
                                        "      routeAction: {single: {upstream: {name: httpbin, namespace: "
                                        "gloo-system}}}\n    - matchers: [{prefix: /}]"),
        "admin.yaml": ADMIN_ROUTE, "auth.yaml": POLICY_AUTH})
    write_tree(tmp_path / "rego", {"methods.rego": METHODS_REGO})
    return tmp_path


@pytest.fixture
def idp(requests_mock):
    def answer(request, context):
        form = dict(pair.split("=", 1) for pair in request.text.split("&"))
        if form.get("token") == GOOD:
            return {"active": True, "sub": "my-client", "scope": "read", "exp": int(time.time()) + 3600}
        return {"active": False}
    return requests_mock.post(IDP, json=answer)


def _explain(capsys, conf, *argv: str) -> tuple[int, dict]:
    status = main(["explain", "--config-dir", str(conf / "conf"), "--rego-dir", str(conf / "rego"), "--json", *argv])
    return status, json.loads(capsys.readouterr().out)


def _stage(report: dict, name: str) -> dict:
    return next(stage for stage in report["stages"] if stage["stage"] == name)


def test_explain_shows_each_stage_of_an_allowed_request_without_forwarding(capsys, conf, idp, requests_mock):
    upstream = requests_mock.get(f"{UPSTREAM}/status/200", json={})
    status, report = _explain(capsys, conf, "GET", "http://localhost:8080/status/200",
                              "-H", f"Authorization: Bearer {GOOD}", "-H", "X-Customer: forged")

    assert status == 0
    route = _stage(report, "route")
    assert route["matched"].endswith("routes[1]")
    assert route["not_matched"][0]["why"] == "method GET not in POST"
    assert _stage(report, "token")["found"][0]["location"] == ["header", "authorization"]
    validation = _stage(report, "validation")
    assert validation["introspection_claims"]["sub"] == "my-client"
    assert validation["idp_calls"] == 1 and validation["cache_misses"] == 1
    policy = _stage(report, "policy")
    assert policy["query"] == "data.methods.allow"
    assert policy["input"]["http_request"]["method"] == "GET"
    decision = _stage(report, "decision")
    assert decision["allowed"] is True
    forwarding = _stage(report, "upstream")
    assert forwarding["url"] == f"{UPSTREAM}/status/200"
    assert forwarding["headers_set"] == {"x-customer": "my-client"}
    assert "x-customer" in forwarding["headers_removed"]
    assert forwarding["headers_sent"]["x-customer"] == "my-client"
    assert report["result"] == {"forwarded": True, "status": None, "reason": None}
    assert upstream.call_count == 0                      # nothing was forwarded
    assert idp.call_count == 1                           # the real IdP call


def test_explain_says_why_a_request_is_denied_by_the_policy(capsys, conf, idp):
    status, report = _explain(capsys, conf, "DELETE", "http://localhost:8080/pets/1",
                              "-H", f"Authorization: Bearer {GOOD}")

    assert status == 1
    decision = _stage(report, "decision")
    assert decision["allowed"] is False and decision["status"] == 403
    assert decision["reason"] == "policy_denied"
    assert report["result"]["status"] == 403
    assert not any(stage["stage"] == "upstream" for stage in report["stages"])


def test_explain_names_the_route_that_did_not_match_and_answers_404(capsys, conf):
    status, report = _explain(capsys, conf, "GET", "http://admin.example.com/admin/users")

    assert status == 1
    route = _stage(report, "route")
    assert route["matched"] is None
    assert route["not_matched"] == [{"route": route["not_matched"][0]["route"], "why": "method GET not in POST"}]
    assert report["result"]["status"] == 404


def test_explain_never_prints_the_token_or_credential_headers(capsys, conf, idp):
    main(["explain", "--config-dir", str(conf / "conf"), "--rego-dir", str(conf / "rego"),
          "http://localhost:8080/status/200", "-H", f"Authorization: Bearer {GOOD}",
          "-H", f"Cookie: session={GOOD}"])
    text = capsys.readouterr().out

    assert GOOD not in text
    assert "== route" in text and "== decision" in text and "== upstream" in text
    assert "forwarded to the upstream" in text


def test_explain_with_a_broken_config_lists_the_rejections(capsys, conf):
    (conf / "conf" / "bad.yaml").write_text("kind: Upstream\nmetadata: {name: u}\nspec: {statik: {}}\n")
    status = main(["explain", "--config-dir", str(conf / "conf"), "--rego-dir", str(conf / "rego"),
                   "http://localhost:8080/"])
    assert status == 2
    assert "unknown field statik (did you mean static?)" in capsys.readouterr().out
