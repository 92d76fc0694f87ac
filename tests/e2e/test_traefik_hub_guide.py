"""The Traefik Hub guide "OAuth 2.0 Token Introspection Authentication", replayed end to end.

The guide's ``Middleware`` and ``IngressRoute`` are pasted as written; only the Keycloak URL
points at the test OAuth server (which answers on Keycloak's paths) and the Kubernetes
Service ``whoami`` is an ``Upstream`` (httpbin, whose ``/anything`` echoes the request).
The ``clientConfig.headers`` and ``claims``/``forwardHeaders`` are the reference page's example,
also as written: its Basic credentials ``example:example`` are a client of the OAuth server.
"""

from __future__ import annotations

import typing as t

import pytest
import requests

from tests.support.servers import ServerProcess
from tests.support.servers import gateway_server
from tests.support.servers import render_config
from tests.factories import bearer

TIMEOUT = 10

# Kubernetes Service whoami -> Upstream whoami (the one change)
UPSTREAM = """\
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: whoami, namespace: apps}
spec:
  static:
    hosts: [{addr: 127.0.0.1, port: {UPSTREAM_PORT}}]
"""

MIDDLEWARE = """\
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata:
  name: oauth2-token-introspection%(suffix)s
  namespace: apps
spec:
  plugin:
    oAuthIntrospection:
      tokenSource:
%(source)s
      clientConfig:
        url: "http://127.0.0.1:{IDP_PORT}/realms/YOUR-REALM/protocol/openid-connect/token/introspect"
        headers:
          Authorization: Basic ZXhhbXBsZTpleGFtcGxl # echo -n "$CLIENT_ID:$CLIENT_SECRET" | base64
        tokenTypeHint: access_token
%(extra)s
"""

SOURCES = {
    "": "        header: Authorization\n        headerAuthScheme: Bearer",
    "-query": "        query: token",
    "-cookie": "        cookie: token",
    "-claims": "        header: Authorization\n        headerAuthScheme: Bearer",
}

CLAIMS = """\
      forwardHeaders:
        Group: grp
        Expires-At: exp
      claims: Equals(`grp`, `admin`)
      usernameClaim: sub"""

INGRESS_ROUTE = """\
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata:
  name: secure-applications-apigateway-oauth2-token-introspection%(suffix)s
  namespace: apps
spec:
  entryPoints:
    - web
  routes:
  - match: Host(`api.example.com`) && PathPrefix(`/anything/oauth2-token-introspection%(suffix)s`)
    kind: Rule
    services:
    - name: whoami
      port: 80
    middlewares:
    - name: oauth2-token-introspection%(suffix)s
"""

CONFIG = UPSTREAM + "".join(
    MIDDLEWARE % {"suffix": suffix, "source": source, "extra": CLAIMS if suffix == "-claims" else ""}
    + INGRESS_ROUTE % {"suffix": suffix} for suffix, source in SOURCES.items())

HOST = {"Host": "api.example.com"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, oauth: ServerProcess,
            httpbin: ServerProcess) -> t.Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("traefik-hub-e2e")
    render_config(CONFIG, root / "conf", IDP_PORT=oauth.port, UPSTREAM_PORT=httpbin.port)
    (root / "rego").mkdir()
    with gateway_server(root, root / "conf", root / "rego", workers=1, name="gateway-traefik") as server:
        yield server


@pytest.fixture(scope="module")
def clients(oauth: ServerProcess) -> None:
    """The reference page's introspection credentials and two applications, one in group admin."""
    with requests.Session() as session:
        session.trust_env = False
        for client in ({"client_id": "example", "client_secret": "example"},
                       {"client_id": "hub-admin", "client_secret": "s3cret", "claims": {"grp": "admin"}},
                       {"client_id": "hub-dev", "client_secret": "s3cret", "claims": {"grp": "dev"}}):
            assert session.post(oauth.url + "/admin/clients", json=client, timeout=TIMEOUT).ok


def keycloak_token(http: requests.Session, oauth: ServerProcess, client_id: str) -> str:
    """The guide's curl: client credentials posted to $KEYCLOAK_URL/protocol/openid-connect/token."""
    keycloak_url = f"{oauth.url}/realms/YOUR-REALM"
    response = http.post(f"{keycloak_url}/protocol/openid-connect/token", timeout=TIMEOUT,
                         data={"client_id": client_id, "client_secret": "s3cret", "grant_type": "client_credentials"})
    response.raise_for_status()
    return response.json()["access_token"]


@pytest.fixture
def admin_token(http, oauth, clients) -> str:
    return keycloak_token(http, oauth, "hub-admin")


def echoed_headers(response: requests.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.json()["headers"].items()}


def test_step_1_token_from_authorization_bearer_is_accepted_and_not_forwarded(gateway, http, admin_token):
    response = http.get(gateway.url + "/anything/oauth2-token-introspection", timeout=TIMEOUT,
                        headers={**HOST, **bearer(admin_token)})
    assert response.status_code == 200
    assert "authorization" not in echoed_headers(response)


def test_step_1_without_a_token_is_401(gateway, http, clients):
    response = http.get(gateway.url + "/anything/oauth2-token-introspection", headers=HOST, timeout=TIMEOUT)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_step_1_with_an_unknown_token_is_401(gateway, http, clients):
    response = http.get(gateway.url + "/anything/oauth2-token-introspection", timeout=TIMEOUT,
                        headers={**HOST, "Authorization": "Bearer not-a-token-the-idp-issued"})
    assert response.status_code == 401


def test_step_2_token_from_a_query_parameter_is_accepted_and_removed(gateway, http, admin_token):
    response = http.get(gateway.url + f"/anything/oauth2-token-introspection-query?token={admin_token}&page=2",
                        headers=HOST, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json()["args"] == {"page": "2"}
    assert admin_token not in response.text


def test_step_3_token_from_a_cookie_is_accepted_and_removed(gateway, http, admin_token):
    response = http.get(gateway.url + "/anything/oauth2-token-introspection-cookie", timeout=TIMEOUT,
                        headers={**HOST, "Cookie": f"theme=dark; token={admin_token}"})
    assert response.status_code == 200
    assert echoed_headers(response)["cookie"] == "theme=dark"


def test_step_4_claims_expression_admits_group_admin_and_forwards_claim_headers(gateway, http, admin_token):
    response = http.get(gateway.url + "/anything/oauth2-token-introspection-claims", timeout=TIMEOUT,
                        headers={**HOST, **bearer(admin_token), "Group": "forged"})
    assert response.status_code == 200
    headers = echoed_headers(response)
    assert headers["group"] == "admin"
    assert headers["expires-at"].isdigit()
    assert "authorization" not in headers
    record = "route=apps/secure-applications-apigateway-oauth2-token-introspection-claims/routes[0] status=200"
    assert record in gateway.log_text()
    assert "sub=hub-admin" in gateway.log_text()
    assert "auth_config=apps/oauth2-token-introspection-claims" in gateway.log_text()


def test_step_4_claims_expression_refuses_another_group_with_403(gateway, http, oauth, clients):
    dev_token = keycloak_token(http, oauth, "hub-dev")
    response = http.get(gateway.url + "/anything/oauth2-token-introspection-claims", timeout=TIMEOUT,
                        headers={**HOST, **bearer(dev_token)})
    assert response.status_code == 403
    assert response.json()["error"] == "claims_mismatch"


def test_the_tokens_never_reach_the_gateway_log(gateway, http, admin_token):
    http.get(gateway.url + f"/anything/oauth2-token-introspection-query?token={admin_token}", headers=HOST,
             timeout=TIMEOUT)
    assert admin_token not in gateway.log_text()
