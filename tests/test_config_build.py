"""build_config: every kind compiled into the router, and broken configs named by file, resource and field."""

from __future__ import annotations

import base64
import json
import pathlib
import typing as t

import pytest

from gateway_app.auth.steps import OAuth2Step
from gateway_app.auth.steps import OpaStep
from gateway_app.config.build import build_config
from gateway_app.config.build import load_config
from gateway_app.config.loader import load_file
from gateway_app.config.secrets import parse_secret
from gateway_app.errors import ConfigError
from gateway_app.incoming import IncomingRequest
from gateway_app.routing import Route

from tests.keys import public_jwk
from tests.factories import write_tree
from tests.keys import rsa_key
from tests.support.servers import REPO_ROOT as REPO
from tests.factories import incoming_request



UPSTREAMS = """
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: httpbin, namespace: gloo-system}
spec:
  static:
    hosts: [{addr: 127.0.0.1, port: 8000}, {addr: 127.0.0.2, port: 8001}]
  connectionConfig: {connectTimeout: 500ms}
  requestTimeout: 2m
---
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: secure, namespace: gloo-system}
spec:
  static:
    useTls: true
    hosts: [{addr: '::1', port: 8443}]
"""

SECRET_AND_AUTH = """
apiVersion: v1
kind: Secret
metadata: {name: client-secret, namespace: gloo-system}
stringData: {client-secret: secret}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: oidc-hydra, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        introspection:
          introspectionUrl: http://127.0.0.1:4445/admin/oauth2/introspect
          clientId: my-client
          clientSecretRef: {name: client-secret, namespace: gloo-system}
        dynamicMetadataFromClaims:
          sub: sub
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: jwt-and-policy, namespace: gloo-system}
spec:
  booleanExpr: token and (policy or not token)
  configs:
  - name: token
    oauth2:
      accessTokenValidation:
        jwt:
          localJwks:
            inlineString: '%(jwks)s'
        requiredScopes: [petstore]
  - name: policy
    opaAuth:
      modules: [{name: allow-all, namespace: gloo-system}]
      query: data.allowall.allow
"""

REGO = {"allow-all.rego": "package allowall\n\nimport rego.v1\n\nallow if input.state.jwtAccessToken.sub\n"}

VIRTUAL_SERVICE = """
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: api, namespace: gloo-system}
spec:
  virtualHost:
    domains: [api.example.com, '*.example.com:8080']
    options:
      extauth:
        configRef: {name: oidc-hydra, namespace: gloo-system}
      stagedTransformations:
        regular:
          requestTransforms:
          - requestTransformation:
              transformationTemplate:
                headers:
                  x-customer:
                    text: '{{ dynamic_metadata("config_0:sub", "envoy.filters.http.ext_authz")}}'
    routes:
    - name: exact-status
      matchers: [{exact: /status}]
      routeAction: {single: {url: 'http://127.0.0.1:9000/base'}}
      options:
        extauth: {disable: true}
    - name: items-by-id
      matchers: [{regex: '/items/[0-9]+', methods: [GET, head]}]
      routeAction: {single: {upstream: {name: secure}}}
    - name: jwt-api
      matchers:
      - prefix: /jwt
        headers: [{name: X-Env, value: prod}]
      routeAction: {single: {upstream: {name: httpbin}}}
      options:
        extauth:
          configRef: {name: jwt-and-policy}
        prefixRewrite: /anything
    - name: default
      matchers: [{prefix: /}]
      routeAction: {single: {upstream: {name: httpbin, namespace: gloo-system}}}
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: fallback, namespace: default}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - routeAction: {single: {url: 'http://127.0.0.1:9001'}}
"""


def request(path: str, host: str = "api.example.com", method: str = "GET", **headers: str) -> IncomingRequest:
    return incoming_request(path, method=method, host=host,
                            headers={name.replace("_", "-"): value for name, value in headers.items()})


@pytest.fixture
def build(tmp_path: pathlib.Path) -> t.Callable[..., t.Any]:
    def factory(files: t.Mapping[str, str], rego: t.Mapping[str, str] | None = None) -> t.Any:
        write_tree(tmp_path / "conf", files)
        write_tree(tmp_path / "rego", rego or {})
        return build_config(tmp_path / "conf", tmp_path / "rego")
    return factory


