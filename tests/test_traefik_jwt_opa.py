"""Traefik Hub's JWT and OPA middlewares, translated onto the JWT validator and the policy engine."""

from __future__ import annotations

import json
import pathlib

import pytest

from gateway_app.config.build import build_config
from tests.factories import write_tree
from tests.factories import upstream_yaml
from tests.keys import claims
from tests.keys import jwks_json
from tests.keys import make_jwt
from tests.keys import pem_of_public
from tests.keys import public_jwk
from tests.keys import rsa_key
from tests.factories import bearer

UPSTREAM = "http://upstream.test:8000"


def middleware(name: str, body: str) -> str:
    return f"""
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {{name: {name}, namespace: apps}}
spec:
  plugin:
{body}
---
"""


def ingress(*middlewares: str) -> str:
    refs = ", ".join(f"{{name: {m}}}" for m in middlewares)
    return f"""
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {{name: app, namespace: apps}}
spec:
  routes:
  - match: PathPrefix(`/`)
    kind: Rule
    middlewares: [{refs}]
    services: [{{name: app, port: 80}}]
"""


def indented(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


def jwt_middleware(source: str) -> str:
    return middleware("jwt", f"""    jwt:
{source}
      tokenKey: jwt
      forwardHeaders: {{Group: grp}}
      claims: Equals(`grp`, `admin`)
      usernameClaim: sub""")


def _app(make_app, *resources: str):
    return make_app({"u.yaml": upstream_yaml("app", "apps"), "r.yaml": "".join(resources)})


@pytest.fixture
def key():
    return rsa_key()


@pytest.mark.parametrize("source", ["jwksFile", "publicKey", "jwksFile path"])
def test_jwt_from_header_or_token_key_is_verified_and_removed(make_app, requests_mock, tmp_path, key, source):
    if source == "jwksFile":
        config = "      jwksFile: |\n" + indented(jwks_json(public_jwk(key, kid="main")), 8)
    elif source == "jwksFile path":
        path = tmp_path / "jwks.json"
        path.write_text(jwks_json(public_jwk(key, kid="main")))
        config = f"      jwksFile: {path}"
    else:
        config = "      publicKey: |\n" + indented(pem_of_public(key).decode(), 8)
    app = _app(make_app, jwt_middleware(config), ingress("jwt"))
    upstream = requests_mock.get(f"{UPSTREAM}/x", json={})
    kid = None if source == "publicKey" else "main"
    token = make_jwt(claims(grp="admin"), key, kid=kid)
    client = app.test_client()
    assert client.get("/x", headers={**bearer(token), "Group": "forged"}).status_code == 200
    assert "Authorization" not in upstream.last_request.headers
    assert upstream.last_request.headers["Group"] == "admin"
    assert client.get(f"/x?jwt={token}").status_code == 200
    assert "jwt=" not in upstream.last_request.url
    assert client.get("/x").status_code == 401
    other = make_jwt(claims(grp="admin"), rsa_key("other"), kid=kid)
    assert client.get("/x", headers=bearer(other)).status_code == 401
    dev = make_jwt(claims(grp="dev"), key, kid=kid)
    assert client.get("/x", headers=bearer(dev)).status_code == 403


def test_jwks_url_fetches_the_keys(make_app, requests_mock, key):
    requests_mock.get("http://idp.test/jwks", text=jwks_json(public_jwk(key, kid="main")))
    app = _app(make_app, jwt_middleware("      jwksUrl: http://idp.test/jwks"), ingress("jwt"))
    requests_mock.get(f"{UPSTREAM}/x", json={})
    token = make_jwt(claims(grp="admin"), key)
    assert app.test_client().get("/x", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize("source, message", [
    ("      signingSecret: my-secret", "spec.plugin.jwt.signingSecret: is not supported: a shared HMAC secret"),
    ("      jwksUrl: http://idp.test/jwks\n      publicKey: x", "exactly one of jwksUrl, jwksFile, publicKey"),
    ("      publicKey: not a key", "spec.plugin.jwt.publicKey: is not a PEM public key"),
    ("      jwksFile: /nonexistent.json", "is neither a JWKS document nor a readable file"),
    ("      jwksUrl: http://idp.test/jwks\n      tokenKeys: jwt", "spec.plugin.jwt.tokenKeys: unknown field "
                                                                 "(did you mean tokenKey?)"),
], ids=["signing secret refused", "two key sources", "bad public key", "missing jwks file", "misspelt field"])
def test_unsafe_or_broken_jwt_middlewares_are_rejected(tmp_path, source, message):
    result = build_config(write_tree(tmp_path / "conf", {"m.yaml": jwt_middleware(source)}),
                          write_tree(tmp_path / "rego", {}))
    text = "\n".join(s.describe() for s in result.errors)
    assert message in text, text


POLICY = """\
      policy: |
        package example.policies

        default allow = false

        json_content {
          input.headers["Accept"] == "application/json"
        }

        allow {
          not json_content
          input.method == "GET"
          startswith(input.path, "/x")
        }

        grp := input.headers["X-Team"]
      allow: data.example.policies.allow
      forwardHeaders:
        Group: data.example.policies.grp
        Missing: data.example.policies.nothing"""


def test_opa_policy_from_traefik_hub_decides_on_traefik_input_and_forwards_headers(make_app, requests_mock):
    app = _app(make_app, middleware("opa", "    opa:\n" + POLICY), ingress("opa"))
    upstream = requests_mock.get(f"{UPSTREAM}/x", json={})
    client = app.test_client()
    response = client.get("/x", headers={"X-Team": "blue", "Group": "forged", "Missing": "forged"})
    assert response.status_code == 200
    sent = upstream.last_request.headers
    assert sent["Group"] == "blue"
    assert "Missing" not in sent
    assert client.get("/x", headers={"Accept": "application/json"}).status_code == 403
    assert client.post("/x").status_code == 403


def test_opa_after_jwt_runs_in_middleware_order(make_app, requests_mock, key):
    app = _app(make_app, jwt_middleware("      jwksFile: |\n" + indented(jwks_json(public_jwk(key, kid="main")), 8)),
               middleware("opa", "    opa:\n" + POLICY), ingress("jwt", "opa"))
    requests_mock.get(f"{UPSTREAM}/x", json={})
    client = app.test_client()
    assert client.get("/x").status_code == 401
    token = make_jwt(claims(grp="admin"), key)
    assert client.get("/x", headers=bearer(token)).status_code == 200
    assert client.get("/x", headers={**bearer(token), "Accept": "application/json"}).status_code \
        == 403


def test_opa_bundle_path_loads_its_rego_files(make_app, requests_mock, tmp_path):
    import io
    import tarfile
    source = "package bundled\n\nimport rego.v1\n\nallow if input.method == \"GET\"\n"
    bundle = tmp_path / "bundle.tar.gz"
    with tarfile.open(bundle, "w:gz") as archive:
        info = tarfile.TarInfo("policies/main.rego")
        info.size = len(source)
        archive.addfile(info, io.BytesIO(source.encode()))
    app = _app(make_app, middleware("opa", f"    opa:\n      bundlePath: {bundle}\n      allow: data.bundled.allow"),
               ingress("opa"))
    requests_mock.get(f"{UPSTREAM}/x", json={})
    client = app.test_client()
    assert client.get("/x").status_code == 200
    assert client.delete("/x").status_code == 403


@pytest.mark.parametrize("body, message", [
    ("      policy: 'package p\n\n        allow {'\n      allow: data.p.allow", "spec.plugin.opa.policy"),
    ("      allow: data.p.allow", "one of policy, bundlePath is required"),
    ("      policy: /nonexistent/policy.rego\n      allow: data.p.allow", "file '/nonexistent/policy.rego' does "
                                                                           "not exist"),
    ("      policy: |\n        package p\n        allow := true\n      allowed: data.p.allow",
     "spec.plugin.opa.allowed: unknown field (did you mean allow?)"),
    ("      policy: |\n        package p\n        allow := true", "needs 'allow' or 'forwardHeaders'"),
], ids=["rego syntax error", "no policy", "missing policy file", "misspelt field", "nothing to do"])
def test_broken_opa_middlewares_are_rejected(tmp_path, body, message):
    result = build_config(write_tree(tmp_path / "conf", {"m.yaml": middleware("opa", "    opa:\n" + body)}),
                          write_tree(tmp_path / "rego", {}))
    text = "\n".join(s.describe() for s in result.errors)
    assert message in text, text
