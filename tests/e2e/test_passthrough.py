"""What the gateway writes and relays is valid HTTP, through real gunicorn (issue 12, items 7 and 13).

One gateway (``conf/gunicorn.conf.py``, 1 worker x 4 threads) in front of a recording upstream
(:mod:`tests.support.recording_upstream`): requests-mock would replace the adapter the gateway
forwards through, so only a real upstream shows the bytes. The client side is a raw socket too,
so repeated, added or rewritten response headers are seen exactly as sent.

Item 7: claim values become header text by one rule (``gateway_app.header_values``).
Item 13: the upstream's status, headers and body reach the client unchanged, apart from
hop-by-hop fields and the ones the gateway owns (``X-Request-Id``).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import typing as t

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tests.keys import claims
from tests.keys import jwks_json
from tests.keys import make_jwt
from tests.keys import public_jwk
from tests.keys import rsa_key
from tests.support.recording_upstream import CannedResponse
from tests.support.recording_upstream import RecordingUpstream
from tests.support.servers import ServerProcess
from tests.support.servers import gateway_server
from tests.support.servers import render_config
from tests.factories import bearer

KEY = rsa_key()

CONFIG = """\
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: jwt, namespace: gloo-system}
spec:
  configs:
  - oauth2:
      accessTokenValidation:
        jwt: {localJwks: {inlineString: '{JWKS}'}}
        claimsToHeaders:
        - {claim: sub, header: x-user}
        - {claim: groups, header: x-groups}
        dynamicMetadataFromClaims: {name: name}
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: api, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{prefix: /claims}]
      routeAction: {single: {url: 'http://127.0.0.1:{UPSTREAM_PORT}'}}
      options:
        extauth: {configRef: {name: jwt, namespace: gloo-system}}
        stagedTransformations:
          regular:
            requestTransforms:
            - requestTransformation:
                transformationTemplate:
                  headers:
                    x-name: {text: 'name={{ dynamic_metadata("config_0:name") }}'}
    - matchers: [{prefix: /}]
      routeAction: {single: {url: 'http://127.0.0.1:{UPSTREAM_PORT}'}}
"""


@dataclasses.dataclass
class Answer:
    """A response as the client's socket received it."""

    status_line: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split(" ")[1])

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def names(self) -> list[str]:
        return [key.lower() for key, _ in self.headers]


def exchange(port: int, method: str = "GET", path: str = "/", headers: t.Sequence[tuple[str, str]] = ()) -> Answer:
    """One request on a fresh connection (``Connection: close``); the answer read until EOF."""
    lines = [f"{method} {path} HTTP/1.1", "Host: gw.test", "Connection: close", *(f"{n}: {v}" for n, v in headers)]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    pairs = [(name, value.strip(" \t")) for name, _, value in (field.partition(":") for field in fields)]
    if any(name.lower() == "transfer-encoding" and value == "chunked" for name, value in pairs):
        body = _dechunk(body)
    return Answer(status_line, pairs, body)


def _dechunk(data: bytes) -> bytes:
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return body
        body, data = body + data[:size], data[size + 2:]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[tuple[ServerProcess, RecordingUpstream]]:
    tmp = tmp_path_factory.mktemp("passthrough")
    with RecordingUpstream() as upstream:
        conf = render_config(CONFIG, tmp / "conf", UPSTREAM_PORT=upstream.port,
                             JWKS=jwks_json(public_jwk(KEY, kid="main", alg="RS256")))
        (tmp / "rego").mkdir()
        with gateway_server(tmp, conf, tmp / "rego", workers=1, threads=4) as gateway:
            yield gateway, upstream


@pytest.fixture
def gateway(stack) -> ServerProcess:
    return stack[0]


@pytest.fixture
def upstream(stack) -> t.Iterator[RecordingUpstream]:
    stack[1].clear()
    yield stack[1]
    stack[1].clear()


def signed_bearer(**overrides: t.Any) -> list[tuple[str, str]]:
    return list(bearer(make_jwt(claims(iss=None, aud=None, **overrides), KEY)).items())


# --- item 7: values the gateway writes ---------------------------------------------------

def test_a_non_latin1_sub_claim_is_forwarded_percent_encoded_not_a_500(gateway, upstream):
    """The issue's example: ``sub: 山田`` through claimsToHeaders answered 500 upstream_request_invalid."""
    answer = exchange(gateway.port, path="/claims", headers=signed_bearer(sub="山田"))
    assert answer.status == 200, answer
    [seen] = upstream.requests
    assert seen.header("x-user") == "UTF-8''%E5%B1%B1%E7%94%B0"


