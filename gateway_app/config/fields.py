"""A strict reader over one YAML mapping: typed getters, a field path in every error,
and :meth:`Node.done` to reject fields nobody read (oathkeeper's ``additionalProperties: false``).

**Typos first.** A node remembers every field name the parser asked for. An unknown field is
reported as ``unknown field <name> (did you mean <nearest>?)``, the nearest being the asked-for
name :func:`~gateway_app.describe.nearest_name` finds (the camelCase spelling of a snake_case
name, as Gloo's proto docs write ``remote_jwks`` for ``remoteJwks``, else ``difflib``'s closest). Any error a node raises is preceded by
this check for the fields it has seen so far: an unknown field that looks like a missing one is
the error reported, at its own line, not the "missing required field" it caused.

**Layering.** Every handler that reads its own settings (the ``auth`` validators, the Traefik
middlewares) reads them through this module, so it imports nothing of ``gateway_app.auth``:
``config`` builds ``auth`` objects, never the other way round (``tests/test_layering.py``).
"""

from __future__ import annotations

import re
import typing as t

from ..describe import describe_type
from ..describe import nearest_name
from ..errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

T = t.TypeVar("T")


class Node:
    """A mapping being read. ``where`` names file and resource; ``path`` the field inside it."""

    def __init__(self, data: t.Any, where: str, path: str = "spec") -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping, got {describe_type(data)}", where=where,
                              line=getattr(data, "line", None))
        self.data = data
        self.where = where
        self.path = path
        self._read: set[str] = set()
        self._asked: set[str] = set()

    # -- errors ---------------------------------------------------------------
    def error(self, field: str | None, message: str) -> ConfigError:
        """The error to raise for ``field`` (None: the node itself), unless an unknown field
        that looks like a typo of an absent one explains it: then that typo is the error."""
        reporting_unknown = field is not None and field in self.data and field not in self._asked
        typo = None if reporting_unknown else self._typo()
        return typo if typo is not None else self._error(field, message)

    def _error(self, field: str | None, message: str) -> ConfigError:
        path = self.field_path(field) if field else self.path
        lines = getattr(self.data, "key_lines", {})
        line = lines.get(field) if field else getattr(self.data, "line", None)
        return ConfigError(f"{path}: {message}" if path else message, where=self.where, line=line)

    def _unknown(self) -> list[str]:
        return sorted(str(k) for k in self.data if k not in self._read and k not in self._asked)

    def _typo(self) -> ConfigError | None:
        """An unknown field whose nearest known name is a field that is absent."""
        absent = [name for name in self._asked if name not in self.data]
        for field in self._unknown():
            nearest = nearest_name(field, absent, cutoff=_TYPO_CUTOFF)
            if nearest is not None:
                return self._unknown_field(field, nearest)
        return None

    def _unknown_field(self, field: str, nearest: str | None) -> ConfigError:
        hint = f" (did you mean {nearest}?)" if nearest else ""
        return self._error(field, f"unknown field {field}{hint}")

    def field_path(self, field: str) -> str:
        """``field``'s dotted path inside the resource (``spec.configs[0].oauth2``)."""
        return f"{self.path}.{field}" if self.path else field

    # -- presence -------------------------------------------------------------
    def has(self, field: str) -> bool:
        """Whether ``field`` is present and not null (YAML ``~``), as Kubernetes treats null."""
        self._asked.add(field)
        return field in self.data and self.data[field] is not None

    def raw(self, field: str, default: t.Any = None) -> t.Any:
        """``field``'s value as YAML gave it (``default`` when absent or null), marked as read."""
        self._read.add(field)
        self._asked.add(field)
        value = self.data.get(field)
        return default if value is None else value

    def done(self) -> None:
        """Raise on any field that was present but not read, naming the nearest known field."""
        typo = self._typo()
        if typo is not None:
            raise typo
        unknown = sorted(str(k) for k in self.data if k not in self._read)
        if unknown:
            raise self._unknown_field(unknown[0], nearest_name(unknown[0], sorted(self._asked - {unknown[0]})))

    # -- typed getters --------------------------------------------------------
    def _typed(self, field: str, types: tuple[type, ...], label: str, required: bool, default: t.Any) -> t.Any:
        self._read.add(field)
        self._asked.add(field)
        if not self.has(field):
            if required:
                raise self.error(None, f"missing required field '{field}'")
            return default
        value = self.data[field]
        if isinstance(value, bool) and bool not in types:
            raise self.error(field, f"expected {label}, got a boolean")
        if not isinstance(value, types):
            raise self.error(field, f"expected {label}, got {describe_type(value)}")
        return value

    def str(self, field: str, *, required: bool = False, default: str | None = None) -> t.Any:
        """A string field; a required one must not be blank.

        :raises ConfigError: missing when required, blank when required, or not a string.
        """
        value = self._typed(field, (str,), "a string", required, default)
        if required and isinstance(value, str) and not value.strip():
            raise self.error(field, "must not be empty")
        return value

    def bool(self, field: str, *, default: bool = False) -> bool:
        """A YAML boolean (``"true"`` the string is refused). :raises ConfigError: not a boolean."""
        return self._typed(field, (bool,), "true or false", False, default)

    def int(self, field: str, *, default: int | None = None, minimum: int | None = None,
            maximum: int | None = None, required: bool = False) -> t.Any:
        """An integer field (a boolean is not one), within ``[minimum, maximum]`` when given.

        :raises ConfigError: missing when required, not an integer, or out of bounds.
        """
        value = self._typed(field, (int,), "an integer", required, default)
        if isinstance(value, int) and minimum is not None and value < minimum:
            raise self.error(field, f"must be at least {minimum}")
        if isinstance(value, int) and maximum is not None and value > maximum:
            raise self.error(field, f"must be at most {maximum}")
        return value

    def duration(self, field: str, *, default: float | None = None, minimum: float = 0.0) -> t.Any:
        """Seconds from ``10``, ``1.5``, ``"500ms"``, ``"10s"``, ``"5m"``, ``"1h"``.

        :raises ConfigError: not a duration, or below ``minimum`` seconds.
        """
        self._read.add(field)
        self._asked.add(field)
        if not self.has(field):
            return default
        value = self.data[field]
        seconds = parse_duration(value)
        if seconds is None:
            raise self.error(field, f"expected a duration such as 10s, 500ms or 5m, got {value!r}")
        if seconds < minimum:
            raise self.error(field, f"must be at least {minimum}s")
        return seconds

    def list(self, field: str, *, required: bool = False) -> list[t.Any]:
        """A list field (``[]`` when absent). :raises ConfigError: missing when required, or not a list."""
        return self._typed(field, (list,), "a list", required, [])

    def str_list(self, field: str, *, required: bool = False) -> list[str]:
        """A list of strings. :raises ConfigError: as :meth:`list`, or an item that is not a string."""
        values = self.list(field, required=required)
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise self.error(f"{field}[{index}]", f"expected a string, got {describe_type(value)}")
        return list(values)

    def str_map(self, field: str) -> dict[str, str]:
        """A mapping of text (numbers become their text, as Kubernetes labels and ConfigMap
        ``data`` are strings; ``{}`` when absent).

        :raises ConfigError: not a mapping, or a value that is a boolean, null or a collection.
        """
        value = self._typed(field, (dict,), "a mapping", False, {})
        result = {}
        for key, item in value.items():
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise self.error(f"{field}.{key}", f"expected a string, got {describe_type(item)}")
            result[str(key)] = str(item)
        return result

    def child(self, field: str, *, required: bool = False) -> Node | None:
        """The mapping at ``field`` as a :class:`Node` (``None`` when absent).

        :raises ConfigError: missing when required, or not a mapping.
        """
        self._read.add(field)
        self._asked.add(field)
        if not self.has(field):
            if required:
                raise self.error(None, f"missing required field '{field}'")
            return None
        return Node(self.data[field], self.where, self.field_path(field))

    def children(self, field: str, *, required: bool = False) -> list[Node]:
        """The list of mappings at ``field``, one :class:`Node` each (path ``field[i]``).

        :raises ConfigError: as :meth:`list`, or an item that is not a mapping.
        """
        items = self.list(field, required=required)
        return [Node(item, self.where, f"{self.path}.{field}[{i}]") for i, item in enumerate(items)]

    def one_of(self, *fields: str, required: bool = True) -> str | None:
        """Exactly one of ``fields`` is present (a protobuf ``oneof``, as Gloo's API declares
        them); returns its name, or ``None`` when none is and ``required`` is false.

        :raises ConfigError: more than one is set, or none when required.
        """
        present = [f for f in fields if self.has(f)]
        if len(present) > 1:
            raise self.error(present[1], f"only one of {', '.join(fields)} may be set")
        if not present:
            if required:
                raise self.error(None, f"one of {', '.join(fields)} is required")
            return None
        return present[0]


_TYPO_CUTOFF = 0.8          # stricter when the typo replaces another error (a missing field)


def parse_duration(value: t.Any) -> float | None:
    """Seconds from a number or ``"<number>[ms|s|m|h]"`` (no unit: seconds); ``None`` when
    ``value`` is neither (a boolean included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    return None
