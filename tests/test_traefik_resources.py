"""Traefik ``Middleware`` (oAuthIntrospection) and ``IngressRoute`` resources: translated into the
route table and auth pipeline, through the Flask test client (IdP and upstream mocked)."""

from __future__ import annotations

import json
import pathlib
import time

import pytest

from gateway_app.config.build import build_config
from tests.factories import write_tree
from tests.factories import upstream_yaml
from tests.factories import bearer

IDP = "http://idp.test/realms/demo/protocol/openid-connect/token/introspect"
UPSTREAM = "http://upstream.test:8000"
GOOD = "good-token-1234567890"

UPSTREAM_YAML = upstream_yaml("whoami", "apps")

MIDDLEWARE = """
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata:
  name: oauth2-token-introspection
  namespace: apps
spec:
  plugin:
    oAuthIntrospection:
      tokenSource:
        header: Authorization
        headerAuthScheme: Bearer
        query: token
        cookie: session
      clientConfig:
        url: "%(idp)s"
        headers:
          Authorization: urn:k8s:secret:introspection:basic
        tokenTypeHint: access_token
        timeoutSeconds: 2
        maxRetries: 0
      forwardHeaders:
        Group: grp
        Expires-At: exp
      claims: Equals(`grp`, `admin`) || SplitContains(`scope`, ` `, `superuser`)
      usernameClaim: preferred_username
---
apiVersion: v1
kind: Secret
metadata: {name: introspection, namespace: apps}
stringData: {basic: Basic ZXhhbXBsZTpleGFtcGxl}
""" % {"idp": IDP}

INGRESS_ROUTE = """
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata:
  name: whoami
  namespace: apps
spec:
  entryPoints: [web]
  routes:
  - match: Host(`api.example.com`) && PathPrefix(`/secure`)
    kind: Rule
    services:
    - name: whoami
      port: 80
    middlewares:
    - name: oauth2-token-introspection
  - match: Host(`api.example.com`) && PathPrefix(`/open`)
    kind: Rule
    services:
    - name: whoami
      port: 80
"""


def _app(make_app, *extra: str):
    files = {"upstream.yaml": UPSTREAM_YAML, "middleware.yaml": MIDDLEWARE, "ingress.yaml": INGRESS_ROUTE}
    files.update({f"extra{i}.yaml": text for i, text in enumerate(extra)})
    return make_app(files)


def _idp(requests_mock, claims=None):
    def answer(request, context):
        form = dict(pair.split("=", 1) for pair in request.text.split("&"))
        assert request.headers["Authorization"] == "Basic ZXhhbXBsZTpleGFtcGxl"
        if form.get("token") == GOOD:
            return {"active": True, "exp": int(time.time()) + 3600, "preferred_username": "ada",
                    **(claims if claims is not None else {"grp": "admin"})}
        return {"active": False}
    return requests_mock.post(IDP, json=answer)


def _upstream(requests_mock, path="/secure"):
    return requests_mock.get(f"{UPSTREAM}{path}", json={"ok": True})


@pytest.mark.parametrize("how", ["header", "query", "cookie"])
def test_token_from_each_source_is_introspected_and_removed_before_forwarding(make_app, requests_mock, how):
    app = _app(make_app)
    _idp(requests_mock)
    upstream = _upstream(requests_mock)
    client = app.test_client()
    if how == "header":
        response = client.get("/secure", headers={"Host": "api.example.com", **bearer(GOOD)})
    elif how == "query":
        response = client.get(f"/secure?token={GOOD}&x=1", headers={"Host": "api.example.com"})
    else:
        client.set_cookie("session", GOOD, domain="api.example.com")
        response = client.get("/secure", headers={"Host": "api.example.com", "Cookie": f"session={GOOD}; a=b"})
    assert response.status_code == 200
    sent = upstream.last_request
    assert "Authorization" not in sent.headers
    assert GOOD not in sent.url and GOOD not in sent.headers.get("Cookie", "")
    assert sent.headers["Group"] == "admin"


