"""The Hydra walkthrough (seed 000), replayed against real processes.

gunicorn serves ``wsgi:app``; httpbin and the test OAuth server run beside it on
127.0.0.1. The config files are the ones the walkthrough's user applies, edited only
where Kubernetes references mean nothing here: ``routeAction.single.kube`` becomes
``routeAction.single.upstream`` plus a static ``Upstream``, ``kubectl create secret``
becomes a ``Secret`` resource, and the introspection URL points at the local IdP.
Each step starts its own gateway on its own config directory.
"""

from __future__ import annotations

import pathlib
import time
import typing as t

import pytest
import requests

from tests.support.servers import REPO_ROOT
from tests.support.servers import ServerProcess
from tests.support.servers import gateway_server
from tests.support.servers import render_config

from .conftest import token
from tests.factories import bearer

pytestmark = pytest.mark.skipif(not (REPO_ROOT / "wsgi.py").is_file(), reason="the gateway (wsgi.py) is not there yet")

TIMEOUT = 10
INVALID_TOKEN = "qwertyuio23456789"

UPSTREAM = """\
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata:
  name: httpbin
  namespace: gloo-system
spec:
  static:
    hosts:
    - addr: 127.0.0.1
      port: {UPSTREAM_PORT}
"""

CLIENT_SECRET = """\
apiVersion: v1
kind: Secret
metadata:
  name: client-secret
  namespace: gloo-system
type: extauth.solo.io/oauth
stringData:
  client-secret: secret
"""

VIRTUAL_SERVICE = """\
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata:
  name: httpbin
  namespace: gloo-system
spec:
  virtualHost:
    domains:
    - '*'
    routes:
    - matchers:
      - prefix: /
      routeAction:
        single:
          upstream:
            name: httpbin
            namespace: gloo-system
"""

VIRTUAL_SERVICE_WITH_EXTAUTH = VIRTUAL_SERVICE + """\
    options:
      extauth:
        configRef:
          name: oidc-hydra
          namespace: gloo-system
"""

VIRTUAL_SERVICE_WITH_TRANSFORMATION = VIRTUAL_SERVICE_WITH_EXTAUTH + """\
      stagedTransformations:
        regular:
          requestTransforms:
          - requestTransformation:
              transformationTemplate:
                headers:
                  x-customer:
                    text: '{{ dynamic_metadata("config_0:sub", "envoy.filters.http.ext_authz")}}'
"""

AUTH_CONFIG = """\
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata:
  name: oidc-hydra
  namespace: gloo-system
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        introspection:
          introspectionUrl: http://127.0.0.1:{IDP_PORT}/admin/oauth2/introspect
          clientId: my-client
          clientSecretRef:
            name: client-secret
            namespace: gloo-system
"""

AUTH_CONFIG_WITH_CLAIMS = AUTH_CONFIG + """\
        dynamicMetadataFromClaims:
          sub: sub
"""

AUTH_CONFIG_WITH_CLAIMS_AND_CACHE = AUTH_CONFIG + """\
          cacheTimeout: 2s
        dynamicMetadataFromClaims:
          sub: sub
"""


class GatewayLauncher:
    """Starts gateways on config directories rendered from YAML documents; stops them all at the end."""

    def __init__(self, tmp_path: pathlib.Path, oauth: ServerProcess, httpbin: ServerProcess) -> None:
        self.tmp_path = tmp_path
        self.ports = {"IDP_PORT": oauth.port, "UPSTREAM_PORT": httpbin.port}
        self.started: list[ServerProcess] = []

    def start(self, *documents: str, workers: int = 2) -> ServerProcess:
        number = len(self.started)
        config_dir = self.tmp_path / f"conf-{number}"
        for index, document in enumerate(documents):
            render_config(document, config_dir, filename=f"{index:02d}.yaml", **self.ports)
        rego_dir = self.tmp_path / "rego"
        rego_dir.mkdir(exist_ok=True)
        gateway = gateway_server(self.tmp_path, config_dir, rego_dir, workers=workers, name=f"gateway-{number}")
        self.started.append(gateway)
        return gateway.start()

    def stop_all(self) -> None:
        for gateway in self.started:
            gateway.stop()


@pytest.fixture
def gateways(tmp_path: pathlib.Path, oauth: ServerProcess, httpbin: ServerProcess) -> t.Iterator[GatewayLauncher]:
    launcher = GatewayLauncher(tmp_path, oauth, httpbin)
    yield launcher
    launcher.stop_all()




def upstream_headers(response: requests.Response) -> dict[str, str]:
    """httpbin's ``/headers`` echo, names lower-cased, list values (go-httpbin style) joined."""
    headers = response.json()["headers"]
    return {name.lower(): ", ".join(v) if isinstance(v, list) else v for name, v in headers.items()}


