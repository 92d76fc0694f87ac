"""One small boolean language, compiled once into closures: ``&&``, ``||``, ``!`` and parentheses
over leaves. Three dialects use it:

- Gloo's ``booleanExpr`` (leaves are auth config names; ``and``/``or``/``not`` are spellings too),
- Traefik's rule language (leaves are matcher calls such as ``Host(`a.example`)``),
- Traefik Hub's ``claims`` language (leaves are calls such as ``Equals(`grp`, `admin`)``).

Grammar (``!`` binds tighter than ``&&``, which binds tighter than ``||``, as in Go)::

    expr   := term ("||" term)*
    term   := factor ("&&" factor)*
    factor := "!" factor | "(" expr ")" | leaf
    call   := NAME "(" [STRING ("," STRING)*] ")"
    STRING := `raw text` | "text with Go escapes \\" \\\\ \\n \\t \\r"

Errors are :class:`ConfigError`\\ s whose message gives the line and column (1-based) inside
the expression, so a user can find the character in a multi-line YAML value.
"""

from __future__ import annotations

import dataclasses
import re
import typing as t

from .errors import ConfigError

X = t.TypeVar("X")
Predicate = t.Callable[[t.Any], bool]

_OPERATORS = ("&&", "||", "!", "(", ")", ",")
_NAME = re.compile(r"[A-Za-z_][\w.\-]*")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "'": "'"}


@dataclasses.dataclass(frozen=True)
class Token:
    kind: str                  # an operator, "name", "string" or "end"
    text: str                  # the operator, the name, or the string's unescaped value
    position: int              # offset in the expression


class ExpressionError(ConfigError):
    """A malformed expression; ``detail`` says where as ``line L, column C``."""


class Source:
    """The expression text, for turning offsets into line and column."""

    def __init__(self, text: str, label: str, where: str) -> None:
        self.text = text
        self.label = label
        self.where = where

    def error(self, position: int, message: str) -> ExpressionError:
        line = self.text.count("\n", 0, position) + 1
        column = position - (self.text.rfind("\n", 0, position) + 1) + 1
        return ExpressionError(f"{self.label}: line {line}, column {column}: {message}", where=self.where)


def tokenize(source: Source, keywords: t.Mapping[str, str] | None = None) -> list[Token]:
    """Split the expression; ``keywords`` maps words (``and``) to operators (``&&``).

    :raises ExpressionError: an unterminated string, a bad escape or an unexpected character.
    """
    text, tokens, position = source.text, [], 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            tokens.append(Token("end", "", position))
            return tokens
        char = text[position]
        operator = next((op for op in _OPERATORS if text.startswith(op, position)), None)
        if operator is not None:
            tokens.append(Token(operator, operator, position))
            position += len(operator)
        elif char in "`\"":
            value, end = _read_string(source, position)
            tokens.append(Token("string", value, position))
            position = end
        elif match := _NAME.match(text, position):
            word = match.group(0)
            mapped = (keywords or {}).get(word)
            tokens.append(Token(mapped, word, position) if mapped else Token("name", word, position))
            position = match.end()
        else:
            raise source.error(position, f"unexpected character {char!r}")


def _read_string(source: Source, start: int) -> tuple[str, int]:
    """A backtick string (no escapes, as Go raw strings) or a double-quoted one with escapes."""
    text, quote = source.text, source.text[start]
    if quote == "`":
        end = text.find("`", start + 1)
        if end < 0:
            raise source.error(start, "unterminated string (missing closing `)")
        return text[start + 1:end], end + 1
    out, position = [], start + 1
    while position < len(text):
        char = text[position]
        if char == '"':
            return "".join(out), position + 1
        if char == "\n":
            break
        if char == "\\":
            escaped = text[position + 1:position + 2]
            if escaped not in _ESCAPES:
                raise source.error(position, f"unsupported escape \\{escaped} (use \\\" \\\\ \\n \\t \\r, "
                                             f"or a `backtick` string)")
            out.append(_ESCAPES[escaped])
            position += 2
            continue
        out.append(char)
        position += 1
    raise source.error(start, 'unterminated string (missing closing ")')


