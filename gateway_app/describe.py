"""Words for error messages: a value's JSON/YAML type ("expected a string, got a list") and the
nearest known name for a misspelt one ("did you mean forwardHeaders?")."""

from __future__ import annotations

import difflib
import typing as t


def describe_type(value: t.Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (set, frozenset)):
        return "a set"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def did_you_mean(name: str, known: t.Iterable[str]) -> str:
    """`` (did you mean X?)`` when one known name is close to ``name`` (difflib ratio >= 0.6), else ""."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