@pytest.fixture
def router(build: t.Callable[..., t.Any]) -> t.Any:
    jwks = json.dumps({"keys": [public_jwk(rsa_key(), kid="k1", alg="RS256")]})
    result = build({"upstreams.yaml": UPSTREAMS, "auth.yaml": SECRET_AND_AUTH % {"jwks": jwks},
                    "vs.yaml": VIRTUAL_SERVICE}, REGO)
    assert result.errors == [], [s.describe() for s in result.errors]
    return result.config.router


def route_for(router: t.Any, path: str, **kwargs: t.Any) -> Route:
    return router.match(request(path, **kwargs)).route


@pytest.mark.parametrize("host, virtual_host", [
    ("api.example.com", "VirtualService gloo-system/api"),
    ("api.example.com:443", "VirtualService gloo-system/api"),
    ("shop.example.com", "VirtualService gloo-system/api"),
    ("shop.example.com:9", "VirtualService gloo-system/api"),
    ("example.com", "VirtualService default/fallback"),
    ("other.test", "VirtualService default/fallback"),
], ids=["exact", "exact with a port", "wildcard declared with a port", "wildcard with another port",
        "bare domain falls to star", "any other host falls to star"])
def test_virtual_service_domains_are_port_insensitive(router, host, virtual_host):
    assert router.match(request("/", host=host)).virtual_host.name == virtual_host


def test_matchers_prefix_exact_regex_methods_and_headers(router):
    assert route_for(router, "/status").name == "exact-status"
    assert route_for(router, "/status/1").name == "default"
    assert route_for(router, "/items/12", method="HEAD").name == "items-by-id"
    assert route_for(router, "/items/12", method="POST").name == "default"
    assert route_for(router, "/items/12x").name == "default"
    assert route_for(router, "/jwt/x", x_env="prod").name == "jwt-api"
    assert route_for(router, "/jwt/x", x_env="dev").name == "default"


def test_route_actions_url_and_upstreams_with_static_hosts_tls_and_timeouts(router):
    url_target, = route_for(router, "/status").targets
    first, second = route_for(router, "/").targets
    secure, = route_for(router, "/items/1").targets

    assert url_target.base_url == "http://127.0.0.1:9000/base"
    assert (first.base_url, second.base_url) == ("http://127.0.0.1:8000", "http://127.0.0.2:8001")
    assert (first.connect_timeout, first.read_timeout) == (0.5, 120.0)
    assert secure.base_url == "https://[::1]:8443"


def test_virtual_host_extauth_applies_unless_a_route_overrides_or_disables_it(router):
    assert route_for(router, "/").auth.name == "gloo-system/oidc-hydra"
    assert route_for(router, "/items/1").auth.name == "gloo-system/oidc-hydra"
    assert route_for(router, "/jwt/a", x_env="prod").auth.name == "gloo-system/jwt-and-policy"
    assert route_for(router, "/status").auth is None


def test_seed_transformation_template_is_compiled_and_its_header_is_managed(router):
    route = route_for(router, "/")
    assert route.transforms.header_names == {"x-customer"}
    assert "x-customer" in route.managed_headers


def test_an_open_route_strips_every_header_any_route_of_the_config_sets(router):
    """Red team F4: ``X-Customer: evil`` on an open route reached the upstream that a protected
    route feeds ``X-Customer`` from the token's ``sub``."""
    protected = route_for(router, "/")
    for open_route in (route_for(router, "/status"), route_for(router, "/", host="other.test")):
        assert open_route.auth is None
        assert "x-customer" in open_route.managed_headers
        assert open_route.managed_headers == protected.managed_headers


def test_prefix_rewrite_replaces_the_matched_prefix(router):
    assert route_for(router, "/jwt/a", x_env="prod").upstream_path("/jwt/a") == "/anything/a"