def test_missing_token_is_401_as_traefik_hub_answers(make_app, requests_mock):
    app = _app(make_app)
    idp, upstream = _idp(requests_mock), _upstream(requests_mock)
    response = app.test_client().get("/secure", headers={"Host": "api.example.com"})
    assert response.status_code == 401
    assert idp.call_count == 0 and upstream.call_count == 0


def test_inactive_token_is_401(make_app, requests_mock):
    app = _app(make_app)
    _idp(requests_mock)
    response = app.test_client().get("/secure", headers={"Host": "api.example.com",
                                                         "Authorization": "Bearer inactive-token-123456"})
    assert response.status_code == 401


def test_claims_expression_that_does_not_hold_is_403(make_app, requests_mock):
    app = _app(make_app)
    _idp(requests_mock, claims={"grp": "dev", "scope": "read write"})
    upstream = _upstream(requests_mock)
    response = app.test_client().get("/secure", headers={"Host": "api.example.com",
                                                         **bearer(GOOD)})
    assert response.status_code == 403
    assert response.get_json()["error"] == "claims_mismatch"
    assert upstream.call_count == 0


def test_claims_expression_or_branch_allows(make_app, requests_mock):
    app = _app(make_app)
    _idp(requests_mock, claims={"grp": "dev", "scope": "read superuser"})
    _upstream(requests_mock)
    response = app.test_client().get("/secure", headers={"Host": "api.example.com",
                                                         **bearer(GOOD)})
    assert response.status_code == 200


def test_route_without_middleware_is_open_and_other_hosts_are_not_routed(make_app, requests_mock):
    app = _app(make_app)
    _upstream(requests_mock, "/open")
    client = app.test_client()
    assert client.get("/open", headers={"Host": "api.example.com"}).status_code == 200
    assert client.get("/open", headers={"Host": "other.example.com"}).status_code == 404


def test_forward_authorization_true_keeps_the_credential(make_app, requests_mock):
    app = _app(make_app, MIDDLEWARE.replace("usernameClaim: preferred_username",
                                            "usernameClaim: preferred_username\n      forwardAuthorization: true")
               .replace("name: oauth2-token-introspection", "name: keep").replace("name: introspection,", "name: s2,")
               .replace("secret:introspection:", "secret:s2:"),
               INGRESS_ROUTE.replace("name: whoami\n  namespace", "name: keep\n  namespace")
               .replace("/secure", "/keep").replace("/open", "/keep-open")
               .replace("- name: oauth2-token-introspection", "- name: keep"))
    _idp(requests_mock)
    upstream = _upstream(requests_mock, "/keep")
    response = app.test_client().get("/keep", headers={"Host": "api.example.com", **bearer(GOOD)})
    assert response.status_code == 200
    assert upstream.last_request.headers["Authorization"] == f"Bearer {GOOD}"


def _statuses(tmp_path: pathlib.Path, files) -> list[str]:
    result = build_config(write_tree(tmp_path / "conf", files), write_tree(tmp_path / "rego", {}))
    return [s.describe() for s in result.errors]


def test_higher_priority_and_longer_rules_are_tried_first(tmp_path):
    ingress = INGRESS_ROUTE + """
  - match: PathPrefix(`/`)
    kind: Rule
    priority: 1000
    services: [{name: whoami, port: 80}]
"""
    result = build_config(write_tree(tmp_path / "conf", {"u.yaml": UPSTREAM_YAML, "m.yaml": MIDDLEWARE,
                                                         "i.yaml": ingress}),
                          write_tree(tmp_path / "rego", {}))
    assert result.config is not None
    hosts = {vh.domains: [r.name for r in vh.routes] for vh in result.config.router.virtual_hosts}
    assert hosts[("api.example.com",)] == ["apps/whoami/routes[2]", "apps/whoami/routes[0]", "apps/whoami/routes[1]"]
    assert hosts[("*",)] == ["apps/whoami/routes[2]"]


