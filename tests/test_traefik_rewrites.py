"""Traefik header and path Middlewares (headers, stripPrefix, addPrefix, replacePath, replacePathRegex)."""

from __future__ import annotations

import pytest

from gateway_app.config.build import build_config
from gateway_app.errors import BadRequestError
from gateway_app.traefik.rewrites import PathChanges
from gateway_app.traefik.rewrites import parse_add_prefix
from gateway_app.traefik.rewrites import parse_replace_path_regex
from gateway_app.traefik.rewrites import parse_strip_prefix
from gateway_app.config.fields import Node
from tests.factories import write_tree
from tests.factories import upstream_yaml
from tests.keys import public_jwk
from tests.keys import rsa_key

UPSTREAM = "http://upstream.test:8000"


def middleware(name: str, body: str) -> str:
    return f"""
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {{name: {name}, namespace: apps}}
spec:
{body}
---
"""


MIDDLEWARES = (
    middleware("strip", "  stripPrefix:\n    prefixes: [/api, /v0]")
    + middleware("add", "  addPrefix:\n    prefix: /v1")
    + middleware("regex", "  replacePathRegex:\n    regex: ^/v1/users/(.*)\n    replacement: /v1/people/$1")
    + middleware("headers", "  headers:\n    customRequestHeaders:\n      X-Script: gateway\n      X-Debug: ''")
)

INGRESS = """
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: app, namespace: apps}
spec:
  routes:
  - match: PathPrefix(`/api`)
    kind: Rule
    middlewares: [{name: strip}, {name: add}, {name: regex}, {name: headers}]
    services: [{name: app, port: 80}]
"""


def _app(make_app):
    return make_app({"u.yaml": upstream_yaml("app", "apps"), "m.yaml": MIDDLEWARES, "i.yaml": INGRESS})


def test_path_middlewares_apply_in_order_and_headers_are_set_and_removed(make_app, requests_mock):
    upstream = requests_mock.get(f"{UPSTREAM}/v1/people/ada", json={})
    response = _app(make_app).test_client().get("/api/users/ada", headers={"X-Debug": "1", "X-Script": "evil"})
    assert response.status_code == 200
    sent = upstream.last_request.headers
    assert sent["X-Script"] == "gateway"
    assert "X-Debug" not in sent


def test_a_rewritten_path_must_be_normal_or_is_refused_as_gloo_rewrites_are():
    strip, _ = parse_strip_prefix(Node({"prefixes": ["/api"]}, "t"))
    changes = PathChanges(steps=(strip,), replacement="stripPrefix /api")
    assert changes.apply("/api") == "/"
    dots, _ = parse_replace_path_regex(Node({"regex": "^/a/(.*)", "replacement": "/b/$1/../c"}, "t"))
    smuggle, _ = parse_replace_path_regex(Node({"regex": "^/a/(.*)", "replacement": "/b/${1}%2f"}, "t"))
    double, _ = parse_add_prefix(Node({"prefix": "/v1/"}, "t"))
    for step, reason in ((dots, "rewrite_invalid"), (smuggle, "path_invalid")):
        with pytest.raises(BadRequestError) as caught:
            PathChanges(steps=(step,), replacement="").apply("/a/x")
        assert caught.value.reason == reason
    assert PathChanges(steps=(double,), replacement="").apply("/a") == "/v1/a"


PROTECTED_BESIDE_OPEN = """
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: jwt, namespace: apps}
spec:
  plugin:
    jwt:
      jwksUrl: http://127.0.0.1:1/.well-known/jwks.json
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: app, namespace: apps}
spec:
  routes:
  - match: PathPrefix(`/api/admin`)
    kind: Rule
    middlewares: [{name: jwt}, {name: only-api}]
    services: [{name: app, port: 80}]
  - match: PathPrefix(`/api`)
    kind: Rule
    middlewares: [{name: only-api}]
    services: [{name: app, port: 80}]
"""


@pytest.mark.parametrize("path, upstream_path", [("/apiadmin/users", "/apiadmin/users"), ("/api/x", "/x"),
                                                 ("/api", "/"), ("/api/", "/"), ("/apix", "/apix")])
def test_strip_prefix_strips_whole_segments_only_so_an_open_route_never_reaches_a_guarded_path(
        make_app, requests_mock, path, upstream_path):
    """Red team pass 2, finding 1: ``/apiadmin`` on the open ``/api`` route reached the upstream as
    ``/admin``, a path the protected ``/api/admin`` route guards."""
    upstream = requests_mock.get(f"{UPSTREAM}{upstream_path}", text="ok")
    requests_mock.get("http://127.0.0.1:1/.well-known/jwks.json", json={"keys": [public_jwk(rsa_key(), kid="k")]})
    app = make_app({"u.yaml": upstream_yaml("app", "apps"),
                    "m.yaml": middleware("only-api", "  stripPrefix:\n    prefixes: [/api]") + PROTECTED_BESIDE_OPEN})

    assert app.test_client().get(path).status_code == 200
    assert upstream.call_count == 1
    assert app.test_client().get("/api/admin/users").status_code in (401, 403)


def test_routes_shows_the_path_changes(tmp_path):
    result = build_config(write_tree(tmp_path / "conf", {"u.yaml": upstream_yaml("app", "apps"),
                                                         "m.yaml": MIDDLEWARES, "i.yaml": INGRESS}),
                          write_tree(tmp_path / "rego", {}))
    assert result.config is not None
    route = result.config.router.virtual_hosts[0].routes[0]
    assert route.path_rewrite.replacement == ("stripPrefix /api,/v0, addPrefix /v1, "
                                              "replacePathRegex ^/v1/users/(.*) -> /v1/people/$1")


@pytest.mark.parametrize("body, message", [
    ("  rateLimit:\n    average: 100", "Middleware kind 'rateLimit' is not supported (supported: "
                                       "plugin.oAuthIntrospection, plugin.jwt, plugin.opa, headers, stripPrefix, addPrefix, replacePath, "
                                       "replacePathRegex)"),
    ("  stripPrefixes:\n    prefixes: [/a]", "(did you mean stripPrefix?)"),
    ("  headers:\n    customResponseHeaders: {X-A: b}", "spec.headers.customResponseHeaders: unknown field"),
    ("  addPrefix:\n    prefix: v1", "spec.addPrefix.prefix: must start with '/'"),
    ("  replacePathRegex:\n    regex: '('\n    replacement: /x", "spec.replacePathRegex.regex: bad regexp"),
    ("  replacePathRegex:\n    regex: ^/a\n    replacement: /x/$2", "bad replacement '/x/$2': invalid group reference 2"),
], ids=["unsupported kind", "misspelt kind", "response headers", "relative prefix", "bad regex", "missing group"])
def test_unsupported_or_broken_middlewares_are_rejected(tmp_path, body, message):
    result = build_config(write_tree(tmp_path / "conf", {"m.yaml": middleware("bad", body)}),
                          write_tree(tmp_path / "rego", {}))
    text = "\n".join(s.describe() for s in result.errors)
    assert message in text, text
