"""Input shapes: which parts of OPA's ``input`` document Rego sources read, and trimming to them.

Handing regorus a Python dict costs in proportion to its size (``set_input`` on a full
:func:`~gateway_app.policy.input_document.build_input` document with an 800-byte token: 36 µs;
trimmed to what the seed policy reads: 7 µs), and most of the document is what the policy
never reads. So the sources are scanned for ``input.<key>`` / ``input["<key>"]`` chains and
only those branches are passed. Any other use of ``input`` (``input[k]``, ``f(input)``, the
word in a comment) means the shape cannot be told: ``None``, and the whole document is passed.

A shape is a tree of dicts whose leaves are :data:`ALL` ("keep this whole subtree"):
``input.token.scope`` and ``input.request.method`` give
``{"token": {"scope": ALL}, "request": {"method": ALL}}``.
"""

from __future__ import annotations

import re
import typing as t

_INPUT_PATH = re.compile(r'(?<![\w.])input\b(?P<chain>(?:\.[A-Za-z_]\w*|\[\s*"[^"\\]*"\s*\])*)')
_PATH_STEP = re.compile(r'\.(?P<field>[A-Za-z_]\w*)|\[\s*"(?P<key>[^"\\]*)"\s*\]')
ALL = True   # an input shape leaf: keep the whole subtree

InputShape = t.Union[bool, dict]


def input_shape(sources: t.Iterable[str]) -> dict[str, t.Any] | None:
    """The parts of ``input`` the Rego ``sources`` read, as a tree of keys whose leaves are :data:`ALL`.

    ``input.state.jwtAccessToken.scope`` keeps just that branch; a shorter chain to the same
    place (``input.state``) keeps the whole branch. ``None`` when it cannot be told (``input``
    passed whole, read with a variable key, or named in a comment).
    """
    shape: dict[str, t.Any] = {}
    for source in sources:
        for match in _INPUT_PATH.finditer(source):
            steps = [m.group("field") or m.group("key") for m in _PATH_STEP.finditer(match.group("chain"))]
            if not steps:
                return None
            _add_path(shape, steps)
    return shape


def _add_path(shape: dict[str, t.Any], steps: list[str]) -> None:
    node = shape
    for step in steps[:-1]:
        child = node.get(step)
        if child is ALL:
            return
        node = node.setdefault(step, {})
    node[steps[-1]] = ALL


def union(first: dict[str, t.Any] | None, second: dict[str, t.Any] | None) -> dict[str, t.Any] | None:
    """One shape that reads what either reads; ``None`` (read everything) when either is ``None``."""
    if first is None or second is None:
        return None
    merged: dict[str, t.Any] = {}
    for shape in (first, second):
        _merge(merged, shape)
    return merged


def _merge(into: dict[str, t.Any], shape: dict[str, t.Any]) -> None:
    for key, sub in shape.items():
        current = into.get(key)
        if sub is ALL or current is ALL:
            into[key] = ALL
        elif current is None:
            into[key] = {}
            _merge(into[key], sub)
        else:
            _merge(current, sub)


def trim_input(document: t.Any, shape: InputShape) -> t.Any:
    """``document`` cut down to ``shape`` (a new dict at each level; leaves are shared, not copied).

    Keys the shape names but the document lacks stay absent, so the policy sees them undefined
    exactly as it would in the whole document; a non-dict where the shape goes deeper is kept whole.
    """
    if shape is ALL or not isinstance(document, dict):
        return document
    return {key: trim_input(document[key], sub) for key, sub in shape.items() if key in document}
