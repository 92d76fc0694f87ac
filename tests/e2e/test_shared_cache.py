"""Two gateway replicas (gunicorn, 2 workers each) share one Redis token cache.

The IdP is the real test OAuth server; its ``/admin/stats`` counts introspection calls.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import time
import typing as t

import pytest
import requests

from tests.support.servers import ServerProcess
from tests.support.servers import gateway_server
from tests.support.servers import render_config
from tests.test_cache_redis import redis_server

from .conftest import token
from .test_walkthrough import AUTH_CONFIG
from .test_walkthrough import CLIENT_SECRET
from .test_walkthrough import UPSTREAM
from .test_walkthrough import VIRTUAL_SERVICE_WITH_TRANSFORMATION
from tests.factories import bearer

TIMEOUT = 10
CACHE_TIMEOUT = 2.0
AUTH_CONFIG_SHORT_CACHE = AUTH_CONFIG + f"""\
          cacheTimeout: {CACHE_TIMEOUT:g}s
        dynamicMetadataFromClaims:
          sub: sub
"""


@pytest.fixture
def replicas(tmp_path: pathlib.Path, oauth: ServerProcess, httpbin: ServerProcess) -> t.Iterator[list[ServerProcess]]:
    """Two gateways on one config, both with ``GATEWAY_TOKEN_CACHE_URL`` pointing at one redis-server."""
    config_dir = tmp_path / "conf"
    for index, document in enumerate((UPSTREAM, CLIENT_SECRET, AUTH_CONFIG_SHORT_CACHE,
                                      VIRTUAL_SERVICE_WITH_TRANSFORMATION)):
        render_config(document, config_dir, filename=f"{index:02d}.yaml", IDP_PORT=oauth.port,
                      UPSTREAM_PORT=httpbin.port)
    rego_dir = tmp_path / "rego"
    rego_dir.mkdir()
    with redis_server(tmp_path) as redis:
        env = {"GATEWAY_TOKEN_CACHE_URL": f"redis://127.0.0.1:{redis.port}/0", "GATEWAY_LOG_LEVEL": "info"}
        gateways = [gateway_server(tmp_path, config_dir, rego_dir, workers=2, env=env, name=f"gateway-{n}")
                    for n in range(2)]
        try:
            for gateway in gateways:
                gateway.start()
            yield gateways
        finally:
            for gateway in gateways:
                gateway.stop()



def introspection_calls(http: requests.Session, oauth: ServerProcess) -> int:
    return http.get(f"{oauth.url}/admin/stats", timeout=TIMEOUT).json()["introspection_calls"]


def get_headers(http: requests.Session, gateway: ServerProcess, access_token: str) -> requests.Response:
    return http.get(f"{gateway.url}/headers", headers=bearer(access_token),
                    timeout=TIMEOUT, stream=False)


def test_replicas_sharing_redis_introspect_each_token_once_even_when_first_requests_race(replicas, oauth):
    tokens = [token(oauth, "my-client", "secret") for _ in range(10)]
    with requests.Session() as admin:
        admin.trust_env = False
        before = introspection_calls(admin, oauth)
        calls = [(gateway, access_token) for access_token in tokens for gateway in replicas for _ in range(4)]
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(lambda call: _fresh_get(*call).status_code, calls))
        after = introspection_calls(admin, oauth)

    assert statuses == [200] * len(calls)
    assert after - before == len(tokens)


def _fresh_get(gateway: ServerProcess, access_token: str) -> requests.Response:
    """One request on its own connection (a Session is not shared between threads)."""
    with requests.Session() as session:
        session.trust_env = False
        return get_headers(session, gateway, access_token)


def test_a_revocation_reaches_every_replica_once_the_shared_entry_expires(replicas, oauth, http):
    access_token = token(oauth, "my-client", "secret")
    first, second = replicas
    assert get_headers(http, first, access_token).json()["headers"]["X-Customer"] == "my-client"
    assert get_headers(http, second, access_token).status_code == 200

    revoked = http.post(f"{oauth.url}/oauth2/revoke", data={"token": access_token},
                        auth=("my-client", "secret"), timeout=TIMEOUT)
    assert revoked.status_code == 200
    assert get_headers(http, second, access_token).status_code == 200    # still cached, as designed
    time.sleep(CACHE_TIMEOUT + 0.2)

    assert [get_headers(http, gateway, access_token).status_code for gateway in replicas] == [403, 403]