def test_auth_configs_compile_introspection_jwt_opa_and_boolean_expr(router):
    introspection = route_for(router, "/").auth
    combined = route_for(router, "/jwt/a", x_env="prod").auth

    step, = introspection.steps
    assert isinstance(step, OAuth2Step) and step.validator_kind == "introspection"
    assert step.metadata_from_claims == {"sub": "sub"}
    token, policy = combined.steps
    assert isinstance(token, OAuth2Step) and token.validator_kind == "jwt"
    assert token.required_scopes == ("petstore",)
    assert isinstance(policy, OpaStep) and policy.query == "data.allowall.allow"
    assert combined.boolean_expr_text == "token and (policy or not token)"


def _resource(tmp_path: pathlib.Path, text: str) -> t.Any:
    path = write_tree(tmp_path, {"secret.yaml": text}) / "secret.yaml"
    return load_file(path)[0]


def test_secret_string_data_and_base64_data_decode_to_the_same_hidden_value(tmp_path):
    encoded = base64.b64encode(b"s3cr3t").decode()
    plain = parse_secret(_resource(tmp_path, "kind: Secret\nmetadata: {name: a}\nstringData: {client-secret: s3cr3t}"))
    data = parse_secret(_resource(tmp_path, f"kind: Secret\nmetadata: {{name: b}}\ndata: {{client-secret: {encoded}}}"))

    assert plain.values["client-secret"].reveal() == data.values["client-secret"].reveal() == "s3cr3t"
    assert "s3cr3t" not in repr(plain.values) + str(data.values["client-secret"])


def test_shipped_conf_is_accepted_with_the_seed_rego():
    result = build_config(REPO / "conf", REPO / "rego")
    assert result.errors == []
    assert {s.kind for s in result.statuses} >= {"VirtualService", "AuthConfig", "Secret", "Upstream",
                                                 "RouteTable", "ExtAuthPolicy"}


VS_HEAD = """
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: broken, namespace: team}
spec:
  virtualHost:
    domains: ['*']
    routes:
"""

BROKEN = {
    "bad yaml": ({"vs.yaml": "kind: VirtualService\nmetadata: {name: x\n"}, ["vs.yaml", "invalid YAML"]),
    "unknown kind": ({"x.yaml": "kind: Gateway\nmetadata: {name: gw}\nspec: {}\n"},
                     ["x.yaml", "Gateway default/gw", "unknown kind 'Gateway'"]),
    "unknown field": ({"vs.yaml": VS_HEAD + "    - matchers: [{prefix: /, prefx: /a}]\n"
                                            "      routeAction: {single: {url: 'http://127.0.0.1:1'}}\n"},
                      ["vs.yaml", "VirtualService team/broken", "spec.virtualHost.routes[0].matchers[0].prefx",
                       "unknown field"]),
    "dangling upstream": ({"vs.yaml": VS_HEAD + "    - routeAction: {single: {upstream: {name: nowhere}}}\n"},
                          ["vs.yaml", "VirtualService team/broken",
                           "spec.virtualHost.routes[0].routeAction.single.upstream.name", "team/nowhere not found"]),
    "dangling auth config": ({"vs.yaml": VS_HEAD + "    - routeAction: {single: {url: 'http://127.0.0.1:1'}}\n"
                                                   "      options: {extauth: {configRef: {name: gone}}}\n"},
                             ["VirtualService team/broken", "options.extauth.configRef.name",
                              "AuthConfig team/gone not found"]),
    "bad regex": ({"vs.yaml": VS_HEAD + "    - matchers: [{regex: '/items/(['}]\n"
                                        "      routeAction: {single: {url: 'http://127.0.0.1:1'}}\n"},
                  ["VirtualService team/broken", "spec.virtualHost.routes[0].matchers[0].regex", "bad regex"]),
    "dangling secret": ({"auth.yaml": """
        kind: AuthConfig
        metadata: {name: a, namespace: team}
        spec:
          configs:
          - oauth2:
              accessTokenValidation:
                introspection:
                  introspectionUrl: http://127.0.0.1:1/introspect
                  clientId: c
                  clientSecretRef: {name: missing}
    """}, ["auth.yaml", "AuthConfig team/a", "clientSecretRef.name", "Secret team/missing not found"]),
    "dangling rego module": ({"auth.yaml": """
        kind: AuthConfig
        metadata: {name: a, namespace: team}
        spec:
          configs:
          - opaAuth:
              modules: [{name: nope}]
              query: data.x.allow
    """}, ["AuthConfig team/a", "spec.configs[0].opaAuth.modules[0].name", "nope"]),
    "bad booleanExpr": ({"auth.yaml": """
        kind: AuthConfig
        metadata: {name: a, namespace: team}
        spec:
          booleanExpr: first and second
          configs:
          - name: first
            oauth2: {accessTokenValidation: {introspectionUrl: 'http://127.0.0.1:1/i'}}
    """}, ["AuthConfig team/a", "spec.booleanExpr", "no config named 'second'"]),
    "bad template": ({"vs.yaml": VS_HEAD + """\
    - routeAction: {single: {url: 'http://127.0.0.1:1'}}
      options:
        stagedTransformations:
          regular:
            requestTransforms:
            - requestTransformation:
                transformationTemplate:
                  headers: {x-customer: {text: '{{ env("HOME") }}'}}
"""}, ["VirtualService team/broken", "transformationTemplate.headers.x-customer.text", "env()"]),
    "bad claims expression": ({"auth.yaml": """
        kind: AuthConfig
        metadata: {name: a, namespace: team}
        spec:
          configs:
          - oauth2:
              accessTokenValidation:
                introspectionUrl: 'http://127.0.0.1:1/i'
                claims: 'input.claims.tier =='
    """}, ["AuthConfig team/a", "spec.configs[0].oauth2.accessTokenValidation.claims", "does not compile"]),
    "bad secret base64": ({"s.yaml": "kind: Secret\nmetadata: {name: s}\ndata: {k: '***'}\n"},
                          ["s.yaml", "Secret default/s", "data.k", "base64"]),
    "upstream without hosts": ({"u.yaml": "kind: Upstream\nmetadata: {name: u}\nspec: {static: {hosts: []}}\n"},
                               ["Upstream default/u", "spec.static.hosts", "at least one host"]),
}