def test_a_host_claimed_by_a_virtual_service_and_an_ingress_route_is_reported(tmp_path):
    vs = """
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: gloo, namespace: apps}
spec:
  virtualHost:
    domains: [api.example.com]
    routes:
    - routeAction: {single: {upstream: {name: whoami}}}
"""
    errors = _statuses(tmp_path, {"u.yaml": UPSTREAM_YAML, "m.yaml": MIDDLEWARE, "i.yaml": INGRESS_ROUTE,
                                  "vs.yaml": vs})
    assert any("'api.example.com' is claimed by both" in e and "IngressRoute apps/whoami" in e
               and "VirtualService apps/gloo" in e for e in errors), errors


def test_two_routes_with_the_same_rule_and_priority_are_reported(tmp_path):
    twin = INGRESS_ROUTE.replace("name: whoami\n  namespace", "name: twin\n  namespace")
    errors = _statuses(tmp_path, {"u.yaml": UPSTREAM_YAML, "m.yaml": MIDDLEWARE, "i.yaml": INGRESS_ROUTE,
                                  "twin.yaml": twin})
    assert any("apps/whoami/routes[0] and apps/twin/routes[0] have the same rule and priority" in e
               for e in errors), errors


@pytest.mark.parametrize("files, expected", [
    ({"i.yaml": INGRESS_ROUTE.replace("PathPrefix(`/secure`)", "PathPrefix(`/secure`")},
     ["IngressRoute apps/whoami", "i.yaml:10)", "spec.routes[0].match: line 1, column 48: expected ',' or ')'"]),
    ({"i.yaml": INGRESS_ROUTE.replace("- name: oauth2-token-introspection", "- name: nope")},
     ["IngressRoute apps/whoami", "spec.routes[0].middlewares[0].name: Middleware apps/nope not found"]),
    ({"i.yaml": INGRESS_ROUTE.replace("- name: whoami\n      port: 80\n    middlewares", "- name: web\n"
                                      "      port: 80\n    middlewares")},
     ["services[0].name: Upstream apps/web not found: declare the Kubernetes Service web as an Upstream"]),
    ({"m.yaml": MIDDLEWARE.replace("plugin:\n    oAuthIntrospection:", "rateLimit:\n    average:")},
     ["Middleware apps/oauth2-token-introspection", "Middleware kind 'rateLimit' is not supported "
      "(supported: plugin.oAuthIntrospection, plugin.jwt, plugin.opa, headers, stripPrefix, addPrefix, replacePath, replacePathRegex); "
      "see README.md, section 'Coming from Traefik Hub'"]),
    ({"m.yaml": MIDDLEWARE.replace("oAuthIntrospection:", "oAuthIntrospecton:")},
     ["plugin 'oAuthIntrospecton' is not supported (did you mean oAuthIntrospection?)"]),
    ({"m.yaml": MIDDLEWARE.replace("forwardHeaders:", "forwardHeader:")},
     ["spec.plugin.oAuthIntrospection.forwardHeader: unknown field (did you mean forwardHeaders?)"]),
    ({"m.yaml": MIDDLEWARE.replace("timeoutSeconds: 2", "timeoutSecond: 2")},
     ["clientConfig.timeoutSecond: unknown field (did you mean timeoutSeconds?)"]),
    ({"m.yaml": MIDDLEWARE.replace(f'url: "{IDP}"', 'url: "ftp://idp"')},
     ["spec.plugin.oAuthIntrospection.clientConfig.url: must be an http:// or https:// URL"]),
    ({"m.yaml": MIDDLEWARE.replace("Equals(`grp`, `admin`) ||", "Equals(`grp`) ||")},
     ["spec.plugin.oAuthIntrospection.claims: line 1, column 1: Equals takes 2 arguments"]),
    ({"m.yaml": MIDDLEWARE.replace("secret:introspection:basic", "secret:introspection:nokey")},
     ["Secret apps/introspection has no key 'nokey'"]),
    ({"m.yaml": MIDDLEWARE.replace("traefik.io/v1alpha1", "traefik.io/v2")},
     ["apiVersion must be traefik.io/v1alpha1 or traefik.containo.us/v1alpha1"]),
], ids=["malformed rule", "dangling middleware", "kubernetes service without upstream", "unsupported kind",
        "misspelt plugin", "misspelt field", "misspelt client option", "bad url names traefik's field",
        "malformed claims", "dangling secret key", "unknown api version"])
