from __future__ import annotations

import argparse
import io
import json
import pathlib

import pytest

from gateway_app.errors import ConfigError
from gateway_app.policy.tooling import add_subcommands
from gateway_app.policy.tooling import evaluate_command
from gateway_app.policy.tooling import request_from_spec
from gateway_app.policy.tooling import run_rego_tests

SCOPE_POLICY = """package products
import rego.v1
default allow := false
allow if input.check_request.attributes.metadata_context.filter_metadata["io.solo.gloo.apimanagement"].api_product_id in split(input.state.jwtAccessToken.scope, " ")
"""

V0_POLICY = """package legacy
default allow = false
allow {
  input.user == "alice"
}
"""

V0_TESTS = """package legacy
test_alice_is_allowed {
  allow with input as {"user": "alice"}
}
test_bob_is_denied {
  not allow with input as {"user": "bob"}
}
"""


def write(directory: pathlib.Path, name: str, source: str) -> None:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)


def run_tests(rego_dir: pathlib.Path, verbose: bool = False) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = run_rego_tests(rego_dir, verbose=verbose, out=out)
    return code, out.getvalue().splitlines()


def evaluate(rego_dir: pathlib.Path, query: str, **kwargs) -> tuple[int, dict | str]:
    out = io.StringIO()
    code = evaluate_command(rego_dir, query, out=out, **kwargs)
    text = out.getvalue()
    return code, json.loads(text) if text.startswith("{") else text


# -- test-rego ------------------------------------------------------------------------------


def test_passing_v0_tests_print_pass_lines_and_return_0(tmp_path):
    write(tmp_path, "legacy.rego", V0_POLICY)
    write(tmp_path, "legacy_test.rego", V0_TESTS)

    code, lines = run_tests(tmp_path)

    assert code == 0
    assert lines[:2] == ["PASS data.legacy.test_alice_is_allowed", "PASS data.legacy.test_bob_is_denied"]
    assert lines[-1] == "2 passed, 0 failed"


def test_failing_test_prints_fail_with_its_location_and_returns_1(tmp_path):
    write(tmp_path, "legacy.rego", V0_POLICY)
    write(tmp_path, "team/legacy_test.rego", V0_TESTS + 'test_carol_is_allowed {\n  allow with input as {"user": "carol"}\n}\n')

    code, lines = run_tests(tmp_path)

    assert code == 1
    assert f"FAIL data.legacy.test_carol_is_allowed ({tmp_path / 'team' / 'legacy_test.rego'}:8): got undefined" in lines
    assert lines[-1] == "2 passed, 1 failed"


def test_tests_in_several_packages_and_v1_modules_are_all_found(tmp_path):
    write(tmp_path, "legacy.rego", V0_POLICY)
    write(tmp_path, "legacy_test.rego", V0_TESTS)
    write(tmp_path, "nested/checks_test.rego",
          'package team.checks\nimport rego.v1\ntest_math if 1 + 1 == 2\nhelper(x) := x\ntest_fn(x) := x\n')

    code, lines = run_tests(tmp_path)

    assert code == 0
    assert "PASS data.team.checks.test_math" in lines
    assert lines[-1] == "3 passed, 0 failed"


def test_test_that_errors_is_reported_as_error_and_fails(tmp_path):
    write(tmp_path, "conflict_test.rego", 'package conflict\nimport rego.v1\nx := input.a\nx := input.b\n'
                                          'test_conflict if x == 1 with input as {"a": 1, "b": 2}\n')

    code, lines = run_tests(tmp_path)

    assert code == 1
    assert lines[0].startswith("ERROR data.conflict.test_conflict (")
    assert "rule conflicts" in lines[0]
    assert lines[-1] == "0 passed, 1 failed"


def test_verbose_output_shows_locations_and_prints(tmp_path):
    write(tmp_path, "p_test.rego", 'package p\nimport rego.v1\ntest_talks if {\n  print("checking", 42)\n}\n')

    code, lines = run_tests(tmp_path, verbose=True)

    assert code == 0
    assert lines[0].startswith(f"PASS data.p.test_talks ({tmp_path / 'p_test.rego'}:3, ")
    assert any("checking 42" in line for line in lines[1:])


def test_directory_without_tests_fails(tmp_path):
    write(tmp_path, "legacy.rego", V0_POLICY)

    code, lines = run_tests(tmp_path)

    assert code == 1
    assert lines == [f"error: no test_* rules found under {tmp_path}"]


