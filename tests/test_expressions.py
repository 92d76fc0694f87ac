"""Gloo ``booleanExpr``: and/or/not/parentheses over config names, compiled once, short-circuiting."""

from __future__ import annotations

import pytest

from gateway_app.auth.expressions import compile_boolean_expr
from gateway_app.errors import ConfigError

NAMES = ("jwt", "introspect", "policy", "api-key.v2")


def evaluate(text: str, outcomes: dict[str, bool]) -> tuple[bool, list[str]]:
    called: list[str] = []

    def run(name: str) -> bool:
        called.append(name)
        return outcomes[name]

    return compile_boolean_expr(text, NAMES, "test")(run), called


@pytest.mark.parametrize("text, outcomes, expected", [
    ("jwt and policy", {"jwt": True, "policy": True}, True),
    ("jwt and policy", {"jwt": True, "policy": False}, False),
    ("jwt or introspect", {"jwt": False, "introspect": True}, True),
    ("not jwt", {"jwt": False}, True),
    ("!jwt && policy", {"jwt": False, "policy": True}, True),
    ("jwt || introspect", {"jwt": False, "introspect": False}, False),
    ("(jwt or introspect) and policy", {"jwt": False, "introspect": True, "policy": True}, True),
    ("jwt or introspect and policy", {"jwt": True}, True),
    ("not (jwt or introspect)", {"jwt": False, "introspect": False}, True),
    ("not not jwt", {"jwt": True}, True),
    ("api-key.v2", {"api-key.v2": True}, True),
], ids=["and of two passes", "and with one failure", "or with a second chance", "not inverts",
        "symbol spellings", "or of two failures", "parentheses group first", "and binds tighter than or",
        "not of a group", "double negation", "names may contain dashes and dots"])
def test_expression_results(text, outcomes, expected):
    assert evaluate(text, outcomes)[0] is expected


def test_and_stops_at_the_first_false_and_or_at_the_first_true():
    assert evaluate("jwt and policy", {"jwt": False, "policy": True})[1] == ["jwt"]
    assert evaluate("jwt or introspect", {"jwt": True, "introspect": False})[1] == ["jwt"]


@pytest.mark.parametrize("text, message", [
    ("jwt and", "column 8: expected a name, '!' or '(', found end of expression"),
    ("(jwt or policy", "column 15: expected ')', found end of expression"),
    ("jwt policy", "column 5: expected '&&', '||' or the end, found 'policy'"),
    ("and jwt", "column 1: expected a name, '!' or '(', found 'and'"),
    ("jwt and unknown", "column 9: no config named 'unknown'"),
    ("jwt + policy", "column 5: unexpected character '+'"),
], ids=["dangling operator", "unclosed parenthesis", "two names in a row", "leading operator",
        "unknown config name", "unknown symbol"])
def test_bad_expressions_are_config_errors(text, message):
    with pytest.raises(ConfigError, match="booleanExpr") as caught:
        compile_boolean_expr(text, NAMES, "conf/auth.yaml: AuthConfig default/a: spec.booleanExpr")
    assert message in str(caught.value)
    assert "spec.booleanExpr" in str(caught.value)
