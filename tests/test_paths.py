"""Path confusion: one normalized path is routed, authorized and forwarded (issue 8, item 1).

Unit cases for :func:`normalize_path`, then the same attacks through the Flask test client
against a protected ``/petstore`` route, an open ``/tracks`` route and an open catch-all:
a request is never authorized as one route and forwarded as another, even to an upstream
that decodes leniently (twice, backslashes as slashes, ``;params`` dropped, case-folded).
"""

from __future__ import annotations

import posixpath
import time
import urllib.parse

import pytest
import requests_mock as requests_mock_module

from gateway_app.errors import BadRequestError
from gateway_app.paths import MAX_PATH_LENGTH
from gateway_app.paths import normalize_path
from tests.factories import bearer

UPSTREAM = "http://upstream.test:8000"
IDP = "http://idp.test/introspect"
TOKEN = "good-token-123456"

CONFIG = {
    "upstream.yaml": """
        apiVersion: gloo.solo.io/v1
        kind: Upstream
        metadata: {name: api, namespace: gloo-system}
        spec:
          static:
            hosts: [{addr: upstream.test, port: 8000}]
        """,
    "auth.yaml": """
        apiVersion: v1
        kind: Secret
        metadata: {name: idp, namespace: gloo-system}
        stringData: {client-secret: s3cret-value}
        ---
        apiVersion: enterprise.gloo.solo.io/v1
        kind: AuthConfig
        metadata: {name: petstore-auth, namespace: gloo-system}
        spec:
          configs:
          - oauth2:
              accessTokenValidation:
                introspection:
                  introspectionUrl: http://idp.test/introspect
                  clientId: gw
                  clientSecretRef: {name: idp, namespace: gloo-system}
                  retries: 0
        """,
    "vs.yaml": """
        apiVersion: gateway.solo.io/v1
        kind: VirtualService
        metadata: {name: api, namespace: gloo-system}
        spec:
          virtualHost:
            domains: ['*']
            routes:
            - name: petstore
              matchers: [{prefix: /petstore, caseSensitive: false}]
              routeAction: {single: {upstream: {name: api, namespace: gloo-system}}}
              options:
                extauth: {configRef: {name: petstore-auth, namespace: gloo-system}}
            - name: tracks
              matchers: [{prefix: /tracks}]
              routeAction: {single: {upstream: {name: api, namespace: gloo-system}}}
            - name: everything-else
              matchers: [{prefix: /}]
              routeAction: {single: {upstream: {name: api, namespace: gloo-system}}}
        """,
}


# -- normalize_path -------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("/petstore/../tracks", "/tracks"),
    ("/petstore/%2e%2e/tracks", "/tracks"),
    ("/petstore/%2E%2e/tracks", "/tracks"),
    ("/petstore/.%2e/tracks", "/tracks"),
    ("//tracks", "/tracks"),
    ("/tracks//a///b", "/tracks/a/b"),
    ("/tracks/./a/.", "/tracks/a/"),
    ("/../../tracks", "/tracks"),
    ("/tracks/..", "/"),
    ("/%70etstore", "/petstore"),
    ("/tracks/%7e%41", "/tracks/~A"),
    ("/tracks/a%2fb".replace("%2f", "%3a"), "/tracks/a%3Ab"),
    ("/tracks/100%25", "/tracks/100%25"),
    ("/PetStore/X", "/PetStore/X"),
    ("", "/"),
], ids=[
    "dot-dot segment is resolved", "encoded dot-dot is decoded then resolved", "mixed-case escapes are decoded",
    "half-encoded dot-dot is resolved", "leading double slash is merged", "repeated slashes are merged",
    "single dots are removed", "dot-dot above the root stays at the root", "trailing dot-dot keeps a slash",
    "encoded unreserved letter is decoded", "encoded tilde and letter are decoded",
    "reserved escapes stay encoded with upper-case hex", "a literal percent sign stays encoded",
    "case is kept as sent", "an empty path is the root",
])
def test_normalize_path_resolves_to_one_canonical_form(raw, expected):
    assert normalize_path(raw) == expected


