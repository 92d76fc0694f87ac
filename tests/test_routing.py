"""Router: host precedence (exact > longest ``*.suffix`` > ``prefix*`` > ``*``), first match wins."""

from __future__ import annotations

import re
import typing as t

import pytest

from gateway_app.errors import BadRequestError
from gateway_app.errors import RouteNotFoundError
from gateway_app.incoming import IncomingRequest
from gateway_app.routing import HeaderMatcher
from gateway_app.routing import Matcher
from gateway_app.routing import PathMatcher
from gateway_app.routing import PathRewrite
from gateway_app.routing import Route
from gateway_app.routing import Router
from gateway_app.routing import VirtualHost
from tests.factories import incoming_request


def request(path: str = "/", host: str = "example.com", method: str = "GET",
            headers: t.Mapping[str, str] | None = None) -> IncomingRequest:
    return incoming_request(path, method=method, host=host, headers={"host": host, **(headers or {})})


def route(name: str, *matchers: Matcher) -> Route:
    return Route(name=name, source=f"test: {name}", matchers=matchers or (Matcher(),), targets=())


def prefix(value: str, **kwargs: t.Any) -> Matcher:
    return Matcher(paths=(PathMatcher("prefix", value),), **kwargs)


def vhost(name: str, *domains: str, routes: tuple[Route, ...] | None = None) -> VirtualHost:
    return VirtualHost(name=name, domains=domains, routes=routes or (route(f"{name}-route"),))


HOSTS = Router([
    vhost("any", "*"),
    vhost("wild", "*.example.com"),
    vhost("deep-wild", "*.api.example.com"),
    vhost("exact", "api.example.com"),
    vhost("prefix", "internal.*"),
    vhost("ported", "ported.test:8080"),
])


@pytest.mark.parametrize("host, expected", [
    ("api.example.com", "exact"),
    ("API.Example.com:8443", "exact"),
    ("v1.api.example.com", "deep-wild"),
    ("shop.example.com", "wild"),
    ("example.com", "any"),
    ("internal.corp", "prefix"),
    ("ported.test", "ported"),
    ("ported.test:9999", "ported"),
    ("elsewhere.org", "any"),
], ids=[
    "exact domain wins over wildcards",
    "host match ignores case and port",
    "longest wildcard suffix wins",
    "wildcard suffix matches a subdomain",
    "wildcard suffix does not match the bare domain",
    "prefix wildcard matches",
    "a domain declared with a port matches without one",
    "a domain declared with a port matches any port",
    "star catches every other host",
])
def test_host_precedence(host, expected):
    assert HOSTS.match(request(host=host)).virtual_host.name == expected


def test_unknown_host_without_a_star_domain_is_not_found():
    router = Router([vhost("exact", "api.example.com")])
    with pytest.raises(RouteNotFoundError):
        router.match(request(host="other.example.com"))


def test_first_matching_route_wins_in_declaration_order():
    routes = (route("pets", prefix("/pets")), route("pets-exact", Matcher(paths=(PathMatcher("exact", "/pets"),))),
              route("root", prefix("/")))
    router = Router([vhost("any", "*", routes=routes)])

    assert router.match(request("/pets")).route.name == "pets"
    assert router.match(request("/petshop")).route.name == "pets"
    assert router.match(request("/tracks")).route.name == "root"


def test_path_matchers_prefix_exact_and_full_match_regex():
    exact = PathMatcher("exact", "/status")
    regex = PathMatcher("regex", "/items/[0-9]+", re.compile("/items/[0-9]+"))
    insensitive = PathMatcher("prefix", "/api", case_sensitive=False)

    assert exact.matches("/status") and not exact.matches("/status/1")
    assert regex.matches("/items/42")
    assert not regex.matches("/items/42/extra"), "regex must match the whole path, as Envoy's safe_regex"
    assert insensitive.matches("/API/v1")


def test_methods_restrict_a_matcher():
    router = Router([vhost("any", "*", routes=(
        route("writes", prefix("/", methods=frozenset({"POST", "PUT"}))),
        route("reads", prefix("/")),
    ))])
    assert router.match(request(method="POST")).route.name == "writes"
    assert router.match(request(method="GET")).route.name == "reads"


@pytest.mark.parametrize("matcher, headers, expected", [
    (HeaderMatcher("x-env"), {"x-env": "anything"}, True),
    (HeaderMatcher("x-env"), {}, False),
    (HeaderMatcher("x-env", value="prod"), {"x-env": "prod"}, True),
    (HeaderMatcher("x-env", value="prod"), {"x-env": "production"}, False),
    (HeaderMatcher("x-env", regex=re.compile("pro.*")), {"x-env": "production"}, True),
    (HeaderMatcher("x-env", value="prod", invert=True), {"x-env": "dev"}, True),
    (HeaderMatcher("x-env", value="prod", invert=True), {"x-env": "prod"}, False),
], ids=["presence", "absent", "exact value", "value is not a prefix", "regex", "inverted mismatch",
        "inverted match"])
