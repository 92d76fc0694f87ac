"""Tokens, client secrets and cookie values never leak (issue 8, item 7).

A realistic sequence runs through gunicorn at debug level, with the policy-debug route on:
introspection and JWT routes, tokens in the header, the query and a cookie, bad, tampered
and ambiguous tokens, and an IdP that is down. Every token used, the gateway's client
secret and every cookie value are collected; then everything the gateway printed, every
answer (body and headers) and the metrics page are scanned for them, whole and in part.
"""

from __future__ import annotations

import base64
import json
import pathlib
import typing as t
import uuid

import pytest
import requests

from tests.support.servers import ServerProcess
from tests.support.servers import free_port
from tests.support.servers import gateway_server
from tests.support.servers import render_config

from .conftest import token
from tests.factories import bearer

CONFIG = """\
apiVersion: v1
kind: Secret
metadata: {name: gw-client, namespace: gloo-system}
stringData: {client-secret: '{CLIENT_SECRET}'}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: opaque, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        introspection:
          introspectionUrl: http://127.0.0.1:{IDP_PORT}/admin/oauth2/introspect
          clientId: '{CLIENT_ID}'
          clientSecretRef: {name: gw-client, namespace: gloo-system}
          retries: 0
          timeout: 1s
        tokenSource: {header: Authorization, headerAuthScheme: Bearer, query: access_token, cookie: at}
        dynamicMetadataFromClaims: {sub: sub}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: opaque-idp-down, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        introspection:
          introspectionUrl: http://127.0.0.1:{DEAD_PORT}/introspect
          clientId: '{CLIENT_ID}'
          clientSecretRef: {name: gw-client, namespace: gloo-system}
          retries: 1
          retryBackoff: 10ms
          timeout: 300ms
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: signed, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        jwt:
          remoteJwks: {url: 'http://127.0.0.1:{IDP_PORT}/.well-known/jwks.json'}
        claimsToHeaders: [{claim: sub, header: x-user}]
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: api, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - name: opaque
      matchers: [{prefix: /opaque}]
      routeAction: {single: {url: 'http://127.0.0.1:{UPSTREAM_PORT}'}}
      options:
        prefixRewrite: /anything
        extauth: {configRef: {name: opaque, namespace: gloo-system}}
    - name: idp-down
      matchers: [{prefix: /down}]
      routeAction: {single: {url: 'http://127.0.0.1:{UPSTREAM_PORT}'}}
      options: {extauth: {configRef: {name: opaque-idp-down, namespace: gloo-system}}}
    - name: jwt
      matchers: [{prefix: /jwt}]
      routeAction: {single: {url: 'http://127.0.0.1:{UPSTREAM_PORT}'}}
      options:
        prefixRewrite: /anything
        extauth: {configRef: {name: signed, namespace: gloo-system}}
"""


def _register_gateway_client(oauth: ServerProcess) -> tuple[str, str]:
    client_id = f"gw-{uuid.uuid4().hex[:8]}"
    secret = f"gw-secret-{uuid.uuid4().hex}"
    response = requests.post(f"{oauth.url}/admin/clients", json={"client_id": client_id, "client_secret": secret,
                                                                 "scope": "openid"}, timeout=10)
    response.raise_for_status()
    return client_id, secret


def _tampered(jwt: str) -> str:
    header, payload, signature = jwt.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


@pytest.fixture(scope="module")
def run(oauth: ServerProcess, httpbin: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[dict]:
    tmp = tmp_path_factory.mktemp("no-secrets")
    client_id, client_secret = _register_gateway_client(oauth)
    conf = render_config(CONFIG, tmp / "conf", IDP_PORT=oauth.port, UPSTREAM_PORT=httpbin.port,
                         DEAD_PORT=free_port(), CLIENT_ID=client_id, CLIENT_SECRET=client_secret)
    (tmp / "rego").mkdir()
    env = {"GATEWAY_LOG_LEVEL": "debug", "GATEWAY_DEBUG_ROUTE": "opaque"}
    with gateway_server(tmp, conf, tmp / "rego", workers=2, threads=4, env=env) as gateway:
        yield {"gateway": gateway, "client_secret": client_secret, **_exchange(gateway, oauth)}


def _exchange(gateway: ServerProcess, oauth: ServerProcess) -> dict:
    opaque = token(oauth, "my-client", "secret")
    other_opaque = token(oauth, "my-client", "secret")
    jwt = token(oauth, "jwt-client", "jwt-secret")
    bad = f"bad-{uuid.uuid4().hex}"
    cookie = f"session-{uuid.uuid4().hex}"
    secrets = {"opaque": opaque, "other": other_opaque, "jwt": jwt, "bad": bad, "cookie": cookie,
               "tampered": _tampered(jwt)}
    calls: list[tuple[str, dict, int]] = [
        ("/opaque/headers", bearer(opaque), 200),
        (f"/opaque/get?access_token={opaque}&x=1", {}, 200),
        ("/opaque/cookies", {"Cookie": f"at={opaque}; sid={cookie}"}, 200),
        ("/opaque/headers", bearer(bad), 403),
        (f"/opaque/get?access_token={bad}", {}, 403),
        ("/opaque/get", {"Cookie": f"at={bad}; sid={cookie}"}, 403),
        (f"/opaque/get?access_token={other_opaque}", bearer(opaque), 403),
        ("/opaque/get", {"Authorization": f"Bearer {opaque}, Bearer {bad}"}, 400),
        ("/down/get", bearer(opaque), 503),
        ("/jwt/headers", bearer(jwt), 200),
        ("/jwt/headers", bearer(secrets['tampered']), 403),
        ("/jwt/headers", {"Authorization": f"Bearer {jwt}x"}, 403),
    ]
    answers: list[str] = []
    statuses = []
    with requests.Session() as session:
        session.trust_env = False
        for path, headers, _ in calls:
            response = session.get(gateway.url + path, headers=headers, timeout=10)
            statuses.append(response.status_code)
            if not path.startswith(("/opaque/headers", "/opaque/get?", "/opaque/cookies", "/jwt/headers")) \
                    or response.status_code != 200:
                answers.append(f"{response.headers}\n{response.text}")      # upstream echoes are not ours
        metrics = session.get(gateway.url + "/__gateway/metrics", timeout=10)
        answers.append(metrics.text if metrics.status_code == 200 else "")
    return {"secrets": secrets, "answers": answers, "statuses": statuses,
            "expected": [status for _, _, status in calls]}


def _fragments(value: str) -> list[str]:
    """The whole value and its tail: a redaction keeps at most a short prefix."""
    return [value, value[-12:]]


def test_the_sequence_got_the_expected_answers(run):
    assert run["statuses"] == run["expected"]


def test_no_token_secret_or_cookie_appears_in_the_gateway_log(run):
    log = run["gateway"].log_text()
    assert "access" in log and "auth_config=" in log                 # the log was written, with the decisions
    for name, value in {**run["secrets"], "client_secret": run["client_secret"]}.items():
        for fragment in _fragments(value):
            assert fragment not in log, f"{name} leaked into the gateway log"


def test_no_token_secret_or_cookie_appears_in_answers_or_metrics(run):
    text = "\n".join(run["answers"])
    for name, value in {**run["secrets"], "client_secret": run["client_secret"]}.items():
        for fragment in _fragments(value):
            assert fragment not in text, f"{name} leaked into an answer"


def test_log_lines_still_identify_tokens_by_redacted_prefix_only(run):
    log = run["gateway"].log_text()
    assert run["secrets"]["opaque"][:16] not in log
    assert pathlib.Path(run["gateway"].log_path).stat().st_size > 0
