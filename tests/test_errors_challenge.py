"""``WWW-Authenticate`` challenges never carry input outside RFC 6750 §3's character set (issue 12, item 7)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_app.errors import InsufficientScopeError
from gateway_app.errors import InvalidTokenError
from gateway_app.errors import MissingTokenError
from gateway_app.errors import render_error

# RFC 6750 §3: error_description / realm values, between their quotes.
PARAMETER = r'(\w+)="([\x20\x21\x23-\x5b\x5d-\x7e]*)"'
CHALLENGE = re.compile(rf"Bearer(?: {PARAMETER}(?:, {PARAMETER})*)?")


def challenge_of(error) -> str:
    return render_error(error, "rid").headers["WWW-Authenticate"]


def test_an_attacker_kid_with_quotes_backslashes_and_non_ascii_cannot_break_the_challenge():
    kid = 'x", error="forged\\" 山田\r\nSet-Cookie: a=b'
    challenge = challenge_of(InvalidTokenError(f"no published key has kid {kid!r}", status_code=401))
    assert CHALLENGE.fullmatch(challenge), challenge
    assert challenge.count('error="') == 1
    assert "山" not in challenge and "\\" not in challenge and "\r" not in challenge


@given(st.text(max_size=300), st.text(max_size=50))
def test_every_message_and_realm_give_an_rfc6750_challenge(message, realm):
    for error in (InvalidTokenError(message or None, status_code=401, realm=realm or None),
                  MissingTokenError(message or None, status_code=401, realm=realm or None),
                  InsufficientScopeError(message or None)):
        assert CHALLENGE.fullmatch(challenge_of(error)), challenge_of(error)


@pytest.mark.parametrize("message", ["token expired 5s ago", "missing required scope(s): read:pets write"])
def test_plain_messages_are_kept_as_they_are(message):
    assert f'error_description="{message}"' in challenge_of(InvalidTokenError(message, status_code=401))