def test_header_matchers(matcher, headers, expected):
    assert matcher.matches(headers) is expected


def test_delegated_matcher_needs_every_path_condition():
    combined = Matcher(paths=(PathMatcher("prefix", "/api"), PathMatcher("prefix", "/api/pets")))
    router = Router([vhost("any", "*", routes=(route("pets", combined),))])

    assert router.match(request("/api/pets/1")).route.name == "pets"
    with pytest.raises(RouteNotFoundError):
        router.match(request("/api/tracks"))


@pytest.mark.parametrize("rewrite, path, expected", [
    (PathRewrite((PathMatcher("prefix", "/petstore"),), "/anything/petstore"), "/petstore/pets",
     "/anything/petstore/pets"),
    (PathRewrite((PathMatcher("prefix", "/petstore"),), "/"), "/petstore/pets", "/pets"),
    (PathRewrite((PathMatcher("prefix", "/petstore"),), "/"), "/petstore", "/"),
    (PathRewrite((PathMatcher("exact", "/tracks/status"),), "/status/200"), "/tracks/status", "/status/200"),
    (PathRewrite((PathMatcher("prefix", "/petstore"),), "/x"), "/other", "/other"),
], ids=["prefix replaced", "slash replacement does not double slashes", "whole path becomes slash",
        "exact path replaced", "unmatched path unchanged"])
def test_path_rewrite_replaces_the_matched_prefix(rewrite, path, expected):
    assert rewrite.apply(path) == expected


def test_a_prefix_followed_by_a_rewrite_matches_on_segment_boundaries():
    matchers, rewrite = PathRewrite.for_route((Matcher(paths=(PathMatcher("prefix", "/assets"),)),), "/public/")
    router = Router([vhost("any", "*", routes=(route("assets", *matchers),))])
    for path in ("/assets", "/assets/", "/assets/app.js"):
        assert router.match(request(path)).route.name == "assets"
    for path in ("/assets..", "/assetsfoo", "/assets../private"):
        with pytest.raises(RouteNotFoundError):
            router.match(request(path))
    assert rewrite.apply("/assets/app.js") == "/public/app.js"


@pytest.mark.parametrize("path", ["/r/admin", "/r", "/rx/y/z"])
def test_a_regex_matched_path_is_replaced_whole_as_envoy_does(path):
    """Red team pass 2, finding 7: ``/r/admin`` on ``regex /r[a-z]*(/.*)?`` with ``/x`` went up as ``/xr/admin``."""
    _, rewrite = PathRewrite.for_route((Matcher(paths=(PathMatcher("regex", "/r[a-z]*(/.*)?"),)),), "/x")

    assert rewrite.apply(path) == "/x"


def test_a_matcher_without_a_path_rewrites_from_the_root():
    _, rewrite = PathRewrite.for_route((Matcher(methods=frozenset({"GET"})),), "/api")

    assert rewrite.apply("/pets") == "/api/pets"


def test_a_case_insensitive_prefix_is_rewritten_as_it_matched():
    matcher = Matcher(paths=(PathMatcher("prefix", "/assets", case_sensitive=False),))
    _, rewrite = PathRewrite.for_route((matcher,), "/public")
    assert rewrite.apply("/ASSETS/x") == "/public/x"


@pytest.mark.parametrize(("replacement", "path"), [("/public/.", "/assets/x"), ("/p/..", "/assets/x"),
                                                    ("/p//", "/assets/x")],
                         ids=["a dot-segment made by the rewrite", "a parent segment", "an empty segment"])
def test_a_rewritten_path_not_in_normal_form_is_refused(replacement, path):
    rewrite = PathRewrite((PathMatcher("prefix", "/assets", segment_boundary=True),), replacement)
    with pytest.raises(BadRequestError) as info:
        rewrite.apply(path)
    assert info.value.reason == "rewrite_invalid"


def test_a_configured_domain_with_a_root_dot_or_port_matches_the_normalized_host():
    router = Router([vhost("secure", "Secure.Example.com.:443")])
    assert router.match(request("/", host="secure.example.com")).virtual_host.name == "secure"


@pytest.mark.parametrize(("value", "path", "matched"), [
    ("/admin", "/admin/", True), ("/admin/", "/admin", True), ("/admin", "/admin", True),
    ("/admin", "/admin/x", False), ("/", "/", True), ("/admin", "/admins", False),
], ids=["a trailing slash added", "a trailing slash removed", "the same path", "a longer path",
        "the root", "another name"])
def test_an_exact_matcher_matches_its_path_with_or_without_one_trailing_slash(value, path, matched):
    assert PathMatcher("exact", value).matches(path) is matched
