"""API products behind one host (issue 4, seed 002), end to end.

The Gloo Platform resources are ``conf/api-products.yaml`` as shipped, with the JWKS URL
pointed at the test OAuth server and an ``Upstream`` for httpbin; the Rego directory is the
repository's ``rego/`` itself, so the seed's module runs unmodified. JWT access tokens come
from the OAuth server's ``jwt-client`` with the scopes each test asks for.
"""

from __future__ import annotations

import typing as t

import pytest
import requests

from tests.support.servers import REPO_ROOT
from tests.support.servers import ServerProcess
from tests.support.servers import gateway_server
from tests.support.servers import render_config

from .conftest import token
from tests.factories import bearer

TIMEOUT = 10
HOST = {"Host": "api.example.com"}
SEED_JWKS_ADDRESS = "127.0.0.1:4444"

HTTPBIN_UPSTREAM = """\
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: httpbin, namespace: gloo-system}
spec:
  static:
    hosts: [{addr: 127.0.0.1, port: {UPSTREAM_PORT}}]
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, oauth: ServerProcess,
            httpbin: ServerProcess) -> t.Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("api-products-e2e")
    products = (REPO_ROOT / "conf" / "api-products.yaml").read_text()
    assert SEED_JWKS_ADDRESS in products
    render_config(products.replace(SEED_JWKS_ADDRESS, f"127.0.0.1:{oauth.port}"), root / "conf",
                  filename="api-products.yaml")
    render_config(HTTPBIN_UPSTREAM, root / "conf", filename="httpbin.yaml", UPSTREAM_PORT=httpbin.port)
    with gateway_server(root, root / "conf", REPO_ROOT / "rego", workers=2, name="gateway-products") as server:
        yield server



@pytest.fixture(scope="module")
def tokens(oauth: ServerProcess) -> dict[str, str]:
    """JWT access tokens by granted scope."""
    return {scope: token(oauth, "jwt-client", "jwt-secret", scope=scope or None)
            for scope in ("petstore tracks", "tracks", "")}


def call(http: requests.Session, gateway: ServerProcess, path: str, access_token: str | None = None,
         **headers: str) -> requests.Response:
    sent = {**HOST, **headers}
    if access_token is not None:
        sent.update(bearer(access_token))
    return http.get(gateway.url + path, headers=sent, timeout=TIMEOUT)


def test_token_with_both_product_scopes_reaches_both_products(gateway, http, tokens):
    petstore = call(http, gateway, "/petstore/pets", tokens["petstore tracks"])
    tracks = call(http, gateway, "/tracks/42", tokens["petstore tracks"])

    assert (petstore.status_code, tracks.status_code) == (200, 200)
    assert petstore.json()["url"].endswith("/anything/petstore/pets")
    assert tracks.json()["url"].endswith("/anything/tracks/42")


def test_token_with_the_tracks_scope_reaches_tracks_only(gateway, http, tokens):
    tracks = call(http, gateway, "/tracks/42", tokens["tracks"])
    petstore = call(http, gateway, "/petstore/pets", tokens["tracks"])

    assert tracks.status_code == 200
    assert petstore.status_code == 403
    assert petstore.json()["error"] == "policy_denied"


@pytest.mark.parametrize("path", ["/petstore/pets", "/tracks/42"])
def test_token_without_scopes_is_refused_by_the_policy(gateway, http, tokens, path):
    assert call(http, gateway, path, tokens[""]).status_code == 403


@pytest.mark.parametrize("path", ["/petstore/pets", "/tracks/42"])
def test_labelled_routes_need_a_token(gateway, http, path):
    response = call(http, gateway, path)
    assert response.status_code == 403
    assert response.json()["error"] == "token_missing"


def test_route_without_the_usage_plan_label_needs_no_token(gateway, http):
    response = call(http, gateway, "/tracks/status")
    assert response.status_code == 200


def test_sub_reaches_upstream_as_x_customer_and_a_client_copy_is_replaced(gateway, http, tokens):
    response = call(http, gateway, "/petstore/pets", tokens["petstore tracks"], **{"X-Customer": "evil"})

    assert response.status_code == 200
    headers = {name.lower(): value for name, value in response.json()["headers"].items()}
    assert headers["x-customer"] == "jwt-client"


def test_other_hosts_have_no_api_products(gateway, http, tokens):
    response = http.get(gateway.url + "/petstore/pets", headers={"Host": "other.example.com",
                                                                 **bearer(tokens['tracks'])},
                        timeout=TIMEOUT)
    assert response.status_code == 404


def test_gateway_log_never_contains_the_tokens(gateway, http, tokens):
    log = gateway.log_text()
    assert all(value.split(".")[2] not in log for value in tokens.values())
