"""Token extraction limits and refusals (issue 8, items 2 and 3)."""

from __future__ import annotations

import pytest

from gateway_app.auth.tokens import DEFAULT_MAX_TOKEN_LENGTH
from gateway_app.auth.tokens import TokenSource
from gateway_app.auth.tokens import parse_token_source
from gateway_app.auth.tokens import strip_cookie
from gateway_app.auth.tokens import strip_query_parameter
from gateway_app.config.fields import Node
from gateway_app.errors import AmbiguousTokenError
from gateway_app.errors import BadRequestError
from gateway_app.errors import ConfigError
from gateway_app.errors import InvalidTokenError
from gateway_app.incoming import IncomingRequest
from gateway_app.incoming import parameter_key
from tests.factories import incoming_request
from hypothesis import given
from hypothesis import strategies as st


def make_request(headers=None, query=None, cookies=None) -> IncomingRequest:
    return incoming_request(host="gw", headers=headers, send_host=False, query=query or {}, cookies=cookies)


def test_default_limit_is_8192_characters():
    source = TokenSource()
    assert DEFAULT_MAX_TOKEN_LENGTH == 8192
    assert source.extract(make_request({"Authorization": "Bearer " + "a" * 8192})).value == "a" * 8192
    with pytest.raises(InvalidTokenError) as info:
        source.extract(make_request({"Authorization": "Bearer " + "a" * 8193}))
    assert info.value.reason == "token_malformed"


def test_max_token_length_is_configurable_within_bounds():
    source = parse_token_source(Node({"maxTokenLength": 32}, "test.yaml"))
    assert source.extract(make_request({"Authorization": "Bearer " + "b" * 32})) is not None
    with pytest.raises(InvalidTokenError):
        source.extract(make_request({"Authorization": "Bearer " + "b" * 33}))
    for bad in (8, 1_000_000):
        with pytest.raises(ConfigError):
            parse_token_source(Node({"maxTokenLength": bad}, "test.yaml"))


def test_the_length_limit_applies_to_query_and_cookie_tokens_too():
    source = parse_token_source(Node({"query": "access_token", "cookie": "at", "maxTokenLength": 16}, "t.yaml"))
    with pytest.raises(InvalidTokenError):
        source.extract(make_request(query={"access_token": ["q" * 17]}))
    with pytest.raises(InvalidTokenError):
        source.extract(make_request(cookies={"at": "c" * 17}))


def test_a_repeated_authorization_header_is_refused_with_400():
    request = make_request({"Authorization": "Bearer one, Bearer two"})
    with pytest.raises(BadRequestError) as info:
        TokenSource().extract(request)
    assert info.value.status_code == 400


def test_the_same_header_repeated_with_the_same_token_is_still_refused():
    request = make_request({"Authorization": "Bearer same, Bearer same"})
    with pytest.raises(BadRequestError):
        TokenSource().extract(request)


def test_two_different_tokens_in_two_sources_are_refused():
    source = parse_token_source(Node({"header": "Authorization", "headerAuthScheme": "Bearer",
                                      "query": "access_token"}, "t.yaml"))
    request = make_request({"Authorization": "Bearer one"}, query={"access_token": ["two"]})
    with pytest.raises(AmbiguousTokenError):
        source.extract(request)


def test_a_repeated_query_parameter_with_different_values_is_refused():
    source = parse_token_source(Node({"query": "access_token"}, "t.yaml"))
    with pytest.raises(AmbiguousTokenError):
        source.extract(make_request(query={"access_token": ["one", "two"]}))


@pytest.mark.parametrize("token", [
    "tok\x00en", "tok\ten", "tok\x7fen", "tök", "tok\u2028en", "tok\u00a0en",
], ids=["NUL", "tab", "DEL", "non-ASCII letter", "line separator", "no-break space"])
def test_tokens_outside_visible_ascii_are_malformed(token):
    source = parse_token_source(Node({"cookie": "at"}, "t.yaml"))
    with pytest.raises(InvalidTokenError) as info:
        source.extract(make_request(cookies={"at": token}))
    assert info.value.reason == "token_malformed"


