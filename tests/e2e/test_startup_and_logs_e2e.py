"""The real processes: a broken config stops gunicorn, ``gateway-app serve`` and ``make demo``
with one clean block of REJECTED lines; JSON logs are JSON throughout, gunicorn's lines included."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess

import pytest
import requests

from tests.support.servers import BIN_DIR
from tests.support.servers import GATEWAY_GUNICORN_CONF
from tests.support.servers import GUNICORN
from tests.support.servers import REPO_ROOT
from tests.support.servers import child_environment
from tests.support.servers import free_port
from tests.support.servers import gateway_server

from .conftest import token

TYPO_LINE = re.compile(r"AuthConfig gloo-system/oidc-hydra \((?P<file>\S+oidc-hydra\.yaml):(?P<line>\d+)\): REJECTED: "
                       r"spec\.configs\[0\]\.oauth2\.accessTokenValidation\.introspection\.clientSecretReff: "
                       r"unknown field clientSecretReff \(did you mean clientSecretRef\?\)")
TIMEOUT = 120


@pytest.fixture
def broken_tree(tmp_path: pathlib.Path) -> pathlib.Path:
    """A copy of the shipped conf/ and rego/ with ``clientSecretRef`` misspelt."""
    shutil.copytree(REPO_ROOT / "conf", tmp_path / "conf")
    shutil.copytree(REPO_ROOT / "rego", tmp_path / "rego")
    auth = tmp_path / "conf" / "oidc-hydra.yaml"
    auth.write_text(auth.read_text().replace("clientSecretRef:", "clientSecretReff:"))
    return tmp_path


def _run(argv: list[str], tree: pathlib.Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = child_environment({"GATEWAY_CONFIG_DIR": str(tree / "conf"), "GATEWAY_REGO_DIR": str(tree / "rego"),
                                     **env})
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=environment, cwd=REPO_ROOT,
                          stdin=subprocess.DEVNULL)


def _assert_one_clean_block(output: str) -> None:
    matches = TYPO_LINE.findall(output)
    assert len(matches) == 1, output
    assert "Traceback" not in output
    assert "depends on rejected AuthConfig gloo-system/oidc-hydra" in output     # the VirtualService using it
    assert "Booting worker" not in output                                         # nothing was forked


def test_gunicorn_with_a_broken_config_prints_the_rejected_lines_once_and_exits_non_zero(broken_tree):
    done = _run([GUNICORN, "-c", str(GATEWAY_GUNICORN_CONF), "-w", "2", "--no-control-socket",
                 "-b", f"127.0.0.1:{free_port()}", "wsgi:app"], broken_tree)

    assert done.returncode != 0
    _assert_one_clean_block(done.stdout + done.stderr)


def test_gateway_app_serve_with_a_broken_config_prints_the_rejected_lines_once_and_exits_non_zero(broken_tree):
    done = _run([str(BIN_DIR / "gateway-app"), "serve", "--config-dir", str(broken_tree / "conf"),
                 "--rego-dir", str(broken_tree / "rego"), "--bind", f"127.0.0.1:{free_port()}",
                 "--gunicorn-config", str(GATEWAY_GUNICORN_CONF)], broken_tree)

    assert done.returncode != 0
    _assert_one_clean_block(done.stdout + done.stderr)


def test_make_demo_with_a_broken_config_shows_the_rejected_lines_and_starts_nothing(broken_tree):
    shutil.copytree(REPO_ROOT / "deploy", broken_tree / "deploy")
    done = _run(["bash", str(broken_tree / "deploy" / "demo.sh")], broken_tree, VENV=str(BIN_DIR.parent))

    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "nothing was started" in output
    _assert_one_clean_block(output)
    assert not (broken_tree / ".demo" / "pids").exists()


def test_a_broken_config_in_json_mode_is_json_lines_with_file_line_and_field_as_keys(broken_tree):
    done = _run([GUNICORN, "-c", str(GATEWAY_GUNICORN_CONF), "--no-control-socket",
                 "-b", f"127.0.0.1:{free_port()}", "wsgi:app"], broken_tree, GATEWAY_LOG_FORMAT="json")

    assert done.returncode != 0
    records = [json.loads(line) for line in (done.stdout + done.stderr).splitlines()]
    typo = next(r for r in records if r.get("kind") == "AuthConfig")
    assert typo["file"].endswith("oidc-hydra.yaml") and isinstance(typo["line"], int)
    assert typo["field"] == "spec.configs[0].oauth2.accessTokenValidation.introspection.clientSecretReff"
    assert typo["reason"] == "unknown field clientSecretReff (did you mean clientSecretRef?)"


def test_json_logs_are_json_throughout_with_millisecond_zoned_timestamps_and_the_host(tmp_path, httpbin):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "open.yaml").write_text(f"""\
kind: VirtualService
metadata: {{name: open, namespace: team}}
spec:
  virtualHost:
    domains: ['*']
    routes: [{{routeAction: {{single: {{url: '{httpbin.url}'}}}}}}]
