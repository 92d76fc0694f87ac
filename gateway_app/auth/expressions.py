"""Gloo's ``booleanExpr``: names of auth configs combined with and/or/not and parentheses.

Grammar (``&&``/``||``/``!`` are accepted as spellings of and/or/not)::

    expr   := term (("or" | "||") term)*
    term   := factor (("and" | "&&") factor)*
    factor := ("not" | "!") factor | "(" expr ")" | NAME
"""

from __future__ import annotations

import re
import typing as t

from ..errors import ConfigError

_TOKEN = re.compile(r"\s*(\(|\)|&&|\|\||!|[A-Za-z_][\w.\-]*)")

Evaluate = t.Callable[[t.Callable[[str], bool]], bool]


class _Parser:
    def __init__(self, text: str, names: t.Collection[str], where: str) -> None:
        self.tokens = self._tokenize(text, where)
        self.position = 0
        self.names = names
        self.where = where
        self.used: set[str] = set()

    @staticmethod
    def _tokenize(text: str, where: str) -> list[str]:
        tokens, position = [], 0
        text = text.strip()
        while position < len(text):
            match = _TOKEN.match(text, position)
            if not match:
                raise ConfigError(f"booleanExpr: unexpected text at {text[position:]!r}", where=where)
            tokens.append(match.group(1))
            position = match.end()
        return tokens

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise ConfigError("booleanExpr: unexpected end of expression", where=self.where)
        self.position += 1
        return token

    def parse(self) -> Evaluate:
        result = self._expr()
        if self._peek() is not None:
            raise ConfigError(f"booleanExpr: unexpected {self._peek()!r}", where=self.where)
        return result

    def _expr(self) -> Evaluate:
        left = self._term()
        while self._peek() in ("or", "||"):
            self._take()
            left = _or(left, self._term())
        return left

    def _term(self) -> Evaluate:
        left = self._factor()
        while self._peek() in ("and", "&&"):
            self._take()
            left = _and(left, self._factor())
        return left

    def _factor(self) -> Evaluate:
        token = self._take()
        if token in ("not", "!"):
            inner = self._factor()
            return lambda run: not inner(run)
        if token == "(":
            inner = self._expr()
            if self._peek() != ")":
                raise ConfigError("booleanExpr: missing ')'", where=self.where)
            self._take()
            return inner
        if token in ("and", "or", ")", "&&", "||"):
            raise ConfigError(f"booleanExpr: unexpected {token!r}", where=self.where)
        if token not in self.names:
            raise ConfigError(f"booleanExpr: no config named {token!r} (names: {', '.join(sorted(self.names))})",
                              where=self.where)
        self.used.add(token)
        return lambda run: run(token)


def _and(left: Evaluate, right: Evaluate) -> Evaluate:
    return lambda run: left(run) and right(run)


def _or(left: Evaluate, right: Evaluate) -> Evaluate:
    return lambda run: left(run) or right(run)


def compile_boolean_expr(text: str, names: t.Collection[str], where: str) -> Evaluate:
    """Compile once; the result takes ``run(name) -> bool`` and short-circuits."""
    return _Parser(text, names, where).parse()