def test_module_that_does_not_compile_fails_with_its_location(tmp_path):
    write(tmp_path, "broken_test.rego", "package broken\nimport rego.v1\ntest_x if {\n  1 ==\n}\n")

    code, lines = run_tests(tmp_path)

    assert code == 1
    assert lines[0].startswith(f"error: {tmp_path / 'broken_test.rego'}:5:1: ")


# -- eval -------------------------------------------------------------------------------------


def test_eval_builds_the_input_from_a_request_and_claims_and_allows(tmp_path):
    write(tmp_path, "products.rego", SCOPE_POLICY)

    code, report = evaluate(tmp_path, "data.products.allow",
                            request_spec={"method": "get", "path": "/pets?limit=2", "host": "api.example.com",
                                          "headers": {"Authorization": "Bearer secret-token-value"}},
                            claims={"sub": "me", "scope": "openid pets"}, api_product_id="pets",
                            labels={"usagePlans": "dev-portal"})

    assert code == 0
    assert report["result"] is True
    assert report["decision"]["allowed"] is True and report["decision"]["reason"] == "policy_allowed"
    http = report["input"]["attributes"]["request"]["http"]
    assert (http["method"], http["path"], http["query"]) == ("GET", "/pets?limit=2", "limit=2")
    assert report["input"]["state"]["jwtAccessToken"] == {"sub": "me", "scope": "openid pets"}
    assert report["input"]["attributes"]["context_extensions"] == {"usagePlans": "dev-portal"}


def test_eval_output_never_shows_the_credential(tmp_path):
    write(tmp_path, "products.rego", SCOPE_POLICY)
    out = io.StringIO()

    evaluate_command(tmp_path, "data.products.allow", out=out,
                     request_spec={"headers": {"authorization": "Bearer secret-token-value", "cookie": "sid=abc"}})

    assert "secret-token-value" not in out.getvalue() and "sid=abc" not in out.getvalue()
    headers = json.loads(out.getvalue())["input"]["http_request"]["headers"]
    assert headers["authorization"].startswith("Bearer secr\N{HORIZONTAL ELLIPSIS}#")


def test_eval_denies_with_exit_code_1_when_the_scope_is_for_another_product(tmp_path):
    write(tmp_path, "products.rego", SCOPE_POLICY)

    code, report = evaluate(tmp_path, "data.products.allow", request_spec={}, claims={"scope": "tracks"},
                            api_product_id="pets")

    assert code == 1
    assert (report["result"], report["decision"]["reason"], report["decision"]["http_status"]) == (
        False, "policy_denied", 403)


def test_eval_uses_an_input_document_as_given(tmp_path):
    write(tmp_path, "legacy.rego", V0_POLICY)

    code, report = evaluate(tmp_path, "data.legacy.allow == true", input_document={"user": "alice"})

    assert code == 0
    assert report["input"] == {"user": "alice"} and report["query"] == "data.legacy.allow == true"


def test_eval_loads_only_the_named_modules(tmp_path):
    write(tmp_path, "legacy.rego", V0_POLICY)
    write(tmp_path, "products.rego", SCOPE_POLICY)

    code, report = evaluate(tmp_path, "data.products.allow", input_document={}, modules=["legacy"])

    assert code == 1
    assert report["decision"]["reason"] == "policy_undefined"


@pytest.mark.parametrize(("query", "modules", "message"), [
    ("data.legacy.allow ===", None, "error: Rego query"),
    ("data.legacy.allow", ["nope"], "unknown Rego module 'nope' (known: legacy)"),
], ids=["a query that does not compile", "an unknown module"])
def test_eval_reports_unusable_arguments_with_exit_code_2(tmp_path, query, modules, message):
    write(tmp_path, "legacy.rego", V0_POLICY)

    code, text = evaluate(tmp_path, query, input_document={}, modules=modules)

    assert code == 2
    assert message in text


def test_eval_reports_an_evaluation_error_as_a_policy_error_deny(tmp_path):
    write(tmp_path, "body.rego", "package body\nimport rego.v1\nparsed := json.unmarshal(input.body)\n")

    code, report = evaluate(tmp_path, "data.body.parsed", input_document={"body": "{"})

    assert code == 1
    assert report["result"] is None and report["decision"]["reason"] == "policy_error"


