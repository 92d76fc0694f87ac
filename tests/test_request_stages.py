"""The request path's stages, each doing its own job: routing picks the target, the body stage
frames and limits the body, the transform stage renders templates and removes exactly the
credential locations the auth stage recorded."""

from __future__ import annotations

import io
import typing as t

import pytest

from gateway_app.auth.state import AuthState
from gateway_app.auth.state import TokenInfo
from gateway_app.auth.steps import AuthContext
from gateway_app.auth.steps import OAuth2Step
from gateway_app.auth.tokens import TokenSource
from gateway_app.config.upstreams import UpstreamTarget
from gateway_app.errors import BadRequestError
from gateway_app.errors import PayloadTooLargeError
from gateway_app.gateway import prepare_upstream
from gateway_app.incoming import IncomingRequest
from gateway_app.incoming import parse_cookies
from gateway_app.incoming import parse_query
from gateway_app.incoming import sent_path
from gateway_app.request_body import client_body
from gateway_app.routing import Matcher
from gateway_app.routing import Route
from gateway_app.routing import Router
from gateway_app.routing import VirtualHost
from gateway_app.transform import HeaderTemplate
from gateway_app.transform import HeaderTransforms
from gateway_app.transform import compile_template

TOKEN = "tok-123"


def request(query_string: str = "", headers: t.Mapping[str, str] | None = None) -> IncomingRequest:
    all_headers = {"host": "api.example.com", **(headers or {})}
    return IncomingRequest(method="POST", scheme="http", host="api.example.com", path="/pets",
                           query_string=query_string, headers=all_headers, query=parse_query(query_string),
                           cookies=parse_cookies(all_headers.get("cookie", "")))


def route(targets: tuple[UpstreamTarget, ...] = (), **kwargs: t.Any) -> Route:
    return Route(name="r", source="test", matchers=(Matcher(),), targets=targets, **kwargs)


class Validator:
    def validate(self, token: str) -> TokenInfo:
        return TokenInfo.from_claims({"sub": "alice"}, "introspection")


def authenticated(incoming: IncomingRequest, source: TokenSource, route_: Route) -> AuthState:
    state = AuthState()
    step = OAuth2Step(index=0, name="config_0", token_source=source, validator=Validator(),
                      validator_kind="introspection")
    step.run(AuthContext(incoming, route_, state))
    return state


def test_the_router_picks_each_target_of_a_route_in_turn():
    targets = tuple(UpstreamTarget(name="u", base_url=f"http://10.0.0.{n}:80") for n in (1, 2, 3))
    router = Router([VirtualHost("v", ("*",), (route(targets),))])

    picked = [router.match(request()).target for _ in range(6)]

    assert picked == [*targets, *targets]


def test_a_route_with_one_target_always_goes_there():
    target = UpstreamTarget(name="u", base_url="http://10.0.0.1:80")
    router = Router([VirtualHost("v", ("*",), (route((target,)),))])
    assert {router.match(request()).target for _ in range(3)} == {target}


def test_the_transform_stage_renders_templates_after_the_auth_headers():
    template = HeaderTemplate("x-sub", compile_template('{{ dynamic_metadata("config_0:sub") }}'))
    state = AuthState(metadata={"config_0": {"sub": "alice"}}, upstream_headers={"x-customer": "acme"})

    upstream = prepare_upstream(request(), route(transforms=HeaderTransforms((template,))), state)

    assert upstream.add_headers == {"x-customer": "acme", "x-sub": "alice"}
    assert upstream.path == "/pets"


@pytest.mark.parametrize(("source", "incoming", "query", "removed", "cookie"), [
    (TokenSource(header="authorization", scheme="Bearer", remove_from_request=True),
     request(headers={"authorization": f"Bearer {TOKEN}"}), "", {"authorization"}, None),
    (TokenSource(header=None, scheme=None, query="access_token", remove_from_request=True),
     request(f"a=1&access_token={TOKEN}&b=2"), "a=1&b=2", set(), None),
    (TokenSource(header=None, scheme=None, cookie="at", remove_from_request=True),
     request(headers={"cookie": f"theme=dark; at={TOKEN}"}), "", {"cookie"}, "theme=dark"),
], ids=["header", "query parameter", "cookie"])
def test_the_credential_is_removed_from_exactly_the_locations_its_source_read(source, incoming, query, removed,
                                                                               cookie):
    route_ = route()
    state = authenticated(incoming, source, route_)

    upstream = prepare_upstream(incoming, route_, state)

    assert upstream.request.query_string == query
    assert upstream.remove_headers == removed
    assert upstream.add_headers.get("cookie") == cookie


def test_a_source_without_remove_from_request_leaves_the_credential():
    incoming = request(headers={"authorization": f"Bearer {TOKEN}"})
    route_ = route()
    state = authenticated(incoming, TokenSource(), route_)

    upstream = prepare_upstream(incoming, route_, state)

    assert upstream.request is incoming and upstream.remove_headers == frozenset()


def test_the_body_stage_parses_the_content_length_once_and_applies_the_limit():
    body = client_body({"wsgi.input": io.BytesIO(b"12345"), "wsgi.input_terminated": True},
                       request(headers={"content-length": "5"}), 5)
    assert body is not None and body.length == 5 and body.read(-1) == b"12345"
    with pytest.raises(PayloadTooLargeError):
        client_body({"wsgi.input": io.BytesIO(b"123456")}, request(headers={"content-length": "6"}), 5)


def test_a_malformed_content_length_is_refused_with_400():
    """RFC 9112 §6.3: an invalid Content-Length without Transfer-Encoding is a 400."""
    with pytest.raises(BadRequestError):
        client_body({"wsgi.input": io.BytesIO(b"12345")}, request(headers={"content-length": "+5"}), None)


def test_an_empty_declared_body_is_no_body():
    assert client_body({"wsgi.input": io.BytesIO(b"")}, request(headers={"content-length": "0"}), None) is None


def test_a_chunked_body_is_unsized_and_counted_against_the_limit():
    body = client_body({"wsgi.input": io.BytesIO(b"x" * 10), "wsgi.input_terminated": True},
                       request(headers={"transfer-encoding": "chunked"}), 8)
    assert body is not None and body.length is None
    with pytest.raises(PayloadTooLargeError):
        body.read(-1)


@pytest.mark.parametrize(("environ", "path"), [
    ({"RAW_URI": "/pets#frag?access_token=t"}, "/pets#frag"),
    ({"REQUEST_URI": "/pets?access_token=t"}, "/pets"),
    ({"PATH_INFO": "/a b", "QUERY_STRING": "access_token=t"}, "/a%20b"),
], ids=["gunicorn RAW_URI", "REQUEST_URI", "rebuilt from PATH_INFO"])
def test_the_path_logged_for_an_unparsed_request_drops_the_query_that_may_carry_a_token(environ, path):
    assert sent_path(environ) == path
