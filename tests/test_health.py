"""``/__gateway/health/ready``: what readiness waits for, said without URLs."""

from __future__ import annotations

from tests.factories import upstream_yaml

JWKS_URL = "http://jwks-ready.test/.well-known/jwks.json"
CONFIG = {
    "upstream.yaml": upstream_yaml("backend", "default"),
    "auth.yaml": """
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: oauth-okta, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        jwt:
          remoteJwks: {url: %s, refreshInterval: 5s}
""" % JWKS_URL,
    "vs.yaml": """
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: api, namespace: default}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{prefix: /}]
      routeAction: {single: {upstream: {name: backend, namespace: default}}}
      options: {extauth: {configRef: {name: oauth-okta, namespace: gloo-system}}}
""",
}


def test_ready_says_which_jwks_it_waits_for_and_why_without_urls(make_app, requests_mock):
    requests_mock.get(JWKS_URL, status_code=503)
    client = make_app(CONFIG).test_client()

    ready = client.get("/__gateway/health/ready")

    assert ready.status_code == 503
    body = ready.get_json()
    assert body["status"] == "not ready"
    assert body["waiting_for"] == ["jwks: gloo-system/oauth-okta not fetched: JWKS fetch answered HTTP 503"]
    assert "jwks-ready.test" not in ready.get_data(as_text=True)