@pytest.mark.parametrize("header", [
    "Bearer", "Bearer ", "Bearer x y", "Bearer x ", "Bearer\tx", "Bearer x=y", "Bearer =x", 'Bearer "x"',
    "Bearer x;y", "Bearer x%41", "Bearer tök",
], ids=["no token", "empty token", "two tokens", "trailing space", "tab separator", "'=' inside the token",
        "'=' first", "quoted token", "semicolon", "percent escape", "non-ASCII"])
def test_malformed_bearer_credentials_are_invalid(header):
    with pytest.raises(InvalidTokenError) as info:
        TokenSource().extract(make_request({"Authorization": header}))
    assert info.value.reason == "token_malformed"


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer  abc", "abc"),
    ("Bearer abc==", "abc=="),
    ("Bearer a-b.c_d~e+f/g", "a-b.c_d~e+f/g"),
    ("bearer eyJ.eyJ.sig", "eyJ.eyJ.sig"),
], ids=["1*SP between scheme and token (RFC 9110 §11.4)", "trailing padding", "every b64token character",
        "case-insensitive scheme with a JWT"])
def test_bearer_credentials_the_rfc_grammar_allows_are_accepted(header, token):
    assert TokenSource().extract(make_request({"Authorization": header})).value == token


def test_a_repeated_token_cookie_with_different_values_is_ambiguous():
    """``Cookie: session=<valid>; session=<forged>``: last-wins parsers would trust the forged one."""
    source = parse_token_source(Node({"cookie": "session"}, "t.yaml"))
    with pytest.raises(AmbiguousTokenError):
        source.extract(make_request(cookies={"session": ("valid", "forged")}))


def test_a_token_from_a_cookie_beside_another_scheme_in_the_token_header_is_ambiguous():
    """``Authorization: Basic ...`` beside a validated cookie token would reach the upstream as a
    second, unvalidated credential in a location the source reads (found by the differential test)."""
    source = parse_token_source(Node({"header": "Authorization", "headerAuthScheme": "Bearer",
                                      "cookie": "session"}, "t.yaml"))
    with pytest.raises(AmbiguousTokenError):
        source.extract(make_request({"Authorization": "Basic YTpi"}, cookies={"session": ("valid",)}))


def test_another_scheme_in_the_token_header_alone_is_no_token():
    source = parse_token_source(Node({"header": "Authorization", "headerAuthScheme": "Bearer",
                                      "cookie": "session"}, "t.yaml"))
    assert source.extract(make_request({"Authorization": "Basic YTpi"})) is None


def test_a_repeated_token_cookie_with_one_value_is_one_token():
    source = parse_token_source(Node({"cookie": "session"}, "t.yaml"))
    assert source.extract(make_request(cookies={"session": ("same", "same")})).value == "same"


def test_a_token_header_holding_a_comma_is_refused_whatever_its_scheme():
    with pytest.raises(BadRequestError) as info:
        TokenSource().extract(make_request({"Authorization": "Basic dXNlcjpwYXNz,Bearer forged"}))
    assert info.value.reason == "token_header_repeated"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_scheme_matches_case_insensitively(scheme):
    assert TokenSource().extract(make_request({"Authorization": f"{scheme} abc"})).value == "abc"


def test_another_scheme_is_not_a_token():
    assert TokenSource().extract(make_request({"Authorization": "Basic dXNlcjpwYXNz"})) is None


def test_strip_query_parameter_removes_encoded_name_variants_only():
    query = "a=1&access_token=x&access%5Ftoken=y&access_token2=z"
    assert strip_query_parameter(query, "access_token") == "a=1&access_token2=z"


def test_strip_cookie_keeps_other_cookies():
    assert strip_cookie("a=1; at=secret; b=2", "at") == "a=1; b=2"


def test_strip_cookie_removes_every_copy_of_the_name_as_the_request_was_read():
    header = "at=one; a=1;at=two,at=three; %61t=four;  at = five"
    assert strip_cookie(header, "at") == "a=1"


@pytest.mark.parametrize(("query", "cookies"), [
    ({"access_token": ["one"], "ACCESS_TOKEN": ["two"]}, {}),
    ({"access_token": ["one"], "access.token": ["two"]}, {}),
    ({}, {"at": ("one",), "AT": ("two",)}),
    ({}, {"at": ("one",), " at ": ("two",)}),
], ids=["query name in another case (ASP.NET)", "query name with a dot (PHP)", "cookie name in another case",
        "cookie name with blanks"])
