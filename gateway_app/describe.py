"""Words for error messages: a value's JSON/YAML type ("expected a string, got a list") and the
nearest known name for a misspelt one ("did you mean forwardHeaders?")."""

from __future__ import annotations

import difflib
import re
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
    """`` (did you mean X?)`` when :func:`nearest_name` finds one, else ""."""
    close = nearest_name(name, known)
    return f" (did you mean {close}?)" if close else ""


def nearest_name(name: str, known: t.Iterable[str], cutoff: float = 0.6) -> str | None:
    """The known name ``name`` most likely misspells: its camelCase form when ``name`` is
    snake_case (``remote_jwks`` -> ``remoteJwks``, as Gloo's proto docs spell fields), else
    ``difflib``'s closest match (ratio >= ``cutoff``, case-insensitive), else None."""
    known = list(known)
    camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name)
    if camel != name and camel in known:
        return camel
    by_lower = {k.lower(): k for k in known}
    match = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=cutoff)
    return by_lower[match[0]] if match else None
