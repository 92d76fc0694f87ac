"""Hot reload: policy changes picked up, broken changes rejected with the last good config kept,
token caches kept when the IdP settings are unchanged, SIGHUP forcing a reload."""

from __future__ import annotations

import logging
import os
import pathlib
import re
import signal
import time

import pytest

from gateway_app.reload import Watcher
from gateway_app.reload import install_reload_signal
from gateway_app.reload import start_watcher
from tests.factories import upstream_yaml
from tests.factories import bearer

UPSTREAM = "http://upstream.test:8000"
IDP = "http://idp-reload.test/introspect"
TOKEN = "ory_at_reloadtoken123"

UPSTREAM_YAML = upstream_yaml("backend", "default")

VS_YAML = """
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: reload, namespace: default}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - name: reloaded
      matchers: [{prefix: /}]
      routeAction:
        single:
          upstream: {name: backend, namespace: default}
      options:
        extauth:
          configRef: {name: checks, namespace: default}
"""

POLICY_AUTH_YAML = """
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: checks, namespace: default}
spec:
  configs:
  - opaAuth:
      modules: [{name: gate}]
      query: "data.gate.allow == true"
"""

TOKEN_AUTH_YAML = """
apiVersion: v1
kind: Secret
metadata: {name: client-secret, namespace: default}
stringData: {client-secret: secret}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: checks, namespace: default}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        introspection:
          introspectionUrl: %(url)s
          clientId: my-client
          clientSecretRef: {name: client-secret, namespace: default}
          retries: 0
        %(extra)s
"""

ALLOW = "package gate\n\ndefault allow = false\n\nallow {\n    true\n}\n"
DENY = "package gate\n\ndefault allow = false\n"
BROKEN = "package gate\n\nallow {\n    input.x ==\n}\n"


def write(path: pathlib.Path, text: str) -> None:
    """Write and move the mtime forward, so a change is seen even within one mtime tick."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    stamp = max(time.time_ns(), before + 1_000_000)
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture
def policy_app(make_app, requests_mock):
    requests_mock.get(f"{UPSTREAM}/resource", json={"ok": True})
    return make_app({"upstream.yaml": UPSTREAM_YAML, "vs.yaml": VS_YAML, "auth.yaml": POLICY_AUTH_YAML},
                    rego={"gate.rego": ALLOW})


def status_of(app, headers: dict[str, str] | None = None) -> int:
    return app.test_client().get("/resource", headers=headers or {}).status_code


def test_a_policy_change_from_allow_to_deny_is_picked_up_by_check(policy_app, tmp_path):
    gateway = policy_app.extensions["gateway"]
    watcher = Watcher(gateway)
    assert status_of(policy_app) == 200
    assert watcher.check() is False

    write(tmp_path / "rego" / "gate.rego", DENY)

    assert watcher.check() is True
    assert gateway.config.generation == 2
    assert status_of(policy_app) == 403


def test_a_broken_policy_is_rejected_logged_and_the_last_good_config_keeps_serving(policy_app, tmp_path, caplog):
    gateway = policy_app.extensions["gateway"]
    watcher = Watcher(gateway)
    good = gateway.config

    write(tmp_path / "rego" / "gate.rego", BROKEN)
    with caplog.at_level(logging.ERROR, logger="gateway_app.gateway"):
        assert watcher.check() is False

    assert gateway.config is good
    assert status_of(policy_app) == 200
    rejected = [r.getMessage() for r in caplog.records if "config reload rejected" in r.getMessage()]
    assert any(re.search(r"RegoModule .*gate\.rego:\d+\).*REJECTED: .*gate\.rego:\d+:\d+: ", line) for line in rejected), rejected
    assert watcher.check() is False, "an unchanged broken tree is not rebuilt on every poll"


def test_a_fixed_policy_after_a_broken_one_is_loaded(policy_app, tmp_path):
    gateway = policy_app.extensions["gateway"]
    watcher = Watcher(gateway)
    write(tmp_path / "rego" / "gate.rego", BROKEN)
    watcher.check()

    write(tmp_path / "rego" / "gate.rego", DENY)

    assert watcher.check() is True
    assert status_of(policy_app) == 403


def test_a_fixed_policy_after_a_broken_one_gets_the_next_generation_number(policy_app, tmp_path):
    gateway = policy_app.extensions["gateway"]
    watcher = Watcher(gateway)
    write(tmp_path / "rego" / "gate.rego", BROKEN)
    assert watcher.check() is False
    assert gateway.config.generation == 1

    write(tmp_path / "rego" / "gate.rego", DENY)

    assert watcher.check() is True
    assert gateway.config.generation == 2, "a rejected reload consumes no generation number"


JWKS_URL = "http://jwks-reload.test/.well-known/jwks.json"
JWT_AUTH_YAML = """
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: checks, namespace: default}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        jwt:
          remoteJwks: {url: %s}
