"""``gateway-app validate``: one line per resource, the right reason and file:line, the exit status."""

from __future__ import annotations

import pathlib
import re

import pytest

from gateway_app.cli import main

REPO = pathlib.Path(__file__).resolve().parent.parent
BROKEN = REPO / "tests" / "fixtures" / "broken"
_LINE = re.compile(r"^(?P<resource>\S+ \S+) \((?P<where>[^)]*)\): (?P<state>ACCEPTED|REJECTED: .*)$")


def validate(capsys: pytest.CaptureFixture[str], config_dir: pathlib.Path, rego_dir: pathlib.Path,
             ) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Exit status, ``{"Kind ns/name": (where, state)}``, and the summary line."""
    status = main(["validate", "--config-dir", str(config_dir), "--rego-dir", str(rego_dir)])
    lines = capsys.readouterr().out.splitlines()
    statuses = {}
    for line in lines[:-1]:
        match = _LINE.match(line)
        assert match, f"not a status line: {line!r}"
        statuses[match["resource"]] = (match["where"], match["state"])
    return status, statuses, lines[-1]


@pytest.mark.parametrize("resource, where, reason", [
    ("File -/bad-yaml.yaml", "bad-yaml.yaml:4", "invalid YAML: mapping values are not allowed here"),
    ("VirtualServise default/typo-in-kind", "unknown-kind.yaml:1", "unknown kind 'VirtualServise'"),
    ("Upstream default/unknown-field", "unknown-field.yaml:11", "spec.useTLS: unknown field"),
    ("VirtualService default/dangling-upstream", "dangling-upstream.yaml:14",
     "upstream.name: Upstream default/no-such-upstream not found"),
    ("VirtualService default/dangling-authconfig", "dangling-authconfig.yaml:12",
     "configRef.name: AuthConfig default/no-such-authconfig not found"),
    ("AuthConfig default/dangling-secret", "dangling-secret.yaml:14",
     "clientSecretRef.name: Secret default/no-such-secret not found"),
    ("AuthConfig default/dangling-rego-module", "dangling-rego-module.yaml:10",
     "opaAuth.modules[0].name: no ConfigMap default/no-such-module in the config and no module no-such-module.rego"),
    ("AuthConfig default/jwks-without-signing-keys", "jwks-without-signing-keys.yaml:13",
     "localJwks.inlineString: the JWKS has no signature keys"),
    ("VirtualService default/bad-regex", "bad-regex.yaml:11",
     "matchers[0].regex: bad regex '/api/(v1|v2': missing ), unterminated subpattern"),
], ids=["bad yaml", "unknown kind", "unknown field", "dangling upstream", "dangling auth config",
        "dangling secret", "dangling rego module", "jwks without signing keys", "regex that does not compile"])
def test_each_broken_resource_is_rejected_with_its_reason_and_file_line(capsys, resource, where, reason):
    status, statuses, summary = validate(capsys, BROKEN / "conf", REPO / "rego")

    assert resource in statuses, f"{resource} missing from {sorted(statuses)}"
    shown_where, state = statuses[resource]
    assert shown_where == f"{BROKEN / 'conf' / where}"
    assert state.startswith("REJECTED: ") and reason in state
    assert status == 1
    assert summary == "2 accepted, 9 rejected"


def test_the_valid_resources_beside_broken_ones_are_accepted(capsys):
    _, statuses, _ = validate(capsys, BROKEN / "conf", REPO / "rego")
    assert statuses["Upstream default/backend"][1] == "ACCEPTED"
    assert statuses["RegoModule -/oauth-scope-apiproduct-opa-cm"][1] == "ACCEPTED"


def test_a_rego_module_that_does_not_compile_is_rejected_with_file_line_and_column(capsys):
    status, statuses, _ = validate(capsys, REPO / "conf", BROKEN / "rego")

    rego = [(where, state) for resource, (where, state) in statuses.items() if resource.startswith("RegoModule")]
    assert len(rego) == 1
    where, state = rego[0]
    assert where == f"{BROKEN / 'rego' / 'broken.rego'}:8"
    assert state == f"REJECTED: {BROKEN / 'rego' / 'broken.rego'}:8:1: expecting expression"
    assert status == 1


def test_the_shipped_conf_and_rego_are_all_accepted(capsys):
    status, statuses, summary = validate(capsys, REPO / "conf", REPO / "rego")

    assert status == 0
    assert statuses and all(state == "ACCEPTED" for _, state in statuses.values())
    assert summary == f"{len(statuses)} accepted, 0 rejected"
    assert {"VirtualService gloo-system/httpbin", "AuthConfig gloo-system/oidc-hydra",
            "RouteTable gloo-mesh-gateways/api-example-com-rt"} <= set(statuses)


def test_validate_needs_no_network(capsys, requests_mock):
    """The shipped config names remote JWKS and introspection URLs: a syntax check calls none of them."""
    status, _, _ = validate(capsys, REPO / "conf", REPO / "rego")
    assert status == 0
    assert requests_mock.call_count == 0
