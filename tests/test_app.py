"""The Hydra walkthrough and core decisions through the Flask test client (IdP and upstream mocked)."""

from __future__ import annotations

import json
import logging
import time

import pytest
import requests
from tests.factories import upstream_yaml
from tests.factories import bearer

IDP = "http://idp.test/admin/oauth2/introspect"
UPSTREAM = "http://upstream.test:8000"

UPSTREAM_YAML = upstream_yaml("httpbin", "gloo-system")

VS_OPEN = """
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{prefix: /}]
      routeAction:
        single:
          upstream: {name: httpbin, namespace: gloo-system}
"""

VS_SECURED = VS_OPEN + """
    options:
      extauth:
        configRef: {name: oidc-hydra, namespace: gloo-system}
      stagedTransformations:
        regular:
          requestTransforms:
          - requestTransformation:
              transformationTemplate:
                headers:
                  x-customer:
                    text: '{{ dynamic_metadata("config_0:sub", "envoy.filters.http.ext_authz")}}'
"""

AUTH_YAML = """
apiVersion: v1
kind: Secret
metadata: {name: client-secret, namespace: gloo-system}
stringData: {client-secret: secret}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: oidc-hydra, namespace: gloo-system}
spec:
%(extra)s
  configs:
  - oauth2:
      accessTokenValidation:
        introspection:
          introspectionUrl: http://idp.test/admin/oauth2/introspect
          clientId: my-client
          clientSecretRef: {name: client-secret, namespace: gloo-system}
          retries: 0
        dynamicMetadataFromClaims:
          sub: sub
"""

GOOD = "ory_at_goodtoken123"


def _secured(make_app, extra: str = ""):
    return make_app({"upstream.yaml": UPSTREAM_YAML, "vs.yaml": VS_SECURED, "auth.yaml": AUTH_YAML % {"extra": extra}})


def _idp(requests_mock, active_tokens=(GOOD,)):
    def answer(request, context):
        form = dict(pair.split("=", 1) for pair in request.text.split("&"))
        if form.get("token") in active_tokens:
            return {"active": True, "sub": "my-client", "client_id": "my-client", "exp": int(time.time()) + 3600}
        return {"active": False}
    return requests_mock.post(IDP, json=answer)


def _upstream(requests_mock):
    return requests_mock.get(f"{UPSTREAM}/headers", json={"ok": True},
                              headers={"X-Upstream": "yes", "Content-Type": "application/json"})


def test_open_route_is_forwarded_without_a_token(make_app, requests_mock):
    app = make_app({"upstream.yaml": UPSTREAM_YAML, "vs.yaml": VS_OPEN})
    upstream = _upstream(requests_mock)
    response = app.test_client().get("/headers")
    assert response.status_code == 200
    assert response.get_json() == {"ok": True}
    assert upstream.call_count == 1


def test_missing_token_is_rejected_with_403_and_no_upstream_call(make_app, requests_mock):
    app = _secured(make_app)
    idp, upstream = _idp(requests_mock), _upstream(requests_mock)
    response = app.test_client().get("/headers")
    assert response.status_code == 403
    assert response.get_json()["error"] == "token_missing"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert idp.call_count == 0 and upstream.call_count == 0


def test_invalid_token_is_rejected_with_403_invalid_token(make_app, requests_mock):
    app = _secured(make_app)
    _idp(requests_mock)
    upstream = _upstream(requests_mock)
    response = app.test_client().get("/headers", headers={"Authorization": "Bearer qwertyuio23456789"})
    assert response.status_code == 403
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert response.get_json()["error"] == "token_inactive"
    assert upstream.call_count == 0


