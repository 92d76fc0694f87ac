"""Traefik Hub's ``claims`` language: functions, nested keys, precedence, escaping, malformed expressions."""

from __future__ import annotations

import pytest

from gateway_app.errors import ConfigError
from gateway_app.traefik.claims import TraefikClaimsCheck
from gateway_app.traefik.claims import claim_path

CLAIMS = {
    "grp": "admin",
    "iss": "https://idp.example.com/realms/demo",
    "email": "ada@example.com",
    "scope": "read write",
    "groups": ["admins", "dev"],
    "email_verified": True,
    "level": 3,
    "user": {"name": "ada", "roles": ["ops"]},
    "http://example.com/tenant": "acme",
}


def allows(expression: str, claims=None) -> bool:
    return TraefikClaimsCheck(expression, "test").allows(CLAIMS if claims is None else claims)


@pytest.mark.parametrize("expression, expected", [
    ("Equals(`grp`, `admin`)", True),
    ("Equals(`grp`, `Admin`)", False),
    ("Equals(`groups`, `dev`)", True),
    ("Equals(`email_verified`, `true`)", True),
    ("Equals(`level`, `3`)", True),
    ("Equals(`missing`, `x`)", False),
    ("Prefix(`iss`, `https://idp.example.com/`)", True),
    ("Prefix(`iss`, `http://`)", False),
    ("Contains(`email`, `@example.com`)", True),
    ("Contains(`groups`, `dev`)", True),
    ("Contains(`groups`, `admin`)", False),
    ("SplitContains(`scope`, ` `, `write`)", True),
    ("SplitContains(`scope`, ` `, `wri`)", False),
    ("OneOf(`grp`, `dev`, `admin`)", True),
    ("OneOf(`grp`, `dev`, `ops`)", False),
    ("OneOf(`groups`, `x`, `dev`)", True),
    ("Equals(`user.name`, `ada`)", True),
    ("Contains(`user.roles`, `ops`)", True),
    ("Equals(`user.missing.deeper`, `x`)", False),
    ("Equals(`http://example\\.com/tenant`, `acme`)", True),
], ids=lambda v: v if isinstance(v, str) else None)
def test_each_function(expression, expected):
    assert allows(expression) is expected


@pytest.mark.parametrize("expression, expected", [
    ("Equals(`grp`, `x`) || Equals(`grp`, `admin`) && Equals(`level`, `9`)", False),
    ("Equals(`grp`, `admin`) || Equals(`grp`, `x`) && Equals(`level`, `9`)", True),
    ("(Equals(`grp`, `admin`) || Equals(`grp`, `x`)) && Equals(`level`, `9`)", False),
    ("!Equals(`grp`, `x`) && Equals(`level`, `3`)", True),
    ("!(Equals(`grp`, `admin`) && Equals(`level`, `3`))", False),
], ids=["and binds tighter than or (false)", "and binds tighter than or (true)", "parentheses group first",
        "not binds tighter than and", "not of a group"])
def test_precedence(expression, expected):
    assert allows(expression) is expected


def test_claim_paths_split_on_unescaped_dots():
    assert claim_path("a.b\\.c") == ("a", "b.c")
    assert claim_path("http://example\\.com/tenant") == ("http://example.com/tenant",)


def test_double_quoted_arguments_are_accepted():
    assert allows('Equals("grp", "admin") && SplitContains("scope", " ", "read")')


@pytest.mark.parametrize("expression, message", [
    ("Equals(`grp`, `admin`) &&", "line 1, column 26: expected a name, '!' or '(', found end of expression"),
    ("Equals(`grp`)", "line 1, column 1: Equals takes 2 arguments: Equals(`grp`, `admin`)"),
    ("Equal(`grp`, `admin`)", "line 1, column 1: unknown claims function 'Equal'"),
    ("Equals(`grp`, `admin`)\n  || Regexp(`grp`, `a`)", "line 2, column 6: unknown claims function 'Regexp'"),
    ("Equals(`a..b`, `x`)", "line 1, column 8: empty part in claim path"),
    ("Equals(grp, `admin`)", "line 1, column 8: expected a `string` argument, found 'grp'"),
    ("(Equals(`grp`, `admin`)", "line 1, column 24: expected ')'"),
], ids=["dangling operator", "wrong arity", "unknown function", "unknown function on line 2", "empty path part",
        "bare argument", "unclosed parenthesis"])
def test_malformed_expressions_are_config_errors_with_line_and_column(expression, message):
    with pytest.raises(ConfigError) as caught:
        TraefikClaimsCheck(expression, "conf/mw.yaml: Middleware apps/intro: spec.plugin.oAuthIntrospection")
    assert message in str(caught.value)
    assert "Middleware apps/intro" in str(caught.value)
