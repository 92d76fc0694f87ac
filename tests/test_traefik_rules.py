"""Traefik's rule language (IngressRoute ``match``): matchers, precedence, escaping, malformed rules."""

from __future__ import annotations

import pytest

from gateway_app.errors import ConfigError
from gateway_app.routing import Matcher
from gateway_app.traefik.rules import compile_rule
from tests.factories import incoming_request


def request(path="/", method="GET", host="api.example.com", headers=None, query=None, remote="10.1.2.3"):
    return incoming_request(path, method=method, host=host, headers=headers, send_host=False, query=query or {},
                            remote_addr=remote)


def matches(rule: str, **kwargs) -> bool:
    return compile_rule(rule, "test").matches(request(**kwargs))


@pytest.mark.parametrize("rule, kwargs, expected", [
    ("Host(`api.example.com`)", {}, True),
    ("Host(`API.example.com`)", {"host": "api.example.com:8080"}, True),
    ("Host(`api.example.com.`)", {}, True),
    ("Host(`other.example.com`)", {}, False),
    ("Host(`a.example.com`, `api.example.com`)", {}, True),
    ("HostRegexp(`^.+\\.example\\.com$`)", {}, True),
    ("HostRegexp(`^www\\.`)", {}, False),
    ("Path(`/products`)", {"path": "/products"}, True),
    ("Path(`/products`)", {"path": "/products/1"}, False),
    ("PathPrefix(`/products`)", {"path": "/products/1"}, True),
    ("PathPrefix(`/products`)", {"path": "/orders"}, False),
    ("PathRegexp(`\\.(jpg|png)$`)", {"path": "/img/a.png"}, True),
    ("PathRegexp(`^/products/[0-9]+$`)", {"path": "/products/x"}, False),
    ("Method(`POST`)", {"method": "POST"}, True),
    ("Method(`post`)", {"method": "GET"}, False),
    ("Header(`X-Env`, `prod`)", {"headers": {"x-env": "prod"}}, True),
    ("Header(`X-Env`, `prod`)", {"headers": {"x-env": "production"}}, False),
    ("HeaderRegexp(`X-Env`, `^prod`)", {"headers": {"x-env": "production"}}, True),
    ("HeaderRegexp(`X-Env`, `^prod`)", {}, False),
    # Red team pass 2, finding 8: a header sent twice arrives joined with ","; Traefik matches any field.
    ("Header(`X-Internal`, `1`)", {"headers": {"x-internal": "1,1"}}, True),
    ("!Header(`X-Internal`, `1`)", {"headers": {"x-internal": "1, 1"}}, False),
    ("Header(`Accept`, `text/html, */*`)", {"headers": {"accept": "text/html, */*"}}, True),
    ("HeaderRegexp(`X-Env`, `^prod$`)", {"headers": {"x-env": "dev,prod"}}, True),
    ("Query(`mobile`, `true`)", {"query": {"mobile": ["false", "true"]}}, True),
    ("Query(`mobile`, `true`)", {"query": {"mobile": ["false"]}}, False),
    ("Query(`mobile`)", {"query": {"mobile": [""]}}, True),
    ("QueryRegexp(`mobile`, `^(true|yes)$`)", {"query": {"mobile": ["yes"]}}, True),
    ("ClientIP(`10.0.0.0/8`)", {}, True),
    ("ClientIP(`192.168.1.1`, `::1`)", {"remote": "::1"}, True),
    ("ClientIP(`192.168.0.0/16`)", {}, False),
], ids=lambda v: v if isinstance(v, str) else None)
def test_each_matcher(rule, kwargs, expected):
    assert matches(rule, **kwargs) is expected


@pytest.mark.parametrize("rule, path, method, expected", [
    ("PathPrefix(`/a`) || PathPrefix(`/b`) && Method(`POST`)", "/a", "GET", True),
    ("PathPrefix(`/a`) || PathPrefix(`/b`) && Method(`POST`)", "/b", "GET", False),
    ("(PathPrefix(`/a`) || PathPrefix(`/b`)) && Method(`POST`)", "/a", "GET", False),
    ("!Method(`GET`) && PathPrefix(`/a`)", "/a", "POST", True),
    ("!(Method(`GET`) && PathPrefix(`/a`))", "/a", "GET", False),
    ("!!Method(`GET`)", "/", "GET", True),
], ids=["and binds tighter than or (left)", "and binds tighter than or (right)", "parentheses group first",
        "not binds tighter than and", "not of a group", "double negation"])