def test_broken_traefik_resources_are_rejected_with_where_and_why(tmp_path, files, expected):
    errors = _statuses(tmp_path, {"u.yaml": UPSTREAM_YAML, "m.yaml": MIDDLEWARE, "i.yaml": INGRESS_ROUTE, **files})
    text = "\n".join(errors)
    for part in expected:
        assert part in text, text


def test_the_older_api_group_is_accepted(tmp_path):
    files = {"u.yaml": UPSTREAM_YAML, "m.yaml": MIDDLEWARE.replace("traefik.io/", "traefik.containo.us/"),
             "i.yaml": INGRESS_ROUTE.replace("traefik.io/", "traefik.containo.us/")}
    assert _statuses(tmp_path, files) == []


def test_username_claim_is_the_subject_of_the_access_record(make_app, requests_mock, access_records):
    app = _app(make_app)
    _idp(requests_mock)
    _upstream(requests_mock)
    response = app.test_client().get("/secure", headers={"Host": "api.example.com", **bearer(GOOD)})
    assert response.status_code == 200
    fields = access_records[-1].fields
    assert fields["sub"] == "ada"
    assert fields["route"] == "apps/whoami/routes[0]"
    assert fields["auth_config"] == "apps/oauth2-token-introspection"


TEMPLATED = MIDDLEWARE.replace(
    "          Authorization: urn:k8s:secret:introspection:basic",
    "          Authorization: urn:k8s:secret:introspection:basic\n"
    "          X-Forwarded-Host: '{{ .Request.Host }}'\n"
    "          X-Original: '{{ .Request.Method }} {{ .Request.URL }} {{ .Request.Header.Get \"X-Tenant\" }}'")


def test_templated_idp_headers_are_rendered_per_request_and_key_the_cache(make_app, requests_mock):
    idp = _idp(requests_mock)
    requests_mock.get(f"{UPSTREAM}/secure", json={})
    app = make_app({"upstream.yaml": UPSTREAM_YAML, "middleware.yaml": TEMPLATED, "ingress.yaml": INGRESS_ROUTE,
                    "b.yaml": INGRESS_ROUTE.replace("api.example.com", "b.example.com")
                    .replace("name: whoami\n  namespace", "name: b\n  namespace")})
    client = app.test_client()
    credentials = bearer(GOOD, **{"X-Tenant": "acme"})
    assert client.get("/secure?a=1", headers={"Host": "api.example.com", **credentials}).status_code == 200
    sent = idp.last_request.headers
    assert sent["X-Forwarded-Host"] == "api.example.com"
    assert sent["X-Original"] == "GET /secure?a=1 acme"
    assert client.get("/secure?a=1", headers={"Host": "api.example.com", **credentials}).status_code == 200
    assert idp.call_count == 1
    assert client.get("/secure?a=1", headers={"Host": "b.example.com", **credentials}).status_code == 200
    assert idp.call_count == 2
    assert idp.last_request.headers["X-Forwarded-Host"] == "b.example.com"


@pytest.mark.parametrize("template, message", [
    ("{{ .Request.RemoteAddr }}", "unsupported template {{ .Request.RemoteAddr }} (supported: {{ .Request.Host }}"),
    ('{{ .Request.Header.Get "X" | printf "%s" }}', "unsupported template"),
    ("{{ .Request.Host ", "unbalanced"),
], ids=["unknown field", "pipeline", "unbalanced braces"])
def test_unsupported_templates_are_refused_at_validation(tmp_path, template, message):
    middleware = MIDDLEWARE.replace("          Authorization: urn:k8s:secret:introspection:basic",
                                    f"          X-Custom: '{template}'")
    errors = _statuses(tmp_path, {"u.yaml": UPSTREAM_YAML, "m.yaml": middleware, "i.yaml": INGRESS_ROUTE})
    text = "\n".join(errors)
    assert "spec.plugin.oAuthIntrospection.clientConfig.headers.X-Custom" in text and message in text, text