def test_a_name_variant_an_upstream_reads_as_the_token_name_is_another_copy(query, cookies):
    source = parse_token_source(Node({"query": "access_token", "cookie": "at"}, "t.yaml"))
    with pytest.raises(AmbiguousTokenError):
        source.extract(make_request(query=query, cookies=cookies))


def test_stripping_removes_every_name_variant_of_the_credential():
    assert strip_query_parameter("ACCESS_TOKEN=x&access.token=y&keep=1", "access_token") == "keep=1"
    assert strip_cookie("AT=x; at=y; keep=1", "at") == "keep=1"


def test_strip_cookie_keeps_a_value_holding_a_comma_intact():
    assert strip_cookie('prefs={"a":1,"b":2}; at=x', "at") == 'prefs={"a":1,"b":2}'


# Red team F3: with a valid token in Authorization, each of these reached the upstream.
@pytest.mark.parametrize(("query", "cookies"), [
    ({"access[token": ["EVIL"]}, {}),
    ({"access_token[]": ["EVIL"]}, {}),
    ({"access_token[0]": ["EVIL"]}, {}),
    ({"access_token[a]": ["EVIL"]}, {}),
    ({"acce\u017fs_token": ["EVIL"]}, {}),
    ({"\uff41ccess_token": ["EVIL"]}, {}),
    ({}, {"session[]": ("EVIL",)}),
    ({}, {"session[0]": ("EVIL",)}),
    ({}, {'"session"': ("EVIL",)}),
    ({}, {"$session": ("EVIL",)}),
], ids=["unclosed bracket (PHP reads access_token)", "PHP list", "PHP index", "PHP key",
        "long s folds to s", "fullwidth letters (NFKC)", "cookie PHP list", "cookie PHP index", "quoted cookie name",
        "dollar cookie name (RFC 2109)"])
def test_a_credential_name_variant_next_to_a_header_token_is_ambiguous(query, cookies):
    source = parse_token_source(Node({"header": "Authorization", "headerAuthScheme": "Bearer",
                                      "query": "access_token", "cookie": "session"}, "t.yaml"))
    request = make_request(headers={"Authorization": "Bearer good-token-123"}, query=query, cookies=cookies)
    with pytest.raises(AmbiguousTokenError):
        source.extract(request)


def test_stripping_removes_php_quoted_and_folded_name_variants():
    query = "access%5Btoken=a&access_token%5B%5D=b&access_token[0]=c&acce%C5%BFs_token=d&keep=1"
    assert strip_query_parameter(query, "access_token") == "keep=1"
    assert strip_cookie('session[]=a; "session"=b; $session=c; keep=1', "session") == "keep=1"


def test_names_that_only_share_a_prefix_are_other_parameters():
    assert {parameter_key(name) for name in ("access_token2", "access_tokens[]", "xaccess_token", "access")} \
        == {"access_token2", "access_tokens", "xaccess_token", "access"}


_FOLDS_TO = {"s": ["s", "S", "\u017f", "\uff53"], "a": ["a", "A", "\uff41"], "k": ["k", "K", "\u212a"]}


@st.composite
def name_variants(draw: st.DrawFn, name: str) -> str:
    """A spelling of ``name`` that PHP, ASP.NET, RFC 2109 cookie parsers or Unicode case rules read as ``name``."""
    chars = []
    for index, char in enumerate(name):
        if char == "_":
            options = ["_", ".", " "] + (["["] if "[" not in chars else [])
            chars.append(draw(st.sampled_from(options)))
        else:
            chars.append(draw(st.sampled_from(_FOLDS_TO.get(char, [char, char.upper()]))))
    variant = "".join(chars)
    if "[" not in variant:
        variant += draw(st.sampled_from(["", "[]", "[0]", "[a]", "[a][b]"]))
    variant = draw(st.sampled_from(["", " ", '"', "$"])) + variant
    if variant.startswith('"'):
        variant += '"'
    return variant


@given(name_variants("access_token"))
def test_every_spelling_an_upstream_reads_as_the_name_has_the_same_parameter_key(variant):
    assert parameter_key(variant) == "access_token"