def test_precedence(rule, path, method, expected):
    assert matches(rule, path=path, method=method) is expected


def test_double_quoted_arguments_take_go_escapes_and_backticks_take_none():
    assert matches('Header("X-Q", "a\\"b\\\\c")', headers={"x-q": 'a"b\\c'})
    assert matches("Header(`X-Q`, `a\\\"b`)", headers={"x-q": 'a\\"b'})
    assert matches('PathRegexp("\\\\.png$")', path="/a.png")


def test_default_priority_is_the_rule_length():
    assert compile_rule("Host(`a.example`) && PathPrefix(`/x`)", "t").default_priority == 37


@pytest.mark.parametrize("rule, hosts", [
    ("Host(`API.example.com`) && PathPrefix(`/x`)", ("api.example.com",)),
    ("Host(`a.example`, `b.example:8080`)", ("a.example", "b.example")),
    ("Host(`a.example`) && (Path(`/x`) || Path(`/y`))", ("a.example",)),
    ("Host(`a.example`) || Path(`/x`)", ()),
    ("PathPrefix(`/x`) && Host(`a.example`)", ()),
    ("!Host(`a.example`)", ()),
    ("HostRegexp(`^a`)", ()),
], ids=["leading host", "several hosts, port removed", "host and a group", "host under or is host-less",
        "host not leading is host-less", "negated host is host-less", "host regexp is host-less"])
def test_hosts_a_rule_requires(rule, hosts):
    assert compile_rule(rule, "t").hosts == hosts


def test_a_rule_plugs_into_the_route_matcher():
    matcher = Matcher(condition=compile_rule("Host(`api.example.com`) && Path(`/x`)", "t"))
    assert matcher.matches(request(path="/x"))
    assert not matcher.matches(request(path="/y"))
    assert matcher.describe() == "rule Host(`api.example.com`) && Path(`/x`)"


@pytest.mark.parametrize("rule, message", [
    ("Host(`a.example`) &&", "line 1, column 21: expected a name, '!' or '(', found end of expression"),
    ("(Path(`/a`) || Path(`/b`)", "line 1, column 26: expected ')', found end of expression"),
    ("Path(`/a`) Path(`/b`)", "line 1, column 12: expected '&&', '||' or the end, found 'Path'"),
    ("Path(`/a`", "line 1, column 10: expected ',' or ')', found end of expression"),
    ("Path(`/a)", "line 1, column 6: unterminated string (missing closing `)"),
    ('Path("/a)', 'line 1, column 6: unterminated string (missing closing ")'),
    ('Path("/a\\q")', "line 1, column 9: unsupported escape \\q"),
    ("Path(/a)", "line 1, column 6: unexpected character '/'"),
    ("Path(`/a`) & Method(`GET`)", "line 1, column 12: unexpected character '&'"),
    ("PathPrefix(`/a`) &&\n  Headers(`X`, `y`)", "line 2, column 3: unknown matcher function 'Headers' "
                                                 "(did you mean Header?)"),
    ("Header(`X-Env`)", "line 1, column 1: Header takes 2 arguments: Header(`X-Env`, `prod`)"),
    ("PathRegexp(`(`)", "line 1, column 12: bad regexp '('"),
    ("Path(`products`)", "line 1, column 6: Path must start with '/'"),
    ("Path(`/products/{id:[0-9]+}`)", "use PathRegexp"),
    ("Method(`FETCH`)", "line 1, column 8: unknown HTTP method 'FETCH'"),
    ("ClientIP(`10.0.0.0/33`)", "line 1, column 10: not an IP address or CIDR"),
    ("", "line 1, column 1: is empty"),
], ids=["dangling operator", "unclosed parenthesis", "two matchers in a row", "unclosed call",
        "unterminated backtick", "unterminated double quote", "bad escape", "bare argument", "single ampersand",
        "unknown matcher on line 2", "wrong arity", "bad regexp", "relative path", "v2 path template",
        "unknown method", "bad CIDR", "empty rule"])
def test_malformed_rules_are_config_errors_with_line_and_column(rule, message):
    with pytest.raises(ConfigError) as caught:
        compile_rule(rule, "conf/app.yaml: IngressRoute apps/app: spec.routes[0]")
    assert message in str(caught.value)
    assert "spec.routes[0]" in str(caught.value)