def test_crlf_in_a_claim_never_reaches_the_upstream_raw(gateway, upstream):
    answer = exchange(gateway.port, path="/claims", headers=signed_bearer(sub="alice\r\nX-Admin: yes", name="a\x00b"))
    assert answer.status == 200
    [seen] = upstream.requests
    assert seen.header("x-admin") is None
    assert seen.header("x-user") == "UTF-8''alice%0D%0AX-Admin%3A%20yes"
    assert seen.header("x-name") == "name=UTF-8''a%00b"
    assert all(b"\x00" not in line and not line[:1].isspace() for line in seen.header_lines)


def test_a_list_claim_element_holding_a_comma_cannot_pose_as_two(gateway, upstream):
    assert exchange(gateway.port, path="/claims", headers=signed_bearer(groups=["dev,admin", "ops"])).status == 200
    [seen] = upstream.requests
    assert seen.header("x-groups") == "UTF-8''dev%2Cadmin,ops"


def test_a_plain_claim_is_forwarded_as_it_is(gateway, upstream):
    assert exchange(gateway.port, path="/claims", headers=signed_bearer(sub="alice", groups=["dev", "ops"])).status == 200
    [seen] = upstream.requests
    assert (seen.header("x-user"), seen.header("x-groups")) == ("alice", "dev,ops")


# --- item 13: responses pass through intact -----------------------------------------------

def test_the_upstream_date_and_server_reach_the_client_once_and_unchanged(gateway, upstream):
    upstream.respond_with(CannedResponse(200, [("Date", "Tue, 01 Jan 2030 00:00:00 GMT"),
                                               ("Server", "upstream/1.0")], b"ok"))
    answer = exchange(gateway.port)
    assert answer.values("date") == ["Tue, 01 Jan 2030 00:00:00 GMT"]
    assert answer.values("server") == ["upstream/1.0"]


def test_no_server_header_is_added_when_the_upstream_sent_none(gateway, upstream):
    upstream.respond_with(CannedResponse(200, [], b"ok"))
    answer = exchange(gateway.port)
    assert answer.values("server") == []
    assert len(answer.values("date")) == 1                 # RFC 9110 §6.6.1: a recipient adds a missing Date


def test_a_304_keeps_its_validators_and_metadata(gateway, upstream):
    fields = [("ETag", '"v1"'), ("Last-Modified", "Tue, 01 Jan 2030 00:00:00 GMT"), ("Cache-Control", "max-age=60"),
              ("Content-Type", "text/html"), ("Vary", "Accept"), ("Expires", "Tue, 01 Jan 2030 00:01:00 GMT")]
    upstream.respond_with(CannedResponse(304, fields))
    answer = exchange(gateway.port, headers=[("If-None-Match", '"v1"')])
    assert answer.status_line == "HTTP/1.1 304 Not Modified"
    for name, value in fields:
        assert answer.values(name) == [value], name
    assert answer.body == b""
    assert "transfer-encoding" not in answer.names()


@pytest.mark.parametrize("location", [
    "/caf\xc3\xa9?q=a%2Fb",                      # raw UTF-8 bytes, as some servers send them
    "/a b",
    "//other.example/x",
    "../up",
    "https://idp.example/authorize?redirect_uri=http%3A%2F%2Fgw%2F&state=x#frag",
], ids=["raw UTF-8 bytes", "a space", "network-path reference", "relative reference", "absolute with query"])
def test_a_redirect_location_is_not_rewritten(gateway, upstream, location):
    upstream.respond_with(CannedResponse(302, [("Location", location)], b""))
    answer = exchange(gateway.port)
    assert answer.status == 302
    assert answer.values("location") == [location]


@pytest.mark.parametrize("status", [204, 304])
def test_a_bodiless_answer_saying_chunked_is_relayed_at_once(gateway, upstream, status):
    """RFC 9112 §6.3: a 204 or 304 ends with its head, whatever its fields say (found by the
    differential test below: the gateway waited for chunks until the upstream timed out)."""
    upstream.respond_with(CannedResponse(status, [("ETag", '"v1"')], framing="chunked"),
                          CannedResponse(200, [], b"next"))
    answer = exchange(gateway.port)
    assert (answer.status, answer.values("etag"), answer.body) == (status, ['"v1"'], b"")
    assert exchange(gateway.port).body == b"next"


def test_head_keeps_the_content_length_of_the_get_and_sends_no_body(gateway, upstream):
    upstream.respond_with(CannedResponse(200, [("Content-Type", "application/json")], b'{"a": 1}'))
    answer = exchange(gateway.port, method="HEAD")
    assert answer.values("content-length") == ["8"]
    assert answer.values("content-type") == ["application/json"]
    assert answer.body == b""