@pytest.mark.parametrize("document, message", [
    (MIDDLEWARE.replace("kind: Middleware", "kind: Middlewares"),
     "unknown kind 'Middlewares' (did you mean Middleware?) (known: "),
    (INGRESS_ROUTE.replace("kind: IngressRoute", "kind: IngressRouteTCP"),
     "unknown kind 'IngressRouteTCP' (did you mean IngressRoute?) (known: "),
    (INGRESS_ROUTE.replace("kind: IngressRoute", "kind: TraefikService"),
     "Traefik resources other than Middleware and IngressRoute are not supported: see README.md, section "
     "'Coming from Traefik Hub'"),
    (INGRESS_ROUTE.replace("  entryPoints: [web]", "  entryPoint: [web]"),
     "spec.entryPoint: unknown field (did you mean entryPoints?) (known: entryPoints, tls, routes); see README.md"),
], ids=["misspelt kind", "tcp route", "other traefik kind", "misspelt spec field"])
def test_unknown_kinds_and_fields_name_the_nearest_and_the_readme_section(tmp_path, document, message):
    errors = _statuses(tmp_path, {"u.yaml": UPSTREAM_YAML, "m.yaml": MIDDLEWARE, "x.yaml": document})
    assert any(message in e for e in errors), errors


def test_validate_notes_that_entry_points_are_ignored(tmp_path):
    result = build_config(write_tree(tmp_path / "conf", {"u.yaml": UPSTREAM_YAML, "m.yaml": MIDDLEWARE,
                                                         "i.yaml": INGRESS_ROUTE}),
                          write_tree(tmp_path / "rego", {}))
    lines = [s.describe() for s in result.statuses if s.kind == "IngressRoute"]
    assert len(lines) == 1
    assert lines[0].endswith("ACCEPTED (note: entryPoints web ignored: the gateway has one listener)")


def test_tls_ca_cert_and_key_given_as_pem_text_or_secret_reach_the_idp(tmp_path):
    from tests.test_introspection_tls import TOKEN
    from tests.test_introspection_tls import https_idp
    from tls_material import write_tls_material

    (tmp_path / "tls").mkdir()
    material = write_tls_material(tmp_path / "tls")
    ca_pem = material.ca_cert.read_text()
    secret = f"""
apiVersion: v1
kind: Secret
metadata: {{name: idp-client, namespace: apps}}
stringData:
  tls.crt: {json.dumps(material.client_cert.read_text())}
  tls.key: {json.dumps(material.client_key.read_text())}
"""
    with https_idp(material, require_client_cert=True) as url:
        middleware = MIDDLEWARE.replace(f'url: "{IDP}"', f'url: "{url}"').replace(
            "        maxRetries: 0", "        maxRetries: 0\n        tls:\n          ca: |\n"
            + "\n".join("            " + line for line in ca_pem.splitlines())
            + "\n          cert: urn:k8s:secret:idp-client:tls.crt\n          key: urn:k8s:secret:idp-client:tls.key")
        result = build_config(write_tree(tmp_path / "conf", {"u.yaml": UPSTREAM_YAML, "m.yaml": middleware,
                                                             "i.yaml": INGRESS_ROUTE, "s.yaml": secret}),
                              write_tree(tmp_path / "rego", {}))
        assert result.config is not None, [s.describe() for s in result.errors]
        route = result.config.router.virtual_hosts[0].routes[0]
        validator = route.auth.steps[0].validator
        assert "gateway-pem-" in validator.settings.tls.ca_bundle
        assert validator.validate(TOKEN).claims["sub"] == "alice"
        for path in (validator.settings.tls.ca_bundle, validator.settings.tls.client_key):
            assert oct(pathlib.Path(path).stat().st_mode & 0o777) == "0o600"
