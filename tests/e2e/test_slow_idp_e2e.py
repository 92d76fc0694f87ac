"""A slow IdP does not starve unrelated routes, through real gunicorn (issue 12 item 11, the IdP half).

The shipped ``conf/gunicorn.conf.py`` (gthread, 4 threads a worker), 2 workers. The IdP holds
every introspection call until the test releases it (it "takes 10 s"); 8 requests with bogus
tokens arrive at once. Per worker at most ``maxConcurrentCalls`` (2) calls wait on the IdP, the
excess answers 503 ``idp_overloaded`` at once, and the open ``/public`` route keeps answering.
"""

from __future__ import annotations

import concurrent.futures
import threading
import typing as t

import pytest
import requests

from tests.support.idp_servers import HeldIdp
from tests.support.idp_servers import PlainUpstream
from tests.support.servers import ServerProcess
from tests.support.servers import gateway_server
from tests.support.servers import render_config
from tests.factories import bearer

CONFIG = """\
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: api, namespace: gloo-system}
spec:
  static: {hosts: [{addr: 127.0.0.1, port: {UPSTREAM_PORT}}]}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: guard, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        introspection:
          introspectionUrl: http://127.0.0.1:{IDP_PORT}/introspect
          timeout: 30s
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: api, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{prefix: /secure}]
      routeAction: {single: {upstream: {name: api, namespace: gloo-system}}}
      options: {extauth: {configRef: {name: guard, namespace: gloo-system}}}
    - matchers: [{prefix: /public}]
      routeAction: {single: {upstream: {name: api, namespace: gloo-system}}}
"""
WORKERS, THREADS, MAX_CALLS = 2, 4, 2


@pytest.fixture
def slow_idp_gateway(tmp_path) -> t.Iterator[tuple[ServerProcess, HeldIdp]]:
    with HeldIdp() as idp, PlainUpstream() as upstream:
        conf = render_config(CONFIG, tmp_path / "conf", IDP_PORT=idp.port, UPSTREAM_PORT=upstream.port)
        (tmp_path / "rego").mkdir()
        try:
            with gateway_server(tmp_path, conf, tmp_path / "rego", workers=WORKERS, threads=THREADS) as gateway:
                yield gateway, idp
        finally:
            idp.release.set()


def get(gateway: ServerProcess, path: str, token: str | None = None) -> tuple[int, str | None]:
    headers = {**bearer(token), "Connection": "close"} if token else {"Connection": "close"}
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(gateway.url + path, headers=headers, timeout=8)
    return response.status_code, (response.json() if response.status_code != 200 else {}).get("error")


def settled(bogus: list[concurrent.futures.Future], idp: HeldIdp, within: float = 15.0) -> bool:
    """Whether every bogus request was either answered or is held at the IdP, polled for ``within`` s."""
    pause = threading.Event()
    for _ in range(int(within / 0.05)):
        if sum(future.done() for future in bogus) + idp.calls >= len(bogus):
            return True
        pause.wait(0.05)
    return False


def test_8_bogus_tokens_on_a_slow_idp_leave_the_public_route_answering(slow_idp_gateway):
    gateway, idp = slow_idp_gateway
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bogus = [pool.submit(get, gateway, "/secure", f"bogus-token-{i:04d}") for i in range(8)]
        assert settled(bogus, idp)
        held = idp.calls
        answered_early = [future.result() for future in bogus if future.done()]
        public = [get(gateway, "/public") for _ in range(10)]    # each within 8 s or the test fails
        idp.release.set()
        answers = [future.result(timeout=10) for future in bogus]
    assert public == [(200, None)] * 10
    assert 2 <= held <= WORKERS * MAX_CALLS                       # no worker lets more than 2 wait on the IdP
    assert answered_early == [(503, "idp_overloaded")] * (8 - held)
    assert sorted(answers) == sorted([(403, "token_inactive")] * held + [(503, "idp_overloaded")] * (8 - held))
