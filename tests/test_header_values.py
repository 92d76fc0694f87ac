"""Header text the gateway writes (claims, metadata, policy headers) and relays (upstream fields)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_app.header_values import decode_header_text
from gateway_app.header_values import field_text
from gateway_app.header_values import header_text
from gateway_app.header_values import is_token
from gateway_app.header_values import relayed_text

PRINTABLE_ASCII = set(range(0x20, 0x7F))


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", None), ([], None),
    ("alice", "alice"), ("50% off", "50% off"), ("a\\b", "a\\b"),
    ("山田", "UTF-8''%E5%B1%B1%E7%94%B0"),
    ("café", "UTF-8''caf%C3%A9"),
    ("a\r\nX-Admin: yes", "UTF-8''a%0D%0AX-Admin%3A%20yes"),
    ("a\x00b", "UTF-8''a%00b"),
    ("a\tb", "UTF-8''a%09b"),
    (" alice", "UTF-8''%20alice"), ("alice ", "UTF-8''alice%20"),
    ("Doe, John", "UTF-8''Doe%2C%20John"), ('say "hi"', "UTF-8''say%20%22hi%22"),
    ("UTF-8''%41", "UTF-8''UTF-8%27%27%2541"), ("utf-8''x", "UTF-8''utf-8%27%27x"),
    (["a", "b"], "a,b"), ([1, True, 2.5], "1,true,2.5"),
    (["a,b", "c"], "UTF-8''a%2Cb,c"), (["x", ""], "x,UTF-8''"), (["山"], "UTF-8''%E5%B1%B1"),
    (3.5, "3.5"), (False, "false"),
    ({"b": 1, "a": "山"}, '{"a":"\\u5c71","b":1}'), ([["x"]], '[["x"]]'),
], ids=["none", "empty string", "empty list", "plain", "percent sign", "backslash", "non-Latin-1",
        "Latin-1", "CRLF injection", "NUL", "tab", "leading space", "trailing space", "comma", "quotes",
        "looks encoded", "looks encoded, lower case", "strings", "scalars", "element with a comma",
        "empty element", "non-ASCII element", "float", "false", "object as ASCII JSON", "nested array"])
def test_header_text(value, expected):
    assert header_text(value) == expected


@given(st.text(min_size=1))
def test_every_string_becomes_printable_ascii_and_decodes_back(text):
    encoded = header_text(text)
    assert set(encoded.encode("ascii")) <= PRINTABLE_ASCII
    assert encoded == encoded.strip()
    assert decode_header_text(encoded) == text


@given(st.lists(st.text(), min_size=1))
def test_a_list_element_never_poses_as_two(elements):
    encoded = header_text(elements)
    assert '"' not in encoded
    assert [decode_header_text(part) for part in encoded.split(",")] == elements


@pytest.mark.parametrize("text, expected", [
    ("", ""), ('Bearer realm="api", error="invalid_token"', 'Bearer realm="api", error="invalid_token"'),
    ("a\tb", "a\tb"), ("a\r\nb", "UTF-8''a%0D%0Ab"), ("山田", "UTF-8''%E5%B1%B1%E7%94%B0"), (" x", "UTF-8''%20x"),
], ids=["empty", "commas and quotes kept", "inner tab kept", "CRLF encoded", "non-ASCII encoded",
        "leading space encoded"])
def test_field_text_keeps_valid_policy_header_text(text, expected):
    assert field_text(text) == expected


@pytest.mark.parametrize("value, expected", [
    ("plain", "plain"), ("a\r\n b", "a b"), ("a\r\n\tb", "a b"), ("a\x00b\x7fc", "a b c"), ("a\tb", "a\tb"),
], ids=["plain", "obs-fold", "obs-fold with a tab", "NUL and DEL", "tab kept"])
def test_relayed_text_replaces_folds_and_controls_with_spaces(value, expected):
    assert relayed_text(value) == expected


def test_is_token():
    assert is_token("X-Request-Id") and not is_token("x y") and not is_token("") and not is_token("a:b")