@pytest.mark.parametrize("files, expected", list(BROKEN.values()), ids=list(BROKEN))
def test_broken_config_is_rejected_naming_file_resource_and_field(build, files, expected):
    result = build(files)

    assert result.config is None
    message = "\n".join(s.describe() for s in result.errors)
    for part in expected:
        assert part in message


@pytest.mark.parametrize("variant", ["'API.example.com:8080'", "'api.example.com.'"],
                         ids=["another case and a port", "a trailing root dot"])
def test_two_virtual_services_claiming_one_domain_are_rejected(build, variant):
    other = VS_HEAD.replace("broken", "other").replace("'*'", variant)
    first = VS_HEAD.replace("'*'", "api.example.com")
    route = "    - routeAction: {single: {url: 'http://127.0.0.1:1'}}\n"
    result = build({"a.yaml": first + route, "b.yaml": other + route})
    assert result.config is None
    assert "is claimed by both" in "\n".join(s.describe() for s in result.errors)


def test_load_config_raises_one_config_error_listing_every_rejection(tmp_path):
    write_tree(tmp_path / "conf", {"a.yaml": BROKEN["unknown kind"][0]["x.yaml"],
                                   "b.yaml": BROKEN["bad regex"][0]["vs.yaml"]})
    (tmp_path / "rego").mkdir()
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "conf", tmp_path / "rego")
    assert "Gateway default/gw" in str(caught.value)
    assert "VirtualService team/broken" in str(caught.value)


def test_secret_values_never_appear_in_config_errors(build):
    result = build({"auth.yaml": """
        kind: Secret
        metadata: {name: s, namespace: team}
        stringData: {client-secret: hunter2-secret-value}
        ---
        kind: AuthConfig
        metadata: {name: a, namespace: team}
        spec:
          configs:
          - oauth2:
              accessTokenValidation:
                introspection:
                  introspectionUrl: not-a-url
                  clientId: c
                  clientSecretRef: {name: s}
    """})
    message = "\n".join(s.describe() for s in result.errors)
    assert "introspectionUrl" in message
    assert "hunter2" not in message
