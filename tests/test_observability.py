"""Log lines are printable text whatever a client sends (terminal escape injection, NUL, forged lines)."""

from __future__ import annotations

import json
import logging
import sys
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_app.observability import JsonFormatter
from gateway_app.observability import PlainFormatter
from gateway_app.observability import escape_controls

FORMATTERS = {"plain": PlainFormatter(), "json": JsonFormatter()}


def _record(msg: str, args: tuple = (), fields: dict | None = None, exc_info=None) -> logging.LogRecord:
    record = logging.LogRecord("gateway_app.access", logging.INFO, __file__, 1, msg, args, exc_info)
    if fields is not None:
        record.fields = fields
    return record


def _controls(line: str) -> list[str]:
    return [c for c in line if unicodedata.category(c) == "Cc"]


@pytest.mark.parametrize("fmt", sorted(FORMATTERS))
@given(value=st.text(), message=st.text())
def test_a_formatted_log_line_holds_no_control_character(fmt, value, message) -> None:
    formatter = FORMATTERS[fmt]
    for record in (_record("access", fields={"path": value, "sub": value, "status": 400}),
                   _record("debug %s", (value,)), _record(message)):
        line = formatter.format(record) + "\n"
        assert _controls(line) == ["\n"] and line.endswith("\n")


def test_the_red_team_path_is_logged_escaped_in_both_formats() -> None:
    path = "/public/\x00\x1b[31mRED\x1b[0m\x08\x08\x7f\x85"
    plain = FORMATTERS["plain"].format(_record("access", fields={"path": path, "status": 400}))
    assert not _controls(plain)
    quoted = plain.split("path=", 1)[1].rsplit(" status=", 1)[0]     # JSON-quoted, as any value with a control
    assert quoted == '"/public/\\u0000\\u001b[31mRED\\u001b[0m\\b\\b\\u007f\\u0085"'
    assert json.loads(quoted) == path
    line = FORMATTERS["json"].format(_record("access", fields={"path": path}))
    assert not _controls(line) and json.loads(line)["path"] == path


def test_a_traceback_keeps_its_lines_but_not_the_controls_in_its_message() -> None:
    try:
        raise ValueError("bad \x1b[2J value")
    except ValueError:
        record = _record("failed", exc_info=sys.exc_info())
    text = FORMATTERS["plain"].format(record)
    assert "Traceback (most recent call last):" in text.split("\n")[1]
    assert "\x1b" not in text and "bad \\x1b[2J value" in text


def test_escape_controls_keeps_printable_text_as_it_is() -> None:
    assert escape_controls("/café/ü?x=1 \"q\"") == "/café/ü?x=1 \"q\""
    assert escape_controls("\t\r\n\x9f") == "\\x09\\x0d\\x0a\\x9f"
