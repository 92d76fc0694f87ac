"""Config errors a person can read: typos named as typos, one broken module breaks only itself,
references resolved in one documented order, and Gloo-guide kinds accepted with a notice."""

from __future__ import annotations

import typing as t

import pytest

from gateway_app.config.build import build_config
from gateway_app.config.fields import Node
from gateway_app.config.fields import nearest_name
from gateway_app.errors import ConfigError

from tests.test_config_build import build  # noqa: F401 - the fixture


def _status(result: t.Any, kind: str, name: str) -> t.Any:
    return next(s for s in result.statuses if s.kind == kind and f"{s.namespace}/{s.name}" == name)


INTROSPECTION_WITH_TYPO = """\
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: oidc, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        introspection:
          introspectionUrl: http://127.0.0.1:4445/admin/oauth2/introspect
          clientId: my-client
          clientSecretReff: {name: my-client-secret}
"""


# -- item 6: typos ------------------------------------------------------------------------------


def test_a_misspelt_field_is_reported_as_unknown_with_the_nearest_name_before_the_missing_field(build):
    result = build({"auth.yaml": INTROSPECTION_WITH_TYPO})

    status = _status(result, "AuthConfig", "gloo-system/oidc")
    assert "unknown field clientSecretReff (did you mean clientSecretRef?)" in status.error
    assert "disableClientSecret" not in status.error
    assert status.line == 11                      # the typo's own line, not the resource's first


def test_an_unknown_field_names_the_nearest_known_field():
    node = Node({"requiredScope": ["a"], "issuer": "x"}, where="f.yaml")
    node.str("issuer")
    node.str_list("requiredScopes")
    with pytest.raises(ConfigError, match=r"spec.requiredScope: unknown field requiredScope "
                                          r"\(did you mean requiredScopes\?\)"):
        node.done()


def test_an_unknown_field_like_no_known_one_is_reported_without_a_guess():
    node = Node({"zzz": 1, "issuer": "x"}, where="f.yaml")
    node.str("issuer")
    with pytest.raises(ConfigError) as caught:
        node.done()
    assert caught.value.detail == "spec.zzz: unknown field zzz"


def test_a_typo_of_a_required_field_is_reported_instead_of_the_missing_field():
    node = Node({"introspectionURL": "http://x"}, where="f.yaml")
    with pytest.raises(ConfigError) as caught:
        node.str("introspectionUrl", required=True)
    assert "unknown field introspectionURL (did you mean introspectionUrl?)" in caught.value.detail


# -- item 9: Gloo guide kinds and snake_case ------------------------------------------------------


def test_snake_case_from_the_gloo_proto_docs_is_named_as_its_camel_case_field():
    assert nearest_name("remote_jwks", ["localJwks", "remoteJwks", "issuer"]) == "remoteJwks"


def test_remote_jwks_in_snake_case_is_rejected_naming_remote_jwks(build):
    result = build({"auth.yaml": """\
        kind: AuthConfig
        metadata: {name: jwt, namespace: team}
        spec:
          configs:
          - oauth2:
              accessTokenValidation:
                jwt:
                  remote_jwks: {url: 'http://127.0.0.1:1/jwks'}
        """})
    assert "unknown field remote_jwks (did you mean remoteJwks?)" in _status(result, "AuthConfig", "team/jwt").error


@pytest.mark.parametrize("kind", ["VirtualGateway", "Workspace", "WorkspaceSettings", "ExtAuthServer"])
def test_kinds_copied_from_gloo_guides_are_accepted_with_a_one_line_notice(build, kind):
    result = build({"extra.yaml": f"""\
        apiVersion: networking.gloo.solo.io/v2
        kind: {kind}
        metadata: {{name: copied, namespace: gloo-mesh}}
        spec: {{workloads: [{{selector: {{labels: {{app: istio-ingressgateway}}}}}}]}}
        """})
    status = _status(result, kind, "gloo-mesh/copied")
    assert status.accepted
    assert status.note and "\n" not in status.note
    assert status.describe().endswith(f"ACCEPTED (note: {status.note})")
    assert result.config is not None


# -- item 8: references ---------------------------------------------------------------------------

POLICY_CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: policy, namespace: team}
data:
  policy.rego: |
    package fromconfigmap
    import rego.v1
    allow if input.http_request.method == "GET"
"""

OPA_AUTHCONFIG = """\
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: opa, namespace: team}
spec:
  configs:
  - opaAuth:
      modules: [MODULE]
      query: data.fromconfigmap.allow
