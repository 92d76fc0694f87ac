"""The one parse of a request (issue 12, classes 1, 3, 4 and 6): :func:`gateway_app.incoming.from_environ`."""

from __future__ import annotations

import typing as t

import pytest

from gateway_app.errors import BadRequestError
from gateway_app.errors import TransferCodingError
from gateway_app.incoming import TrustedProxies
from gateway_app.incoming import from_environ
from gateway_app.incoming import normalize_host
from gateway_app.incoming import parse_cookies
from gateway_app.incoming import parse_query


def environ(target: str = "/", host: str | None = "gw.test", **extra: t.Any) -> dict[str, t.Any]:
    """A WSGI environ as gunicorn builds it for ``GET <target> HTTP/1.1``."""
    path, _, query = target.partition("?")
    env: dict[str, t.Any] = {"REQUEST_METHOD": "GET", "RAW_URI": target, "PATH_INFO": path, "QUERY_STRING": query,
                             "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "REMOTE_ADDR": "127.0.0.1"}
    if host is not None:
        env["HTTP_HOST"] = host
    env.update(extra)
    return env


def refused(env: dict[str, t.Any], **kwargs: t.Any) -> str:
    with pytest.raises(BadRequestError) as info:
        from_environ(env, **kwargs)
    assert info.value.status_code == 400
    return info.value.reason


# -- request target -------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["/admin#x", "/admin#", "/a?b=1#c", "/#"])
def test_fragment_in_request_target_is_refused(target):
    assert refused(environ(target)) == "fragment_in_target"


def test_path_and_query_come_from_the_raw_target_not_the_decoded_path_info():
    request = from_environ(environ("/a/%2e%2e/b?x=%2F", PATH_INFO="/a/../b"))
    assert (request.path, request.query_string, dict(request.query)) == ("/b", "x=%2F", {"x": ["/"]})


def test_an_absolute_form_target_gives_the_host():
    """RFC 9112 §3.2.2: the target's authority replaces Host."""
    request = from_environ(environ("http://Other.Test./p?q=1", host="gw.test"))
    assert (request.host, request.path, request.query_string) == ("other.test", "/p", "q=1")
    assert request.headers["host"] == "other.test"


def test_an_absolute_form_target_with_userinfo_is_refused():
    assert refused(environ("http://user@gw.test/p")) == "target_invalid"


# -- query ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("query", "parsed"), [
    ("r=%2Fhome&d=50%25", {"r": ["/home"], "d": ["50%"]}),
    ("a=1&a=2&b=", {"a": ["1", "2"], "b": [""]}),
    ("q=a+b", {"q": ["a b"]}),
    ("n=%C3%A9", {"n": ["é"]}),
], ids=["escapes", "repeats and blanks", "plus is a space", "UTF-8"])
def test_a_query_is_decoded_one_way(query, parsed):
    assert parse_query(query) == parsed


@pytest.mark.parametrize("query", ["d=50%", "a=%zz", "a=%", "a=%4", "a=%e9", "a=\x7f", "a=é", "access_token%00=x"],
                         ids=["stray percent", "bad hex", "lone percent", "short escape", "not UTF-8",
                              "control character", "raw non-ASCII", "encoded NUL"])
def test_a_query_that_reads_two_ways_is_refused(query):
    with pytest.raises(BadRequestError) as info:
        parse_query(query)
    assert info.value.reason == "query_invalid"


def test_the_raw_query_is_kept_byte_for_byte():
    assert from_environ(environ("/s?r=%2fhome&e=a+b")).query_string == "r=%2fhome&e=a+b"


# -- host -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("host", "normal"), [
    ("Secure.Example.COM", "secure.example.com"),
    ("secure.example.com.", "secure.example.com"),
    ("secure.example.com.:8080", "secure.example.com:8080"),
    ("secure.example.com:08080", "secure.example.com:8080"),
    ("secure.example.com:", "secure.example.com"),
    ("[::1]:80", "[::1]:80"),
    ("[::1]", "[::1]"),
    ("10.0.0.1", "10.0.0.1"),
    ("my_service.internal", "my_service.internal"),
], ids=["case", "trailing root dot", "root dot and port", "leading zero in port", "empty port", "IPv6 and port",
        "IPv6", "IPv4", "underscore"])
def test_a_host_is_normalized_once(host, normal):
    assert normalize_host(host) == normal


