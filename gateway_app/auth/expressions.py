"""Gloo's ``booleanExpr``: names of auth configs combined with and/or/not and parentheses.

Grammar (``&&``/``||``/``!`` are accepted as spellings of and/or/not), parsed by the one
boolean language of :mod:`gateway_app.boolean_language`::

    expr   := term (("or" | "||") term)*
    term   := factor (("and" | "&&") factor)*
    factor := ("not" | "!") factor | "(" expr ")" | NAME
"""

from __future__ import annotations

import typing as t

from ..boolean_language import Parser
from ..boolean_language import Predicate
from ..boolean_language import Source

Evaluate = t.Callable[[t.Callable[[str], bool]], bool]

_KEYWORDS = {"and": "&&", "or": "||", "not": "!"}


def compile_boolean_expr(text: str, names: t.Collection[str], where: str) -> Evaluate:
    """Compile once; the result takes ``run(name) -> bool`` and short-circuits.

    :raises ConfigError: malformed expression or a name that is not a config's.
    """
    source = Source(text, "booleanExpr", where)

    def leaf(parser: Parser) -> Predicate:
        token = parser.take()
        if token.text not in names:
            raise source.error(token.position, f"no config named {token.text!r} "
                                               f"(names: {', '.join(sorted(names))})")
        name = token.text
        return lambda run: run(name)

    if not text.strip():
        raise source.error(0, "is empty")
    return Parser(source, leaf, _KEYWORDS).parse()
