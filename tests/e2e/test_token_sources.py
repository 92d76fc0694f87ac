"""Token sources end to end (issue 5): header with scheme, query parameter, cookie, custom header,
through gunicorn with introspection at the test OAuth server and httpbin's ``/anything`` echo.
One gateway serves the whole module; each route reads its token from another place.
"""

from __future__ import annotations

import typing as t

import pytest
import requests

from tests.support.servers import ServerProcess
from tests.support.servers import gateway_server
from tests.support.servers import render_config

from .conftest import token
from tests.factories import bearer

TIMEOUT = 10

COMMON = """\
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: httpbin, namespace: gloo-system}
spec:
  static:
    hosts: [{addr: 127.0.0.1, port: {UPSTREAM_PORT}}]
---
apiVersion: v1
kind: Secret
metadata: {name: client-secret, namespace: gloo-system}
stringData: {client-secret: secret}
"""

AUTH_CONFIG = """\
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: %(name)s, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        introspection:
          introspectionUrl: http://127.0.0.1:{IDP_PORT}/admin/oauth2/introspect
          clientId: my-client
          clientSecretRef: {name: client-secret, namespace: gloo-system}
        tokenSource: %(source)s
        claimsToHeaders: [{claim: sub, header: x-customer}]
"""

SOURCES = {
    "header": "{header: Authorization, headerAuthScheme: Bearer}",
    "query": "{query: access_token, removeFromRequest: true}",
    "cookie": "{cookie: session, removeFromRequest: true}",
    "custom": "{header: X-Api-Token}",
    "multi": "{header: Authorization, headerAuthScheme: Bearer, query: access_token, order: [query, header]}",
}

ROUTE = """\
    - matchers: [{prefix: /%(name)s}]
      routeAction: {single: {upstream: {name: httpbin, namespace: gloo-system}}}
      options:
        prefixRewrite: /anything/%(name)s
        extauth: {configRef: {name: %(name)s, namespace: gloo-system}}
"""

VIRTUAL_SERVICE = """\
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: sources, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
"""

CONFIG = (COMMON + "".join(AUTH_CONFIG % {"name": n, "source": s} for n, s in SOURCES.items())
          + VIRTUAL_SERVICE + "".join(ROUTE % {"name": n} for n in SOURCES))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, oauth: ServerProcess,
            httpbin: ServerProcess) -> t.Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("token-sources-e2e")
    render_config(CONFIG, root / "conf", IDP_PORT=oauth.port, UPSTREAM_PORT=httpbin.port)
    (root / "rego").mkdir()
    with gateway_server(root, root / "conf", root / "rego", workers=1, name="gateway-sources") as server:
        yield server



@pytest.fixture
def access_token(oauth: ServerProcess) -> str:
    return token(oauth, "my-client", "secret")


def echo(response: requests.Response) -> tuple[dict[str, str], dict[str, t.Any]]:
    """httpbin's /anything answer: (headers lower-cased, query args)."""
    body = response.json()
    return {k.lower(): v for k, v in body["headers"].items()}, body["args"]


def introspection_calls(http: requests.Session, oauth: ServerProcess) -> int:
    return http.get(oauth.url + "/admin/stats", timeout=TIMEOUT).json()["introspection_calls"]


def test_header_with_bearer_scheme_is_read_case_insensitively_and_forwarded(gateway, http, access_token):
    response = http.get(gateway.url + "/header/pets", headers={"Authorization": f"bearer {access_token}"},
                        timeout=TIMEOUT)

    assert response.status_code == 200
    headers, _ = echo(response)
    assert headers["x-customer"] == "my-client"
    assert headers["authorization"] == f"bearer {access_token}"


def test_header_source_ignores_a_query_token(gateway, http, access_token):
    response = http.get(gateway.url + "/header/pets", params={"access_token": access_token}, timeout=TIMEOUT)
    assert response.status_code == 403


def test_query_token_is_accepted_and_removed_before_forwarding_other_params_kept(gateway, http, access_token):
    response = http.get(gateway.url + "/query/pets?page=2&access_token=" + access_token + "&tag=a&tag=b",
                        timeout=TIMEOUT)

    assert response.status_code == 200
    headers, args = echo(response)
    assert args == {"page": "2", "tag": ["a", "b"]}
    assert headers["x-customer"] == "my-client"
    assert access_token not in response.text


def test_cookie_token_is_accepted_and_removed_other_cookies_kept(gateway, http, access_token):
    response = http.get(gateway.url + "/cookie/pets",
                        headers={"Cookie": f"theme=dark; session={access_token}; lang=fr"}, timeout=TIMEOUT)

    assert response.status_code == 200
    headers, _ = echo(response)
    assert headers["cookie"] == "theme=dark; lang=fr"
    assert headers["x-customer"] == "my-client"


def test_cookie_token_alone_leaves_no_cookie_header_upstream(gateway, http, access_token):
    response = http.get(gateway.url + "/cookie/pets", headers={"Cookie": f"session={access_token}"},
                        timeout=TIMEOUT)

    assert response.status_code == 200
    assert "cookie" not in echo(response)[0]


def test_custom_header_without_scheme_carries_the_bare_token(gateway, http, access_token):
    accepted = http.get(gateway.url + "/custom/pets", headers={"X-Api-Token": access_token}, timeout=TIMEOUT)
    with_scheme = http.get(gateway.url + "/custom/pets", headers={"X-Api-Token": f"Bearer {access_token}"},
                           timeout=TIMEOUT)
    bearer_only = http.get(gateway.url + "/custom/pets", headers=bearer(access_token),
                           timeout=TIMEOUT)

    assert accepted.status_code == 200
    assert echo(accepted)[0]["x-customer"] == "my-client"
    assert with_scheme.status_code == 403
    assert bearer_only.status_code == 403


def test_two_different_tokens_in_one_request_are_refused_without_asking_the_idp(gateway, http, oauth,
                                                                               access_token):
    other_token = token(oauth, "my-client", "secret")
    calls_before = introspection_calls(http, oauth)

    response = http.get(gateway.url + "/multi/pets", params={"access_token": other_token},
                        headers=bearer(access_token), timeout=TIMEOUT)

    assert response.status_code == 403
    assert response.json()["error"] == "token_ambiguous"
    assert introspection_calls(http, oauth) == calls_before


def test_the_same_token_in_header_and_query_is_accepted(gateway, http, access_token):
    response = http.get(gateway.url + "/multi/pets", params={"access_token": access_token},
                        headers=bearer(access_token), timeout=TIMEOUT)

    assert response.status_code == 200
    assert echo(response)[0]["x-customer"] == "my-client"


def test_gateway_log_never_contains_the_tokens(gateway, http, access_token):
    http.get(gateway.url + f"/query/pets?access_token={access_token}", timeout=TIMEOUT)
    http.get(gateway.url + "/cookie/pets", headers={"Cookie": f"session={access_token}"}, timeout=TIMEOUT)
    assert access_token not in gateway.log_text()
