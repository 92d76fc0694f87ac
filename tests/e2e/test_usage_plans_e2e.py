"""Usage plans across replicas: two gateways (gunicorn, 2 workers each) share one redis-server.

JWT access tokens come from the test OAuth server (``jwt-client`` and ``jwt-es-client`` are two
consumers); the Rego decision puts ``jwt-es-client`` on the ``gold`` plan through
``dynamic_metadata.usagePlan``. Plans count per HOUR, so nothing refills while a test runs.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import typing as t

import pytest
import redis
import requests

from tests.support.servers import ServerProcess
from tests.support.servers import gateway_server
from tests.support.servers import render_config
from tests.test_cache_redis import redis_server

from .conftest import token
from tests.factories import bearer

TIMEOUT = 10
BRONZE = 5
GOLD = 8

CONFIG = """\
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: httpbin, namespace: apps}
spec:
  static:
    hosts: [{addr: 127.0.0.1, port: {UPSTREAM_PORT}}]
---
apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {name: products, namespace: apps}
spec:
  hosts: ['*']
  portalMetadata: {apiProductId: anything}
  http:
  - name: anything-api
    labels: {usagePlans: bronze}
    matchers: [{uri: {prefix: /anything}}]
    forwardTo: {destinations: [{ref: {name: httpbin, namespace: apps}}]}
---
apiVersion: security.policy.gloo.solo.io/v2
kind: ExtAuthPolicy
metadata: {name: oauth, namespace: apps}
spec:
  applyToRoutes: [{route: {labels: {usagePlans: bronze}}}]
  config:
    glooAuth:
      configs:
      - oauth2:
          accessTokenValidation:
            jwt:
              remoteJwks: {url: 'http://127.0.0.1:{IDP_PORT}/.well-known/jwks.json'}
      - opaAuth:
          modules: [{name: plans}]
          query: data.plans.decision
---
apiVersion: gateway-app/v1
kind: UsagePlan
metadata: {name: bronze, namespace: apps}
spec:
  rateLimit: {requestsPerUnit: {BRONZE}, unit: HOUR}
---
apiVersion: gateway-app/v1
kind: UsagePlan
metadata: {name: gold, namespace: apps}
spec:
  rateLimit: {limit: {GOLD}, period: 1h}
"""

POLICY = """\
package plans

default decision = {"allowed": true}

decision = {"allowed": true, "dynamic_metadata": {"usagePlan": "gold"}} {
    input.state.jwtAccessToken.client_id == "jwt-es-client"
}
"""


class Replicas(t.NamedTuple):
    gateways: list[ServerProcess]
    redis_url: str

    @property
    def started(self) -> list[ServerProcess]:
        return self.gateways


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, oauth: ServerProcess,
             httpbin: ServerProcess) -> t.Iterator[Replicas]:
    root = tmp_path_factory.mktemp("usage-plans-e2e")
    config_dir = render_config(CONFIG, root / "conf", IDP_PORT=oauth.port, UPSTREAM_PORT=httpbin.port,
                               BRONZE=BRONZE, GOLD=GOLD)
    rego_dir = root / "rego"
    rego_dir.mkdir()
    (rego_dir / "plans.rego").write_text(POLICY)
    with redis_server(root) as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        env = {"GATEWAY_RATE_LIMIT_URL": url, "GATEWAY_LOG_LEVEL": "info"}
        gateways = [gateway_server(root, config_dir, rego_dir, workers=2, env=env, name=f"gateway-plans-{n}")
                    for n in range(2)]
        try:
            for gateway in gateways:
                gateway.start()
            yield Replicas(gateways, url)
        finally:
            for gateway in gateways:
                gateway.stop()


@pytest.fixture(autouse=True)
def fresh_counters(replicas: Replicas) -> None:
    client = redis.Redis.from_url(replicas.redis_url)
    client.flushdb()
    client.close()


def burst(replicas: Replicas, access_token: str, count: int) -> list[requests.Response]:
    """``count`` concurrent requests, alternating between the two gateways, each on its own connection."""
    def one(index: int) -> requests.Response:
        with requests.Session() as session:
            session.trust_env = False
            gateway = replicas.gateways[index % 2]
            return session.get(f"{gateway.url}/anything/{index}", headers=bearer(access_token),
                               timeout=TIMEOUT)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def test_exactly_the_plan_budget_passes_across_both_gateways_and_the_rest_get_429(replicas, oauth):
    responses = burst(replicas, token(oauth, "jwt-client", "jwt-secret"), 3 * BRONZE)
    allowed = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]

    assert len(allowed) == BRONZE
    assert {r.status_code for r in refused} == {429}
    assert sorted(int(r.headers["X-RateLimit-Remaining"]) for r in allowed) == list(range(BRONZE))
    assert {r.headers["RateLimit-Policy"] for r in responses} == {f'"bronze";q={BRONZE};w=3600'}
    for response in refused:
        retry = int(response.headers["Retry-After"])
        assert 0 < retry <= 3600 // BRONZE
        assert response.headers["RateLimit"] == f'"bronze";r=0;t={retry}'
        assert response.headers["X-RateLimit-Reset"] == str(retry)
        assert response.headers["X-RateLimit-Limit"] == str(BRONZE)
        assert response.json()["error"] == "rate_limited"


def test_different_consumers_do_not_share_a_budget(replicas, oauth):
    first = burst(replicas, token(oauth, "jwt-client", "jwt-secret"), BRONZE + 1)
    other_token_same_client = burst(replicas, token(oauth, "jwt-client", "jwt-secret"), 1)
    other_client = burst(replicas, token(oauth, "jwt-es-client", "jwt-es-secret"), 1)

    assert sorted(r.status_code for r in first) == [200] * BRONZE + [429]
    assert other_token_same_client[0].status_code == 429
    assert other_client[0].status_code == 200


def test_a_plan_chosen_by_rego_dynamic_metadata_is_applied_across_gateways(replicas, oauth):
    responses = burst(replicas, token(oauth, "jwt-es-client", "jwt-es-secret"), 2 * GOLD)

    assert sorted(r.status_code for r in responses) == [200] * GOLD + [429] * GOLD
    assert {r.headers["RateLimit-Policy"] for r in responses} == {f'"gold";q={GOLD};w=3600'}


def test_the_access_log_names_plan_and_consumer_hash_never_the_client(replicas, oauth):
    burst(replicas, token(oauth, "jwt-client", "jwt-secret"), BRONZE + 1)
    logs = "".join(gateway.log_text() for gateway in replicas.gateways)

    assert "usage_plan=bronze" in logs or '"usage_plan": "bronze"' in logs
    assert "rate_limit=limited" in logs or '"rate_limit": "limited"' in logs