def test_a_204_gets_no_framing_headers_and_no_body(gateway, upstream):
    upstream.respond_with(CannedResponse(204, [("X-A", "1")]))
    answer = exchange(gateway.port, method="DELETE")
    assert answer.status_line == "HTTP/1.1 204 No Content"
    assert answer.values("x-a") == ["1"]
    assert not {"content-length", "transfer-encoding", "content-type"} & set(answer.names())
    assert answer.body == b""


def test_repeated_set_cookie_headers_stay_separate_and_in_order(gateway, upstream):
    cookies = ["b=2; Path=/", "a=1; Expires=Tue, 01 Jan 2030 00:00:00 GMT", "b=3; HttpOnly"]
    upstream.respond_with(CannedResponse(200, [("Set-Cookie", cookie) for cookie in cookies], b"ok"))
    assert exchange(gateway.port).values("set-cookie") == cookies


def test_no_content_type_is_added_when_the_upstream_sent_none(gateway, upstream):
    upstream.respond_with(CannedResponse(200, [], b"\x00\x01binary"))
    answer = exchange(gateway.port)
    assert "content-type" not in answer.names()
    assert answer.body == b"\x00\x01binary"


@pytest.mark.parametrize("status_line", ["299 Custom Success", "599 Network Connect Timeout", "200 Fine",
                                         "418 I'm a teapot"],
                         ids=["unknown 2xx", "unknown 5xx", "non-standard reason", "standard reason"])
def test_the_status_line_is_relayed_as_sent(gateway, upstream, status_line):
    status, reason = status_line.split(" ", 1)
    upstream.respond_with(CannedResponse(int(status), [], b"x", reason=reason))
    assert exchange(gateway.port).status_line == f"HTTP/1.1 {status_line}"


def test_an_interim_103_is_not_taken_for_the_final_answer(gateway, upstream):
    upstream.respond_with(CannedResponse(200, [("X-Final", "yes")], b"final",
                                         interim=[CannedResponse(103, [("Link", "</s.css>; rel=preload")])]),
                          CannedResponse(200, [], b"next"))
    answer = exchange(gateway.port)
    assert (answer.status, answer.values("x-final"), answer.body) == (200, ["yes"], b"final")
    assert exchange(gateway.port).body == b"next"            # the pooled connection was not left mid-answer


def test_an_obs_folded_upstream_header_is_unfolded_not_a_500(gateway, upstream):
    upstream.respond_with(CannedResponse(200, [("X-Folded", "a\r\n b"), ("X-Ctl", "c\x01d")], b"ok"))
    answer = exchange(gateway.port)
    assert answer.status == 200
    assert answer.values("x-folded") == ["a b"]
    assert answer.values("x-ctl") == ["c d"]


@pytest.mark.parametrize("canned", [
    CannedResponse(200, [("Content-Length", "2"), ("Content-Length", "5")], b"hello", framing="none"),
    CannedResponse(200, [("Content-Length", "2, 2")], b"ok", framing="none"),
    CannedResponse(200, [("Bad Name", "x"), ("X-After", "1")], b"ok"),
    CannedResponse(200, [("X-Space ", "y")], b"ok"),
    CannedResponse(200, [("X-\x7f", "z")], b"ok"),
    CannedResponse(101, [("Upgrade", "websocket"), ("Connection", "Upgrade")]),
    CannedResponse(600, [], b"ok", reason="UNKNOWN"),
], ids=["two different Content-Lengths", "a Content-Length list", "a space inside a field name",
        "a space before the colon", "a control character in a field name", "101 without an upgrade request",
        "a status above 599"])
def test_an_upstream_answer_that_is_not_valid_http_answers_502_at_once(gateway, upstream, canned):
    """RFC 9112 §6.3 / §5.1: a proxy discards an invalid answer and sends 502 (before the fix: a
    field line http.client could not parse was taken for the body's start, and the gateway waited
    for the upstream to close; a 101 was relayed)."""
    upstream.respond_with(canned)
    answer = exchange(gateway.port)
    assert answer.status == 502
    assert json.loads(answer.body)["error"] == "upstream_response_invalid"


def test_header_name_case_is_kept(gateway, upstream):
    upstream.respond_with(CannedResponse(200, [("x-lower", "1"), ("X-MiXeD", "2")], b"ok"))
    headers = exchange(gateway.port).headers
    assert [(name, value) for name, value in headers if name.lower() in ("x-lower", "x-mixed")] == [
        ("x-lower", "1"), ("X-MiXeD", "2")]


def test_hop_by_hop_headers_are_dropped_and_the_request_id_is_the_gateways(gateway, upstream):
    upstream.respond_with(CannedResponse(200, [("Keep-Alive", "timeout=5"), ("Connection", "X-Private"),
                                               ("X-Private", "1"), ("X-Request-Id", "from-upstream"),
                                               ("Trailer", "X-T"), ("X-Kept", "yes")], b"ok"))
    answer = exchange(gateway.port, headers=[("X-Request-Id", "client-id")])
    names = answer.names()
    assert not {"keep-alive", "x-private", "trailer"} & set(names)
    assert answer.values("x-kept") == ["yes"]
    assert len(answer.values("x-request-id")) == 1 and answer.values("x-request-id") != ["from-upstream"]