""" % JWKS_URL


def test_a_file_written_while_the_first_config_loads_is_picked_up_by_the_first_check(
        make_app, requests_mock, tmp_path):
    from tests.keys import public_jwk
    from tests.keys import rsa_key

    def jwks_written_during_fetch(request, context):
        write(tmp_path / "rego" / "gate.rego", DENY)      # written while the worker boots
        return {"keys": [public_jwk(rsa_key(), kid="k1", alg="RS256")]}

    requests_mock.get(JWKS_URL, json=jwks_written_during_fetch)
    app = make_app({"upstream.yaml": UPSTREAM_YAML, "vs.yaml": VS_YAML, "auth.yaml": JWT_AUTH_YAML},
                   rego={"gate.rego": ALLOW})
    gateway = app.extensions["gateway"]
    assert gateway.ready()

    assert Watcher(gateway).check() is True
    assert gateway.config.generation == 2


def _token_app(make_app, requests_mock, url: str = IDP):
    requests_mock.get(f"{UPSTREAM}/resource", json={"ok": True})
    conf = {"upstream.yaml": UPSTREAM_YAML, "vs.yaml": VS_YAML,
            "auth.yaml": TOKEN_AUTH_YAML % {"url": url, "extra": ""}}
    return make_app(conf)


def _idp(requests_mock, url: str = IDP):
    return requests_mock.post(url, json={"active": True, "sub": "alice", "exp": int(time.time()) + 3600})


def test_the_token_cache_survives_a_reload_when_idp_settings_are_unchanged(make_app, requests_mock, tmp_path):
    app = _token_app(make_app, requests_mock)
    idp = _idp(requests_mock)
    watcher = Watcher(app.extensions["gateway"])
    credentials = bearer(TOKEN)
    assert status_of(app, credentials) == 200

    write(tmp_path / "conf" / "auth.yaml", TOKEN_AUTH_YAML % {
        "url": IDP, "extra": "dynamicMetadataFromClaims: {sub: sub}"})
    assert watcher.check() is True

    assert status_of(app, credentials) == 200
    assert idp.call_count == 1


def test_a_new_introspection_url_does_not_reuse_cached_answers(make_app, requests_mock, tmp_path):
    app = _token_app(make_app, requests_mock)
    old_idp = _idp(requests_mock)
    new_idp = _idp(requests_mock, "http://idp-other.test/introspect")
    watcher = Watcher(app.extensions["gateway"])
    credentials = bearer(TOKEN)
    assert status_of(app, credentials) == 200

    write(tmp_path / "conf" / "auth.yaml", TOKEN_AUTH_YAML % {"url": "http://idp-other.test/introspect", "extra": ""})
    assert watcher.check() is True

    assert status_of(app, credentials) == 200
    assert (old_idp.call_count, new_idp.call_count) == (1, 1)


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_the_polling_thread_swaps_in_a_changed_policy(policy_app, tmp_path):
    gateway = policy_app.extensions["gateway"]
    gateway.settings = type(gateway.settings)(**{**gateway.settings.__dict__, "reload_interval": 0.05})
    watcher = start_watcher(gateway)
    try:
        write(tmp_path / "rego" / "gate.rego", DENY)
        assert wait_for(lambda: gateway.config.generation == 2)
        assert status_of(policy_app) == 403
    finally:
        watcher.stop()


def test_sighup_forces_a_validated_reload_without_a_file_change(policy_app):
    gateway = policy_app.extensions["gateway"]
    previous = signal.getsignal(signal.SIGHUP)
    watcher = install_reload_signal(gateway)
    try:
        assert gateway.config.generation == 1
        os.kill(os.getpid(), signal.SIGHUP)
        assert wait_for(lambda: gateway.config.generation == 2)
        assert status_of(policy_app) == 200
    finally:
        signal.signal(signal.SIGHUP, previous)
        watcher.stop()