"""


def test_a_module_reference_without_namespace_uses_the_referring_resources_namespace(build):
    result = build({"cm.yaml": POLICY_CONFIGMAP, "auth.yaml": OPA_AUTHCONFIG.replace("MODULE", "{name: policy}")})
    assert result.errors == []


def test_a_configmap_reference_to_a_wrong_namespace_is_an_error_not_a_fall_back_to_rego_dir(build):
    same_named_file = {"policy.rego": "package fromconfigmap\nimport rego.v1\nallow := true\n"}
    result = build({"cm.yaml": POLICY_CONFIGMAP,
                    "auth.yaml": OPA_AUTHCONFIG.replace("MODULE", "{name: policy, namespace: other}")},
                   rego=same_named_file)
    error = _status(result, "AuthConfig", "team/opa").error
    assert "ConfigMap other/policy not found (there is ConfigMap team/policy; set namespace)" in error


def test_a_reference_without_namespace_does_not_find_a_resource_in_default(build):
    result = build({"vs.yaml": """\
        kind: Upstream
        metadata: {name: backend}
        spec: {static: {hosts: [{addr: 127.0.0.1, port: 8000}]}}
        ---
        kind: VirtualService
        metadata: {name: vs, namespace: team}
        spec:
          virtualHost:
            domains: ['*']
            routes: [{routeAction: {single: {upstream: {name: backend}}}}]
        """})
    error = _status(result, "VirtualService", "team/vs").error
    assert "Upstream team/backend not found (there is Upstream default/backend; set namespace)" in error


# -- item 7: one broken module breaks only itself; dependents are rejected naming it ----------------

GOOD_REGO = "package good\nimport rego.v1\nallow if input.http_request.method == \"GET\"\n"
BROKEN_REGO = "package broken\nimport rego.v1\n\nallow if {\n  input.x ==\n}\n"


def _opa(name: str, module: str, query: str) -> str:
    return f"""\
        apiVersion: enterprise.gloo.solo.io/v1
        kind: AuthConfig
        metadata: {{name: {name}, namespace: team}}
        spec:
          configs:
          - opaAuth:
              modules: [{{name: {module}}}]
              query: {query}
        """


def test_a_broken_rego_module_is_rejected_alone_and_the_others_still_load(build, tmp_path):
    result = build({"a.yaml": _opa("uses-good", "good", "data.good.allow")},
                   rego={"good.rego": GOOD_REGO, "broken.rego": BROKEN_REGO})

    broken = _status(result, "RegoModule", "-/broken")
    assert broken.error.startswith(f"{tmp_path / 'rego' / 'broken.rego'}:6:1: ")
    assert broken.line == 6
    assert _status(result, "RegoModule", "-/good").accepted
    assert _status(result, "AuthConfig", "team/uses-good").accepted


def test_a_resource_referencing_a_broken_module_is_rejected_with_that_modules_reason(build):
    result = build({"a.yaml": _opa("uses-broken", "broken", "data.broken.allow")},
                   rego={"good.rego": GOOD_REGO, "broken.rego": BROKEN_REGO})

    error = _status(result, "AuthConfig", "team/uses-broken").error
    assert "depends on rejected Rego module broken: " in error
    assert "broken.rego:6:1" in error
    assert "no module" not in error


def test_every_resource_depending_on_a_rejected_one_is_rejected_naming_the_dependency(build):
    result = build({
        "auth.yaml": INTROSPECTION_WITH_TYPO,
        "vs.yaml": """\
            kind: VirtualService
            metadata: {name: vs, namespace: gloo-system}
            spec:
              virtualHost:
                domains: ['*']
                routes:
                - routeAction: {single: {url: 'http://127.0.0.1:1'}}
                  options: {extauth: {configRef: {name: oidc}}}
            """,
        "secretless.yaml": """\
            kind: Secret
            metadata: {name: empty, namespace: gloo-system}
            ---
            kind: AuthConfig
            metadata: {name: uses-secret, namespace: gloo-system}
            spec:
              configs:
              - oauth2:
                  accessTokenValidation:
                    introspection:
                      introspectionUrl: http://127.0.0.1:1/i
                      clientId: c
                      clientSecretRef: {name: empty}
            """,
    })
    vs_error = _status(result, "VirtualService", "gloo-system/vs").error
    assert "depends on rejected AuthConfig gloo-system/oidc: " in vs_error
    assert "clientSecretReff" in vs_error
    secret_user = _status(result, "AuthConfig", "gloo-system/uses-secret").error
    assert "depends on rejected Secret gloo-system/empty: a Secret needs data or stringData" in secret_user
