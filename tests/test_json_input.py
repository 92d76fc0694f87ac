"""gateway_app.json_input: the one parser for JSON from peers, with its limits."""

from __future__ import annotations

import pytest

from gateway_app.json_input import MAX_DEPTH
from gateway_app.json_input import JsonInputError
from gateway_app.json_input import is_number
from gateway_app.json_input import loads


@pytest.mark.parametrize("data", [
    b"[" * 1200 + b"]" * 1200,
    b'{"a": ' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1),
    b"1" * 5000,
    b"1e400",
    b"-1e400",
    b"NaN",
    b"Infinity",
    b'"\xff"',
    b"{",
    b"",
], ids=["arrays 1,200 deep", "objects one level too deep", "5,000 digits", "overflowing float",
        "overflowing negative float", "NaN", "Infinity", "not UTF-8", "truncated", "empty"])
def test_json_the_gateway_does_not_accept_raises_a_value_error(data):
    with pytest.raises(JsonInputError):
        loads(data)


def test_json_nested_to_the_limit_and_large_but_finite_numbers_parse():
    nested = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert loads(nested) is not None
    assert loads(b'{"exp": 1e300, "n": ' + b"9" * 400 + b"}")["exp"] == 1e300


@pytest.mark.parametrize("value, expected", [
    (1, True), (1.5, True), (-3, True), (10 ** 400, True), (True, False), (False, False), (float("nan"), False),
    (float("inf"), False), ("1", False), (None, False), ([1], False),
], ids=["int", "float", "negative", "huge int", "true", "false", "nan", "inf", "string", "null", "list"])
def test_is_number_is_a_json_number_never_a_bool(value, expected):
    assert is_number(value) is expected