@pytest.mark.parametrize("host", [
    "a b", "example..com", "example.com..", ".example.com", "[::1", "[zz]", "example.com:99999", "example.com:0",
    "example.com:x", "ex%41mple.com", "user@example.com", "example.com/x", "a,b", "exämple.com", "-a.com",
    "a" * 64 + ".com",
], ids=["space", "empty label", "two trailing dots", "leading dot", "unclosed IP literal", "not an IP literal",
        "port out of range", "port zero", "port not a number", "percent escape", "userinfo", "path",
        "two Host headers joined", "non-ASCII", "label starting with a hyphen", "label over 63 characters"])
def test_an_invalid_host_is_refused(host):
    with pytest.raises(BadRequestError) as info:
        normalize_host(host)
    assert info.value.reason == "host_invalid"


def test_routing_policy_and_forwarding_share_the_normalized_host():
    request = from_environ(environ(host="SECURE.example.com.:443"))
    assert (request.host, request.hostname, request.headers["host"]) == (
        "secure.example.com:443", "secure.example.com", "secure.example.com:443")


@pytest.mark.parametrize("host", [None, ""], ids=["absent", "empty"])
def test_an_http_1_1_request_without_a_host_is_refused(host):
    assert refused(environ(host=host)) == "host_missing"


def test_an_http_1_0_request_may_omit_the_host():
    assert from_environ(environ(host=None, SERVER_PROTOCOL="HTTP/1.0")).host == ""


# -- cookies --------------------------------------------------------------------------------------

def test_every_copy_of_a_cookie_is_kept():
    """werkzeug's ``request.cookies`` keeps the first of repeated names; the token source must see all."""
    assert parse_cookies("session=a; other=1; session=b,session=c; %73ession=d") == {
        "session": ("a", "b", "c", "d"), "other": ("1",)}


def test_cookies_come_from_the_one_cookie_header():
    request = from_environ(environ(HTTP_COOKIE="session=valid; session=forged"))
    assert request.cookies["session"] == ("valid", "forged")


# -- forwarding headers and scheme ----------------------------------------------------------------

FORGED = {"HTTP_X_FORWARDED_PROTO": "https", "HTTP_X_FORWARDED_SSL": "on", "HTTP_FORWARDED": "proto=https",
          "HTTP_X_REAL_IP": "10.0.0.1", "HTTP_X_FORWARDED_CLIENT_CERT": "Subject=CN=admin",
          "HTTP_X_CLIENT_CERT": "x", "HTTP_SSL_CLIENT_CERT": "x", "HTTP_FRONT_END_HTTPS": "on",
          "HTTP_X_URL_SCHEME": "https", "HTTP_X_FORWARDED_HOST": "admin.internal", "HTTP_X_CUSTOM": "kept"}


def test_forwarding_headers_from_an_untrusted_peer_are_dropped_and_the_scheme_is_the_connections():
    request = from_environ(environ(**FORGED, **{"wsgi.url_scheme": "https"}, **{"gunicorn.socket": object()}))
    assert set(request.headers) == {"host", "x-custom"}
    assert (request.scheme, request.trusted_peer) == ("http", False)


def test_forwarding_headers_from_a_trusted_proxy_are_kept_and_give_the_scheme():
    request = from_environ(environ(**FORGED), trusted_proxies=TrustedProxies(["127.0.0.0/8"]))
    assert request.headers["x-forwarded-proto"] == "https" and "x-forwarded-client-cert" in request.headers
    assert (request.scheme, request.trusted_peer) == ("https", True)


def test_a_peer_outside_the_trusted_networks_is_not_trusted():
    proxies = TrustedProxies(["10.0.0.0/8", "::1"])
    assert "10.1.2.3" in proxies and "::1" in proxies
    assert "127.0.0.1" not in proxies and "" not in proxies and "not-an-ip" not in proxies


def test_too_many_headers_are_refused():
    env = environ(**{f"HTTP_X_H{i}": "v" for i in range(5)})
    assert refused(env, max_header_count=3) == "too_many_headers"


def test_dropped_forwarding_headers_still_count_against_the_header_limit():
    env = environ(**{f"HTTP_X_FORWARDED_H{i}": "v" for i in range(5)})
    assert refused(env, max_header_count=3) == "too_many_headers"


def test_url_and_method_overrides_are_dropped_even_from_a_trusted_proxy():
    """``X-HTTP-Method-Override: DELETE`` on a GET route would make Express or Rails run a DELETE."""
    env = environ(HTTP_X_HTTP_METHOD_OVERRIDE="DELETE", HTTP_X_ORIGINAL_URL="/admin", HTTP_X_METHOD_OVERRIDE="PUT")
    for proxies in (TrustedProxies(), TrustedProxies(["127.0.0.1"])):
        assert set(from_environ(env, trusted_proxies=proxies).headers) == {"host"}


