"""JSON that peers send (a JWT's header and payload, an introspection answer, a JWKS): parsed with limits.

:func:`loads` is the one parser for JSON the gateway did not write. RFC 8259 leaves limits to
the parser (§9); these are the gateway's: UTF-8 only (§8.1), no ``NaN``/``Infinity`` and no
number that overflows a double (§6), integers of at most 4300 digits (CPython's own limit),
and at most :data:`MAX_DEPTH` nested arrays/objects, so that no later step (copying claims,
building the policy input, rendering a header) can run out of stack. Anything else raises
:class:`JsonInputError`, a ``ValueError``, which each caller turns into its own meaning.
"""

from __future__ import annotations

import json
import math
import typing as t

MAX_DEPTH = 32          # nested arrays/objects; claims and JWKS documents need 3 or 4


class JsonInputError(ValueError):
    """The bytes are not JSON the gateway accepts; the message says why (no input echoed)."""


def loads(data: bytes | str) -> t.Any:
    """Parse JSON from a peer.

    :param data: UTF-8 bytes (or text).
    :returns: the decoded value (``dict``, ``list``, ``str``, ``int``, ``float``, ``bool`` or ``None``).
    :raises JsonInputError: not UTF-8, not JSON, a non-finite or overflowing number, too deep.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        value = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise JsonInputError(f"nested deeper than {MAX_DEPTH} levels") from None
    except JsonInputError:
        raise
    except ValueError as e:              # JSONDecodeError, UnicodeDecodeError, the 4300-digit limit
        raise JsonInputError(f"not valid JSON ({type(e).__name__})") from None
    if _depth_exceeds(value, MAX_DEPTH):
        raise JsonInputError(f"nested deeper than {MAX_DEPTH} levels")
    return value


def is_number(value: t.Any) -> bool:
    """Whether ``value`` is a JSON number: an int or a finite float, never a bool (RFC 8259 §6)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonInputError("a number overflows a double")
    return value


def _no_constant(name: str) -> t.NoReturn:
    raise JsonInputError(f"{name} is not JSON")


def _depth_exceeds(value: t.Any, limit: int) -> bool:
    """Whether containers nest more than ``limit`` deep (iterative: deep input cannot overflow the stack)."""
    stack: list[tuple[t.Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: t.Iterable[t.Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