@pytest.mark.parametrize("raw", [
    "/petstore%2F..%2Ftracks",
    "/tracks%2f..%2fpetstore",
    "/tracks%5C..%5Cpetstore",
    "/tracks\\..\\petstore",
    "/tracks%00/x",
    "/tracks/\x00",
    "/tracks/\x7f",
    "/tracks/a b",
    "/tracks/caf\xc3\xa9",
    "/tracks/\xff",
    "/tracks/%zz",
    "/tracks/%4",
    "/tracks/..;/petstore",
    "/petstore;jsessionid=1",
    "/admin;x/secret",
    "/tracks/%252e%252e/petstore",
    "/tracks/%252F",
    "tracks",
    "*",
    "/" + "a" * MAX_PATH_LENGTH,
], ids=[
    "encoded slash", "lower-case encoded slash", "encoded backslash", "raw backslash", "encoded NUL", "raw NUL",
    "DEL", "space", "UTF-8 bytes", "non-UTF-8 byte", "malformed escape", "truncated escape",
    "dot-dot with parameters", "path parameter", "parameter hiding a segment boundary",
    "double-encoded dot-dot", "double-encoded slash", "relative path", "asterisk form", "overlong path",
])
def test_normalize_path_refuses_ambiguous_paths_with_400(raw):
    with pytest.raises(BadRequestError) as info:
        normalize_path(raw)
    assert info.value.status_code == 400
    assert info.value.reason in ("path_invalid", "path_too_long")


@pytest.mark.parametrize("raw", [
    "/public/..%c0%af/secret", "/public/%c0%ae%c0%ae/secret", "/public/%ff", "/public/%e9", "/public/%e2%82",
    "/public/%ed%a0%80",
], ids=["overlong slash", "overlong dots", "byte ff", "latin-1 e-acute", "truncated sequence", "UTF-16 surrogate"])
def test_percent_escapes_that_are_not_utf8_are_refused(raw):
    """Lenient decoders read ``%c0%af`` as ``/``; the query has the same rule (``query_invalid``)."""
    with pytest.raises(BadRequestError) as info:
        normalize_path(raw)
    assert info.value.reason == "path_invalid"


@pytest.mark.parametrize("escape", [f"%{code:02x}" for code in (*range(0x20), 0x7F)] + ["%0A%0D", "%7f"])
def test_encoded_control_characters_in_the_path_are_refused(escape):
    with pytest.raises(BadRequestError) as info:
        normalize_path(f"/public/{escape}")
    assert info.value.reason == "path_invalid"


def test_encoded_utf8_in_the_path_is_kept_encoded():
    assert normalize_path("/public/caf%c3%a9/%E5%B1%B1") == "/public/caf%C3%A9/%E5%B1%B1"


def test_a_path_of_exactly_the_maximum_length_is_accepted():
    path = "/" + "a" * (MAX_PATH_LENGTH - 1)
    assert normalize_path(path) == path


@pytest.mark.parametrize("raw", ["/petstore/../tracks", "/a/%2e/b//c", "/%70etstore/x/", "/x/y/../../z"])
def test_normalize_path_is_idempotent(raw):
    once = normalize_path(raw)
    assert normalize_path(once) == once


# -- through the app ------------------------------------------------------------------------

def lenient_reading(path: str) -> str:
    """What the most forgiving upstream could make of a forwarded path."""
    for _ in range(3):
        path = urllib.parse.unquote(path, errors="replace")
    path = path.replace("\\", "/")
    path = "/".join(segment.split(";", 1)[0] for segment in path.split("/"))
    path = posixpath.normpath("/" + path.lstrip("/"))
    return path.lower()


@pytest.fixture
def gateway(make_app, requests_mock):
    upstream = requests_mock.get(requests_mock_module.ANY, text="upstream")
    requests_mock.post(IDP, json=lambda request, context: (
        {"active": True, "sub": "alice", "exp": int(time.time()) + 600} if f"token={TOKEN}" in request.text
        else {"active": False}))
    return make_app(CONFIG).test_client(), upstream