def assert_log_never_contains(gateway: ServerProcess, *secrets: str) -> None:
    log = gateway.log_text()
    for secret in secrets:
        assert secret not in log, f"{gateway.name} logged a full token or secret ({secret[:6]}...)"


def test_step2_virtual_service_without_auth_forwards_to_httpbin(gateways, http):
    gateway = gateways.start(UPSTREAM, VIRTUAL_SERVICE)

    head = http.head(gateway.url + "/headers", timeout=TIMEOUT)
    get = http.get(gateway.url + "/headers", timeout=TIMEOUT)

    assert head.status_code == 200
    assert get.status_code == 200
    assert "user-agent" in upstream_headers(get)


def test_step3_auth_config_denies_missing_and_invalid_tokens_and_admits_a_hydra_token(gateways, http, oauth):
    gateway = gateways.start(UPSTREAM, CLIENT_SECRET, AUTH_CONFIG, VIRTUAL_SERVICE_WITH_EXTAUTH)
    access_token = token(oauth, "my-client", "secret")

    without_token = http.get(gateway.url + "/headers", timeout=TIMEOUT)
    invalid_token = http.get(gateway.url + "/headers", headers=bearer(INVALID_TOKEN), timeout=TIMEOUT)
    valid_token = http.get(gateway.url + "/headers", headers=bearer(access_token), timeout=TIMEOUT)

    assert without_token.status_code == 403
    assert invalid_token.status_code == 403
    assert valid_token.status_code == 200
    assert upstream_headers(valid_token)["authorization"] == f"Bearer {access_token}"
    assert_log_never_contains(gateway, access_token, INVALID_TOKEN, "Basic bXktY2xpZW50OnNlY3JldA==")


def test_step4_sub_claim_reaches_httpbin_as_x_customer_and_replaces_a_client_copy(gateways, http, oauth):
    gateway = gateways.start(UPSTREAM, CLIENT_SECRET, AUTH_CONFIG_WITH_CLAIMS, VIRTUAL_SERVICE_WITH_TRANSFORMATION)
    access_token = token(oauth, "my-client", "secret")

    plain = http.get(gateway.url + "/headers", headers=bearer(access_token), timeout=TIMEOUT)
    spoofed = http.get(gateway.url + "/headers", headers={**bearer(access_token), "X-Customer": "evil"},
                       timeout=TIMEOUT)
    anonymous = http.get(gateway.url + "/headers", headers={"X-Customer": "my-client"}, timeout=TIMEOUT)

    assert plain.status_code == 200
    assert upstream_headers(plain)["x-customer"] == "my-client"
    assert spoofed.status_code == 200
    assert upstream_headers(spoofed)["x-customer"] == "my-client"
    assert anonymous.status_code == 403
    assert_log_never_contains(gateway, access_token)


def test_revoked_token_is_admitted_while_cached_and_refused_once_the_cache_entry_expired(gateways, http, oauth):
    # One worker: the introspection cache lives in a worker's memory.
    gateway = gateways.start(UPSTREAM, CLIENT_SECRET, AUTH_CONFIG_WITH_CLAIMS_AND_CACHE,
                             VIRTUAL_SERVICE_WITH_TRANSFORMATION, workers=1)
    access_token = token(oauth, "my-client", "secret")
    first = http.get(gateway.url + "/headers", headers=bearer(access_token), timeout=TIMEOUT)
    cached_at = time.monotonic()
    assert first.status_code == 200

    revoked = http.post(oauth.url + "/oauth2/revoke", data={"token": access_token},
                        auth=("my-client", "secret"), timeout=TIMEOUT)
    assert revoked.status_code == 200
    calls_before = http.get(oauth.url + "/admin/stats", timeout=TIMEOUT).json()["introspection_calls"]
    while_cached = http.get(gateway.url + "/headers", headers=bearer(access_token), timeout=TIMEOUT)
    calls_after = http.get(oauth.url + "/admin/stats", timeout=TIMEOUT).json()["introspection_calls"]
    assert time.monotonic() - cached_at < 2, "the cached request came too late to prove anything"
    time.sleep(max(0.0, cached_at + 2.5 - time.monotonic()))
    after_expiry = http.get(gateway.url + "/headers", headers=bearer(access_token), timeout=TIMEOUT)

    assert while_cached.status_code == 200
    assert calls_after == calls_before
    assert upstream_headers(while_cached)["x-customer"] == "my-client"
    assert after_expiry.status_code == 403
    assert_log_never_contains(gateway, access_token)