def test_valid_token_is_forwarded_with_x_customer_from_sub(make_app, requests_mock):
    app = _secured(make_app)
    _idp(requests_mock)
    upstream = _upstream(requests_mock)
    response = app.test_client().get("/headers", headers={**bearer(GOOD), "X-Customer": "evil"})
    assert response.status_code == 200
    sent = upstream.last_request.headers
    assert sent["X-Customer"] == "my-client"
    assert sent["Authorization"] == f"Bearer {GOOD}"
    assert response.headers["X-Upstream"] == "yes"
    assert response.headers["X-Request-Id"] == sent["X-Request-Id"]


def test_forged_x_customer_is_stripped_when_the_claim_is_absent(make_app, requests_mock):
    app = _secured(make_app)
    requests_mock.post(IDP, json={"active": True, "exp": int(time.time()) + 60})
    upstream = _upstream(requests_mock)
    response = app.test_client().get("/headers", headers={**bearer(GOOD), "X-Customer": "evil"})
    assert response.status_code == 200
    assert "X-Customer" not in upstream.last_request.headers


def test_introspection_answer_is_cached_per_token(make_app, requests_mock):
    app = _secured(make_app)
    idp = _idp(requests_mock)
    _upstream(requests_mock)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/headers", headers=bearer(GOOD)).status_code == 200
    assert idp.call_count == 1


def test_rfc6750_option_answers_401_for_missing_and_invalid_tokens(make_app, requests_mock):
    app = _secured(make_app, extra="  authenticationFailureStatus: 401\n  realm: gateway")
    _idp(requests_mock)
    client = app.test_client()
    missing = client.get("/headers")
    invalid = client.get("/headers", headers={"Authorization": "Bearer nope"})
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert invalid.status_code == 401 and 'error="invalid_token"' in invalid.headers["WWW-Authenticate"]


@pytest.mark.parametrize("header", [
    "Bearer", "Bearer ", "Bearer  two  spaces", "Bearer a b", "bearer\ttab",
], ids=["scheme only", "empty token", "double spaces", "two tokens", "tab separator"])
def test_malformed_authorization_header_is_rejected_without_idp_call(make_app, requests_mock, header):
    app = _secured(make_app)
    idp = _idp(requests_mock)
    response = app.test_client().get("/headers", headers={"Authorization": header})
    assert response.status_code == 403
    assert idp.call_count == 0