# --- differential: whatever the upstream answers, the client gets it --------------------------

_TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Fields with a rule of their own: framing and hop-by-hop (RFC 9110 §7.6.1), the gateway's id,
# Date and Server (one each, tested above).
_OWN_RULES = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
              "trailer", "trailers", "transfer-encoding", "upgrade", "content-length", "x-request-id", "date",
              "server"}
_names = st.text(_TOKEN_CHARS, min_size=1, max_size=12).filter(lambda name: name.lower() not in _OWN_RULES)
_values = st.text(st.characters(codec="latin-1", exclude_characters="\x7f", exclude_categories=["Cc"]),
                  max_size=30).map(lambda value: value.strip(" \t"))
_fields = st.lists(st.tuples(st.sampled_from(["Set-Cookie", "Vary", "Link", "Cache-Control", "Location"]) | _names,
                             _values), max_size=8)
_statuses = st.sampled_from([200, 201, 203, 206, 226, 299, 301, 302, 303, 304, 307, 308, 400, 401, 404, 409, 410,
                             412, 418, 429, 451, 499, 500, 502, 503, 599])
# An empty reason phrase is sent as the status's standard one (werkzeug fills it in; it means nothing).
_reasons = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=20).map(str.strip).filter(bool)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(status=_statuses, reason=_reasons, fields=_fields, body=st.binary(max_size=200),
       framing=st.sampled_from(["length", "chunked", "close"]), method=st.sampled_from(["GET", "HEAD", "POST"]))
def test_every_upstream_answer_reaches_the_client_as_sent(gateway, upstream, status, reason, fields, body, framing,
                                                          method):
    upstream.respond_with(CannedResponse(status, fields, body, reason=reason, framing=framing))
    answer = exchange(gateway.port, method=method)
    assert answer.status_line == f"HTTP/1.1 {status} {reason}"
    relayed = [(name, value) for name, value in answer.headers if name.lower() not in _OWN_RULES]
    assert relayed == [(name, value) for name, value in _grouped(fields)]
    bodiless = method == "HEAD" or status in (204, 304)
    assert answer.body == (b"" if bodiless else body)
    if framing == "length" and status not in (204, 304):
        assert answer.values("content-length") == [str(len(body))]


def _grouped(fields: t.Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Fields in the order urllib3 hands them over: by name in order of first appearance, repeats in order."""
    order: dict[str, tuple[str, list[str]]] = {}
    for name, value in fields:
        order.setdefault(name.lower(), (name, []))[1].append(value)
    return [(name, value) for name, values in order.values() for value in values]


def test_an_upstream_that_cuts_its_body_short_closes_the_client_connection_without_a_traceback(gateway, upstream):
    """The head is out when the upstream hangs up 100 kB into a 300 kB body: the client sees the
    connection close before the declared length (RFC 9112 §6.3), and the log holds the proxy's
    one warning line, no gunicorn traceback (red team 3's open point)."""
    log_before = len(gateway.log_text())
    upstream.respond_with(CannedResponse(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + b"x" * 100_000))
    answer = exchange(gateway.port)
    assert answer.status == 200 and answer.values("content-length") == ["300000"]
    assert len(answer.body) < 300_000
    log = gateway.log_text()[log_before:]
    assert "failed while sending its body" in log
    assert "Traceback" not in log and "Error handling request" not in log


@pytest.mark.parametrize("method, status, tries", [("GET", 200, 2), ("HEAD", 200, 2), ("POST", 502, 1)])
def test_an_idempotent_request_whose_upstream_connection_breaks_before_any_answer_is_tried_once_more(
        gateway, upstream, method, status, tries):
    """Red team 6 F5: a pooled connection the upstream closed as it was reused made a GET 502. A connection
    that breaks before any answer byte is retried once for an idempotent method (RFC 9112 §9.3.1),
    never for POST."""
    upstream.respond_with(CannedResponse(raw=b""), CannedResponse(200, [], b"second"))
    answer = exchange(gateway.port, method=method, path="/again")
    assert answer.status == status
    assert [seen.request_line for seen in upstream.requests] == [f"{method} /again HTTP/1.1"] * tries


def test_an_invalid_answer_is_not_retried(gateway, upstream):
    upstream.respond_with(CannedResponse(200, [("Content-Length", "2"), ("Content-Length", "5")], b"hello",
                                         framing="none"), CannedResponse(200, [], b"second"))
    assert exchange(gateway.port, path="/once").status == 502
    assert len(upstream.requests) == 1