class Parser:
    """Recursive descent over tokens; ``leaf(parser)`` compiles one leaf into a predicate."""

    def __init__(self, source: Source, leaf: t.Callable[["Parser"], Predicate],
                 keywords: t.Mapping[str, str] | None = None) -> None:
        self.source = source
        self.tokens = tokenize(source, keywords)
        self.index = 0
        self.leaf = leaf

    # -- token access --------------------------------------------------------------------
    def peek(self) -> Token:
        return self.tokens[self.index]

    def take(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def expect(self, kind: str, what: str) -> Token:
        token = self.take()
        if token.kind != kind:
            raise self.unexpected(token, what)
        return token

    def unexpected(self, token: Token, expected: str) -> ExpressionError:
        found = "end of expression" if token.kind == "end" else repr(token.text)
        return self.source.error(token.position, f"expected {expected}, found {found}")

    # -- grammar -------------------------------------------------------------------------
    def parse(self) -> Predicate:
        result = self._expr()
        token = self.peek()
        if token.kind != "end":
            raise self.unexpected(token, "'&&', '||' or the end")
        return result

    def _expr(self) -> Predicate:
        operands = [self._term()]
        while self.peek().kind == "||":
            self.take()
            operands.append(self._term())
        return operands[0] if len(operands) == 1 else _any(tuple(operands))

    def _term(self) -> Predicate:
        operands = [self._factor()]
        while self.peek().kind == "&&":
            self.take()
            operands.append(self._factor())
        return operands[0] if len(operands) == 1 else _all(tuple(operands))

    def _factor(self) -> Predicate:
        token = self.peek()
        if token.kind == "!":
            self.take()
            inner = self._factor()
            return lambda value: not inner(value)
        if token.kind == "(":
            self.take()
            inner = self._expr()
            self.expect(")", "')'")
            return inner
        if token.kind != "name":
            raise self.unexpected(token, "a name, '!' or '('")
        return self.leaf(self)

    def call_arguments(self) -> list[Token]:
        """After a call's name: ``( STRING, ... )``; returns the string tokens."""
        self.expect("(", "'('")
        arguments: list[Token] = []
        if self.peek().kind == ")":
            self.take()
            return arguments
        while True:
            arguments.append(self.expect("string", "a `string` argument"))
            token = self.take()
            if token.kind == ")":
                return arguments
            if token.kind != ",":
                raise self.unexpected(token, "',' or ')'")


def _all(operands: tuple[Predicate, ...]) -> Predicate:
    """Left to right, stopping at the first false (nested closures: no generator per call)."""
    result = operands[0]
    for operand in operands[1:]:
        result = _and(result, operand)
    return result


def _any(operands: tuple[Predicate, ...]) -> Predicate:
    """Left to right, stopping at the first true."""
    result = operands[0]
    for operand in operands[1:]:
        result = _or(result, operand)
    return result


def _and(left: Predicate, right: Predicate) -> Predicate:
    return lambda value: left(value) and right(value)


def _or(left: Predicate, right: Predicate) -> Predicate:
    return lambda value: left(value) or right(value)


@dataclasses.dataclass(frozen=True)
class Call:
    """One parsed call: its name, string arguments and where it starts."""

    name: str
    arguments: tuple[str, ...]
    position: int
    argument_positions: tuple[int, ...]


CallCompiler = t.Callable[[Call, Source], Predicate]


@dataclasses.dataclass(frozen=True)
class Function:
    """A function of a call dialect: how many arguments it takes and how it compiles."""

    compile: CallCompiler
    min_args: int
    max_args: int | None          # None: any number (Traefik v2's ``Host(`a`, `b`)``)
    usage: str                    # "Host(`example.com`)"


def compile_calls(text: str, functions: t.Mapping[str, Function], label: str, where: str,
                  dialect: str, hint: t.Callable[[str], str] | None = None) -> Predicate:
    """Compile a call expression (Traefik's rule or claims language) once.

    :param functions: name -> :class:`Function`; other names are errors naming the known ones.
    :param hint: extra help for an unknown name (a did-you-mean), or None.
    :raises ExpressionError: malformed expression, unknown function, wrong arity or bad argument.
    """
    source = Source(text, label, where)

    def leaf(parser: Parser) -> Predicate:
        name = parser.take()
        function = functions.get(name.text)
        if function is None:
            extra = hint(name.text) if hint else ""
            raise source.error(name.position, f"unknown {dialect} function {name.text!r}{extra} "
                                              f"(known: {', '.join(sorted(functions))})")
        arguments = parser.call_arguments()
        count = len(arguments)
        if count < function.min_args or (function.max_args is not None and count > function.max_args):
            raise source.error(name.position, f"{name.text} takes {_arity(function)}: {function.usage}")
        call = Call(name.text, tuple(a.text for a in arguments), name.position,
                    tuple(a.position for a in arguments))
        return function.compile(call, source)

    if not text.strip():
        raise source.error(0, "is empty")
    return Parser(source, leaf).parse()


def _arity(function: Function) -> str:
    if function.max_args == function.min_args:
        return f"{function.min_args} argument{'s' if function.min_args != 1 else ''}"
    if function.max_args is None:
        return f"at least {function.min_args} argument{'s' if function.min_args != 1 else ''}"
    return f"{function.min_args} to {function.max_args} arguments"