def send(client, raw_uri: str, **kwargs):
    """A GET whose request target is exactly ``raw_uri``, as gunicorn passes it in ``RAW_URI``."""
    path, _, query = raw_uri.partition("?")
    return client.get("/", query_string=query, environ_overrides={"RAW_URI": raw_uri, "REQUEST_URI": raw_uri},
                      **kwargs)


def forwarded_path(upstream) -> str:
    return urllib.parse.urlsplit(upstream.last_request.url).path


ATTACKS = [
    "/petstore/../tracks", "/petstore/%2e%2e/tracks", "/petstore%2F..%2Ftracks", "//tracks", "//petstore",
    "/tracks/../petstore", "/tracks/%2e%2e/petstore", "/tracks/%2E%2E/PETSTORE", "/tracks/..%2Fpetstore",
    "/tracks%2F..%2Fpetstore", "/PETSTORE", "/PetStore/pets", "/%70etstore", "/%50ETSTORE", "/./petstore",
    "/tracks/..;/petstore", "/petstore;x=1", "/tracks;/../petstore", "/tracks/%252e%252e/petstore",
    "/tracks\\..\\petstore", "/tracks/%5c..%5cpetstore", "/tracks/%00/../../petstore", "///petstore//pets",
    "/tracks/./../petstore/", "/x/" + "../" * 40 + "petstore", "/" + "a/" * 2100 + "../petstore",
]


@pytest.mark.parametrize("path", ATTACKS)
def test_no_path_reaches_petstore_without_a_token(gateway, path):
    client, upstream = gateway
    response = send(client, path)
    assert response.status_code in (200, 400, 403, 404)
    if response.status_code == 200:
        assert not lenient_reading(forwarded_path(upstream)).startswith("/petstore")


@pytest.mark.parametrize(("path", "forwarded"), [
    ("/petstore/../tracks", "/tracks"),
    ("/petstore/%2e%2e/tracks", "/tracks"),
    ("//tracks", "/tracks"),
    ("/tracks//x/./y", "/tracks/x/y"),
], ids=["dot-dot", "encoded dot-dot", "double slash", "slashes and dots"])
def test_open_route_forwards_the_normalized_path_it_matched(gateway, path, forwarded):
    client, upstream = gateway
    response = send(client, path + "?q=%2e%2e")
    assert response.status_code == 200
    assert forwarded_path(upstream) == forwarded
    assert urllib.parse.urlsplit(upstream.last_request.url).query == "q=%2e%2e"


@pytest.mark.parametrize("path", [
    "/tracks/../petstore", "/tracks/%2e%2e/petstore", "/%70etstore", "/PETSTORE", "//petstore/",
])
def test_paths_that_resolve_to_petstore_need_a_token_and_forward_the_resolved_path(gateway, path):
    client, upstream = gateway
    assert send(client, path).status_code == 403
    assert not upstream.called
    response = send(client, path, headers=bearer(TOKEN))
    assert response.status_code == 200
    assert lenient_reading(forwarded_path(upstream)).startswith("/petstore")
    assert forwarded_path(upstream) == normalize_path(path)


@pytest.mark.parametrize("raw_uri", [
    "/petstore%2F..%2Ftracks", "/tracks/\xff", "/tracks/caf\xc3\xa9", "/petstore;x=1",
    "/tracks/..;/petstore", "/" + "a" * 5000, "/tracks/%zz",
], ids=["encoded slash", "non-UTF-8 byte", "UTF-8 bytes", "path parameter", "dot-dot parameter",
        "overlong", "malformed escape"])
def test_refused_paths_answer_400_with_a_json_reason_and_no_upstream_call(gateway, raw_uri):
    client, upstream = gateway
    response = send(client, raw_uri)
    assert response.status_code == 400
    assert response.get_json()["error"] in ("path_invalid", "path_too_long")
    assert not upstream.called


def test_absolute_form_request_target_is_routed_on_its_path(gateway):
    client, upstream = gateway
    raw = "http://evil.example/tracks/../petstore"
    assert send(client, raw).status_code == 403
    assert not upstream.called
