"""One redactor (issue 12 item 10): every location a token source reads is hidden in logged documents."""

from __future__ import annotations

import json
import logging

import pytest
import requests_mock as requests_mock_module

from factories import upstream_yaml
from gateway_app.observability import DEFAULT_CREDENTIAL_LOCATIONS
from gateway_app.observability import redact
from gateway_app.observability import redact_input
from keys import claims
from keys import jwks_json
from keys import make_jwt
from keys import public_jwk
from keys import rsa_key

KEY = rsa_key("redaction")
SECRET = "tok-SECRET-value-123456"


def test_redact_input_hides_query_parameters_custom_headers_and_cookies_everywhere():
    locations = DEFAULT_CREDENTIAL_LOCATIONS.including(headers=["X-Token"], query=["access"], cookies=["sess"])
    document = {
        "attributes": {"request": {"http": {
            "path": f"/p?access={SECRET}&page=2", "query": f"access={SECRET}&page=2",
            "headers": {"x-token": SECRET, "authorization": f"Bearer {SECRET}", "cookie": f"sess={SECRET}; a=b",
                        "accept": "*/*"}}}},
        "http_request": {"path": f"/p?page=2&access={SECRET}", "query": f"page=2&access={SECRET}"},
        "parsed_query": {"access": [SECRET], "page": ["2"]},
        "list": [{"headers": {"X-Token": SECRET}}],
    }
    redacted = redact_input(document, locations)
    assert SECRET not in json.dumps(redacted)
    http = redacted["attributes"]["request"]["http"]
    assert http["path"] == f"/p?access={redact(SECRET)}&page=2"
    assert http["headers"]["authorization"] == f"Bearer {redact(SECRET)}"
    assert http["headers"]["accept"] == "*/*" and redacted["parsed_query"]["page"] == ["2"]
    assert SECRET in json.dumps(document)                                  # the original is untouched


def test_the_rfc_6750_query_parameter_is_redacted_by_default():
    assert redact_input({"query": f"access_token={SECRET}"}) == {"query": f"access_token={redact(SECRET)}"}


def test_a_percent_encoded_parameter_name_is_recognised():
    locations = DEFAULT_CREDENTIAL_LOCATIONS.including(query=["access"])
    assert SECRET not in redact_input({"query": f"acc%65ss={SECRET}"}, locations)["query"]


AUTH_YAML = """
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: guard, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        jwt: {localJwks: {inlineString: '%s'}}
        tokenSource: {query: access, header: X-Token, cookie: sess}
  - opaAuth:
      modules: [{name: open}]
      query: data.open.allow
"""
VS_YAML = """
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: api, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - name: debugged
      matchers: [{prefix: /}]
      routeAction: {single: {upstream: {name: api, namespace: gloo-system}}}
      options: {extauth: {configRef: {name: guard, namespace: gloo-system}}}
"""
OPEN_POLICY = "package open\n\nimport rego.v1\n\nallow if input.attributes.request.http.method == \"GET\"\n"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("where", ["query", "header", "cookie"])
def test_the_debug_route_log_never_holds_the_token_its_source_read(make_app, requests_mock, where):
    """The issue's example: GATEWAY_DEBUG_ROUTE on a route with tokenSource.query logged the full token."""
    requests_mock.register_uri(requests_mock_module.ANY, requests_mock_module.ANY, text="upstream")
    app = make_app({"upstream.yaml": upstream_yaml("api", "gloo-system"), "vs.yaml": VS_YAML,
                    "auth.yaml": AUTH_YAML % jwks_json(public_jwk(KEY, kid="main"))},
                   rego={"open.rego": OPEN_POLICY}, debug_route="debugged")
    token = make_jwt(claims(iss=None, aud=None), KEY)
    client = app.test_client()
    if where == "cookie":
        client.set_cookie("sess", token)
    query = f"access={token}&page=2" if where == "query" else "page=2"
    headers = {"X-Token": token} if where == "header" else {}
    handler = _Lines()
    logger = logging.getLogger("gateway_app")
    logger.addHandler(handler)
    try:
        response = client.get(f"/pets?{query}", headers=headers)
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 200
    debug = [line for line in handler.lines if line.startswith("debug route")]
    assert len(debug) == 1
    assert all(token not in line and token[:40] not in line for line in handler.lines)
    assert json.dumps(redact(token))[1:-1] in debug[0] or where == "cookie"      # a cookie header is hidden whole
