"""Traefik Hub's ``claims`` language, compiled once and evaluated without Rego.

Functions (Traefik Hub "Claims" reference)::

    Equals(`grp`, `admin`)              the claim equals the value
    Prefix(`iss`, `https://idp.`)        the claim starts with the value
    Contains(`email`, `@example.com`)    a string claim contains the text
    SplitContains(`scope`, ` `, `read`)  the claim split on the separator has the value
    OneOf(`grp`, `admin`, `dev`)         the claim is one of the values

combined with ``&&``, ``||``, ``!`` and parentheses (:mod:`gateway_app.boolean_language`).
The first argument is a claim path: ``.`` goes into nested objects and ``\\.`` is a literal dot
(```http://example\\.com/grp```). When the claim is an array, a function holds when it holds for
one element; ``Contains`` on an array is membership (an element equals the value), on a string a
substring test. Numbers and booleans compare
as their JSON text (``Equals(`email_verified`, `true`)``). A missing claim makes the function false.
"""

from __future__ import annotations

import json
import re
import typing as t

from ..boolean_language import Call
from ..boolean_language import Function
from ..boolean_language import Predicate
from ..boolean_language import Source
from ..boolean_language import compile_calls

Claims = t.Mapping[str, t.Any]
_UNESCAPED_DOT = re.compile(r"(?<!\\)\.")
_MISSING = object()


class TraefikClaimsCheck:
    """A compiled ``claims`` expression: ``allows(claims)``; the ``claims_check`` of an oauth2 step."""

    deterministic = True          # a function of the claims only: its outcome may be remembered

    def __init__(self, expression: str, where: str, label: str = "claims") -> None:
        self._predicate = compile_calls(expression, _FUNCTIONS, label, where, "claims")

    def allows(self, claims: Claims) -> bool:
        """Whether the expression holds for ``claims`` (Traefik Hub's JWT ``claims`` functions)."""
        return self._predicate(claims)


def claim_path(key: str) -> tuple[str, ...]:
    """```a.b\\.c``` -> ``("a", "b.c")``."""
    return tuple(part.replace("\\.", ".") for part in _UNESCAPED_DOT.split(key))


def _lookup(claims: Claims, path: tuple[str, ...]) -> t.Any:
    value: t.Any = claims
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _text(value: t.Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return None


Test = t.Callable[[str, tuple[str, ...]], bool]


def _claim_test(test: Test, element_test: Test | None = None) -> t.Callable[[Call, Source], Predicate]:
    """A function over each scalar of the claim (the claim, or each element of an array claim,
    tested with ``element_test`` when given)."""
    def compile_call(call: Call, source: Source) -> Predicate:
        path, arguments = claim_path(call.arguments[0]), call.arguments[1:]
        if not all(path):
            raise source.error(call.argument_positions[0], f"empty part in claim path {call.arguments[0]!r}")

        def predicate(claims: Claims) -> bool:
            value = _lookup(claims, path)
            if isinstance(value, list):
                each = element_test or test
                return any((text := _text(v)) is not None and each(text, arguments) for v in value)
            text = _text(value)
            return text is not None and test(text, arguments)
        return predicate
    return compile_call


def _split_contains(text: str, arguments: tuple[str, ...]) -> bool:
    separator, wanted = arguments
    return bool(separator) and wanted in text.split(separator)


_FUNCTIONS: dict[str, Function] = {
    "Equals": Function(_claim_test(lambda text, args: text == args[0]), 2, 2, "Equals(`grp`, `admin`)"),
    "Prefix": Function(_claim_test(lambda text, args: text.startswith(args[0])), 2, 2, "Prefix(`iss`, `https://`)"),
    "Contains": Function(_claim_test(lambda text, args: args[0] in text,
                                      lambda text, args: text == args[0]), 2, 2, "Contains(`groups`, `admin`)"),
    "SplitContains": Function(_claim_test(_split_contains), 3, 3, "SplitContains(`scope`, ` `, `read`)"),
    "OneOf": Function(_claim_test(lambda text, args: text in args), 2, None, "OneOf(`grp`, `admin`, `dev`)"),
}