# Red team F7: each reached the upstream from an untrusted peer.
PROXY_AND_IDENTITY_HEADERS = [
    "X-Envoy-Original-Path", "X-Envoy-Internal", "X-Envoy-Decorator-Operation", "X-Originating-IP",
    "X-Remote-Addr", "X-ProxyUser-Ip", "X-Client-IP", "True-Client-IP", "CF-Connecting-IP", "Fastly-Client-IP",
    "Via", "X-Remote-User", "Remote-User", "X-Auth-Request-User", "X-Auth-Request-Email", "X-Authenticated-User",
    "X-WebAuth-User", "X-Amzn-Oidc-Identity", "X-Amzn-Oidc-Data", "X-Goog-Authenticated-User-Email",
    "X-MS-CLIENT-PRINCIPAL", "X-MS-CLIENT-PRINCIPAL-NAME", "X-Forwarded-User", "X-Forwarded-Email",
    # Red team, second pass (finding 9)
    "X-User", "X-User-Id", "X-Userinfo", "X-Auth-User", "X-Email", "X-HTTP-Host-Override", "Forwarded-For",
    "X-Forward-For",
]


def wsgi_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


@pytest.mark.parametrize("header", PROXY_AND_IDENTITY_HEADERS)
def test_proxy_and_identity_headers_from_an_untrusted_peer_are_dropped(header):
    request = from_environ(environ(**{wsgi_key(header): "evil"}))
    assert set(request.headers) == {"host"}


@pytest.mark.parametrize("header", ["X-Remote-User", "X-Auth-Request-User", "X-Envoy-Internal", "Via"])
def test_proxy_and_identity_headers_from_a_trusted_proxy_are_kept(header):
    request = from_environ(environ(**{wsgi_key(header): "alice"}), trusted_proxies=TrustedProxies(["127.0.0.1"]))
    assert request.headers[header.lower()] == "alice"


@pytest.mark.parametrize("header", ["X-Original-URI", "X-Original-Method", "X-Method", "X-Middleware-Subrequest"])
def test_nginx_style_url_and_method_overrides_are_dropped_even_from_a_trusted_proxy(header):
    for proxies in (TrustedProxies(), TrustedProxies(["127.0.0.1"])):
        assert set(from_environ(environ(**{wsgi_key(header): "DELETE"}), trusted_proxies=proxies).headers) == {"host"}


@pytest.mark.parametrize("query", ["_method=DELETE", "a=1&_method=PUT", "_METHOD=DELETE", "%5Fmethod=DELETE"])
def test_a_query_carrying_a_method_override_is_refused(query):
    """Symfony (http_method_override), Laravel and Rails would serve a DELETE on an authorized GET."""
    assert refused(environ(f"/x?{query}")) == "method_override"



@pytest.mark.parametrize("query", ["a=1;access_token=EVIL", ";", "a=b;c"])
def test_a_raw_semicolon_in_the_query_is_refused(query):
    """Rack 2 and old ``parse_qs`` split pairs on ``;``: ``a=1;access_token=x`` carries a second token."""
    assert refused(environ(f"/x?{query}")) == "query_invalid"


def test_an_encoded_semicolon_in_the_query_is_a_value():
    assert from_environ(environ("/x?a=1%3Baccess_token=x")).query == {"a": ["1;access_token=x"]}


@pytest.mark.parametrize("coding", ["gzip, chunked", "chunked, gzip", "identity", "deflate", "chunked;q=1", ""])
def test_a_transfer_coding_other_than_chunked_is_not_implemented(coding):
    """Red team finding 7: ``gzip, chunked`` was de-chunked and forwarded as identity."""
    with pytest.raises(TransferCodingError) as info:
        from_environ(environ(HTTP_TRANSFER_ENCODING=coding))
    assert (info.value.status_code, info.value.reason) == (501, "transfer_coding_unsupported")


@pytest.mark.parametrize("coding", ["chunked", "Chunked", " chunked "])
def test_the_chunked_transfer_coding_is_accepted(coding):
    assert from_environ(environ(HTTP_TRANSFER_ENCODING=coding)).headers["transfer-encoding"] == coding


@pytest.mark.parametrize("cookie", ["a=1;b=2", "recent=1,2,3", "a=1, b=2"])
def test_the_cookie_header_is_forwarded_as_sent(cookie):
    """Red team pass 3, finding 6: rejoining on ',' turned ``recent=1,2,3`` into three cookies upstream."""
    assert from_environ(environ(HTTP_COOKIE=cookie)).headers["cookie"] == cookie


def test_a_credential_after_a_comma_is_still_seen_by_the_token_sources():
    assert from_environ(environ(HTTP_COOKIE="a=1,session=t")).cookies["session"] == ("t",)