""")
    (tmp_path / "rego").mkdir()
    with gateway_server(tmp_path, conf, tmp_path / "rego", env={"GATEWAY_LOG_FORMAT": "json"}) as gateway:
        response = requests.get(f"{gateway.url}/get", headers={"Host": "api.example.com"}, timeout=10)
        assert response.status_code == 200
    lines = [line for line in gateway.log_path.read_text().splitlines() if line.strip()]

    records = [json.loads(line) for line in lines]          # every line, gunicorn's included
    assert any(r["logger"] == "gunicorn.error" and "Booting worker" in r["msg"] for r in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", r["ts"]) for r in records)
    access = next(r for r in records if r["logger"] == "gateway_app.access")
    assert access["host"] == "api.example.com"
    assert access["status"] == 200


JWT_CONFIG = """\
kind: Upstream
metadata: {{name: httpbin, namespace: team}}
spec: {{static: {{hosts: [{{addr: 127.0.0.1, port: {upstream}}}]}}}}
---
kind: AuthConfig
metadata: {{name: jwt, namespace: team}}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        jwt:
          remoteJwks: {{url: 'http://127.0.0.1:{idp}/.well-known/jwks.json'}}
        claimsToHeaders: [{{claim: sub, header: x-customer}}]
---
kind: VirtualService
metadata: {{name: api, namespace: team}}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{{prefix: /admin}}]
      routeAction: {{single: {{upstream: {{name: httpbin}}}}}}
    - matchers: [{{prefix: /}}]
      routeAction: {{single: {{upstream: {{name: httpbin}}}}}}
      options: {{extauth: {{configRef: {{name: jwt}}}}}}
"""


@pytest.fixture
def jwt_tree(tmp_path: pathlib.Path, oauth, httpbin) -> pathlib.Path:
    (tmp_path / "conf").mkdir()
    (tmp_path / "rego").mkdir()
    (tmp_path / "conf" / "api.yaml").write_text(JWT_CONFIG.format(upstream=httpbin.port, idp=oauth.port))
    return tmp_path


def test_gateway_app_status_reads_the_running_gunicorn(jwt_tree):
    with gateway_server(jwt_tree, jwt_tree / "conf", jwt_tree / "rego", workers=1) as gateway:
        done = subprocess.run([str(BIN_DIR / "gateway-app"), "status", "--url", gateway.url], capture_output=True,
                              text=True, timeout=TIMEOUT, env=child_environment())

    assert done.returncode == 0, done.stderr
    assert "generation 1" in done.stdout
    assert "ACCEPTED AuthConfig team/jwt" in done.stdout
    assert re.search(r"JwtValidator: .*key_ids=\['\S+'.*ready=True", done.stdout), done.stdout
    assert "auth=team/jwt" in done.stdout


def test_gateway_app_explain_runs_the_real_pipeline_against_the_real_idp(jwt_tree, oauth):
    access_token = token(oauth, "jwt-client", "jwt-secret")
    done = _run([str(BIN_DIR / "gateway-app"), "explain", "--json", "--config-dir", str(jwt_tree / "conf"),
                 "--rego-dir", str(jwt_tree / "rego"), "GET", "http://gateway.test/headers",
                 "-H", f"Authorization: Bearer {access_token}"], jwt_tree)

    assert done.returncode == 0, done.stderr
    assert access_token not in done.stdout + done.stderr
    report = json.loads(done.stdout)
    stages = {stage["stage"]: stage for stage in report["stages"]}
    assert stages["route"]["not_matched"][0]["why"] == "path /headers does not match prefix /admin"
    assert stages["validation"]["jwt_claims"]["sub"] == "jwt-client"
    assert stages["upstream"]["headers_set"] == {"x-customer": "jwt-client"}
    assert stages["upstream"]["url"].endswith("/headers")