def test_request_spec_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="request.verb: unknown field"):
        request_from_spec({"verb": "GET"})


def test_request_spec_adds_the_host_header_and_splits_the_query_from_the_path():
    request = request_from_spec({"path": "/a?b=1", "host": "h.example"})

    assert (request.path, request.query_string, request.headers["host"]) == ("/a", "b=1", "h.example")


def test_request_spec_is_read_as_the_gateway_reads_a_request():
    """One parse: the policy input ``eval`` shows is the one the gateway would build."""
    request = request_from_spec({"path": "/a/./b/../c?x=%2F", "host": "H.Example.:8080",
                                 "headers": {"X-Forwarded-Proto": "https", "Cookie": "s=1; s=2"}})

    assert (request.path, request.host, dict(request.query)) == ("/a/c", "h.example:8080", {"x": ["/"]})
    assert "x-forwarded-proto" not in request.headers and request.cookies == {"s": ("1", "2")}


@pytest.mark.parametrize("spec", [{"path": "/a#b"}, {"path": "/s?d=50%"}, {"host": "a b"}],
                         ids=["fragment", "stray percent", "bad host"])
def test_request_spec_the_gateway_would_refuse_is_a_config_error(spec):
    with pytest.raises(ConfigError, match="the gateway would refuse this request"):
        request_from_spec(spec)


# -- argparse -------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="gateway-app")
    add_subcommands(root.add_subparsers(dest="command", required=True))
    return root


def test_test_rego_subcommand_runs_the_tests_of_its_directory(tmp_path, capsys):
    write(tmp_path, "legacy.rego", V0_POLICY)
    write(tmp_path, "legacy_test.rego", V0_TESTS)

    args = parser().parse_args(["test-rego", "--rego-dir", str(tmp_path)])

    assert args.func(args) == 0
    assert "2 passed, 0 failed" in capsys.readouterr().out


def test_eval_subcommand_reads_inline_json_files_labels_and_modules(tmp_path, capsys):
    write(tmp_path, "rego/products.rego", SCOPE_POLICY)
    write(tmp_path, "rego/legacy.rego", V0_POLICY)
    write(tmp_path, "claims.yaml", "sub: me\nscope: openid pets\n")

    args = parser().parse_args([
        "eval", "--rego-dir", str(tmp_path / "rego"), "--query", "data.products.allow",
        "--request", '{"path": "/pets", "headers": {"x-team": "blue"}}', "--claims", str(tmp_path / "claims.yaml"),
        "--module", "products", "--api-product", "pets", "--label", "usagePlans=dev-portal", "--label", "tier=a=b"])

    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input"]["attributes"]["context_extensions"] == {"usagePlans": "dev-portal", "tier": "a=b"}
    assert report["input"]["attributes"]["request"]["http"]["headers"]["x-team"] == "blue"


def test_eval_subcommand_reads_an_input_file(tmp_path, capsys):
    write(tmp_path, "rego/legacy.rego", V0_POLICY)
    write(tmp_path, "input.json", '{"user": "bob"}')

    args = parser().parse_args(["eval", "--rego-dir", str(tmp_path / "rego"), "--query", "data.legacy.allow",
                                "--input", str(tmp_path / "input.json")])

    assert args.func(args) == 1
    assert json.loads(capsys.readouterr().out)["decision"]["reason"] == "policy_denied"


@pytest.mark.parametrize("extra", [
    ["--label", "novalue"],
    ["--claims", "{not json"],
    ["--claims", "missing-file.json"],
    ["--input", "input.json", "--claims", '{"sub": "x"}'],
], ids=["a label without =", "claims that are not JSON", "a claims file that does not exist",
        "claims together with an input file"])
def test_eval_subcommand_rejects_bad_arguments_with_exit_code_2(tmp_path, capsys, monkeypatch, extra):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "rego/legacy.rego", V0_POLICY)
    write(tmp_path, "input.json", '{"user": "bob"}')

    args = parser().parse_args(["eval", "--query", "data.legacy.allow", *extra])

    assert args.func(args) == 2
    assert capsys.readouterr().out.startswith("error: ")


def test_input_and_request_cannot_be_combined(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["eval", "--query", "q", "--input", "a.json", "--request", "{}"])
    assert "not allowed with argument" in capsys.readouterr().err