def test_basic_credentials_count_as_no_token(make_app, requests_mock):
    app = _secured(make_app)
    idp = _idp(requests_mock)
    response = app.test_client().get("/headers", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert response.status_code == 403
    assert response.get_json()["error"] == "token_missing"
    assert idp.call_count == 0


def test_a_20kb_token_is_rejected_without_idp_call(make_app, requests_mock):
    app = _secured(make_app)
    idp = _idp(requests_mock)
    response = app.test_client().get("/headers", headers={"Authorization": "Bearer " + "a" * 20_000})
    assert response.status_code == 403
    assert response.get_json()["error"] == "token_malformed"
    assert idp.call_count == 0


@pytest.mark.parametrize("answer", [
    {"status_code": 500, "text": "oops"},
    {"status_code": 200, "text": "<html>login</html>", "headers": {"Content-Type": "text/html"}},
    {"status_code": 200, "json": {"active": "true"}},
    {"exc": requests.exceptions.ConnectTimeout},
    {"exc": requests.exceptions.ConnectionError},
], ids=["idp 500", "idp html", "active as a string", "idp timeout", "idp refused"])
def test_idp_failure_answers_503_and_does_not_forward(make_app, requests_mock, caplog, answer):
    app = _secured(make_app)
    requests_mock.post(IDP, **answer)
    upstream = _upstream(requests_mock)
    with caplog.at_level(logging.WARNING):
        response = app.test_client().get("/headers", headers=bearer(GOOD))
    assert response.status_code == 503
    assert response.get_json()["error"] == "idp_unavailable"
    assert upstream.call_count == 0
    assert GOOD not in caplog.text


def test_upstream_refusing_answers_502(make_app, requests_mock):
    app = make_app({"upstream.yaml": UPSTREAM_YAML, "vs.yaml": VS_OPEN})
    requests_mock.get(f"{UPSTREAM}/headers", exc=requests.exceptions.ConnectionError)
    response = app.test_client().get("/headers")
    assert response.status_code == 502
    assert response.get_json()["error"] == "upstream_unavailable"


def test_upstream_timeout_answers_504(make_app, requests_mock):
    app = make_app({"upstream.yaml": UPSTREAM_YAML, "vs.yaml": VS_OPEN})
    requests_mock.get(f"{UPSTREAM}/headers", exc=requests.exceptions.ReadTimeout)
    response = app.test_client().get("/headers")
    assert response.status_code == 504
    assert response.get_json()["error"] == "upstream_timeout"


def test_unmatched_host_answers_404(make_app, requests_mock):
    vs = VS_OPEN.replace("domains: ['*']", "domains: ['api.example.com']")
    app = make_app({"upstream.yaml": UPSTREAM_YAML, "vs.yaml": vs})
    assert app.test_client().get("/headers", headers={"Host": "other.example.com"}).status_code == 404
    _upstream(requests_mock)
    assert app.test_client().get("/headers", headers={"Host": "API.example.com:8080"}).status_code == 200


def test_tokens_never_appear_in_logs(make_app, requests_mock, caplog):
    app = _secured(make_app)
    _idp(requests_mock)
    _upstream(requests_mock)
    with caplog.at_level(logging.DEBUG, logger="gateway_app"):
        app.test_client().get("/headers", headers=bearer(GOOD))
        app.test_client().get("/headers", headers={"Authorization": "Bearer qwertyuio23456789"})
    assert GOOD not in caplog.text and "qwertyuio23456789" not in caplog.text
    assert "secret" not in caplog.text.replace("client-secret", "")


def test_access_log_has_one_line_per_request(make_app, requests_mock, access_records):
    app = _secured(make_app)
    _idp(requests_mock)
    _upstream(requests_mock)
    app.test_client().get("/headers", headers=bearer(GOOD))
    [line] = access_records
    fields = line.fields
    assert fields["status"] == 200 and fields["auth"] == "allowed" and fields["route"]
    assert fields["sub"] == "my-client" and fields["request_id"]


def test_a_request_auth_let_through_that_then_fails_is_logged_with_the_errors_reason(
        make_app, requests_mock, access_records):
    """Red team 12: an upload cut short after auth was logged ``reason=-``; every error has a stable reason."""
    app = _secured(make_app)
    _idp(requests_mock)
    requests_mock.get(f"{UPSTREAM}/headers", exc=requests.exceptions.ConnectTimeout)
    answer = app.test_client().get("/headers", headers=bearer(GOOD))
    [record] = access_records
    assert answer.status_code == 504 and record.fields["auth"] == "allowed"
    assert record.fields["reason"] == answer.get_json()["error"] == "upstream_timeout"


def test_health_endpoints_do_not_reach_routes(make_app, requests_mock):
    app = make_app({"upstream.yaml": UPSTREAM_YAML, "vs.yaml": VS_OPEN})
    client = app.test_client()
    assert client.get("/__gateway/health/live").get_json() == {"status": "ok"}
    ready = client.get("/__gateway/health/ready")
    assert ready.status_code == 200 and json.loads(ready.data)["status"] == "ready"


def test_a_refused_request_is_logged_with_the_path_as_sent_without_its_query(make_app, access_records):
    """The red team's ``/public/%00%1b[31mRED...`` : the record holds the sent target, never the decoded bytes."""
    app = make_app({"upstream.yaml": UPSTREAM_YAML, "vs.yaml": VS_OPEN})
    sent = "/public/%00%1b[31mRED%1b[0m%08%08%7f"
    answer = app.test_client().get(sent + "?access_token=" + GOOD,
                                   environ_overrides={"RAW_URI": sent + "?access_token=" + GOOD})
    assert answer.status_code == 400
    [record] = access_records
    assert record.fields["path"] == sent
