"""``Secret`` resources and references to them (``clientSecretRef: {name, namespace}``).

:class:`SecretStore` is handed to the ``auth`` handlers that resolve a secret reference while
parsing their settings, so this module (and what it imports) imports nothing of
``gateway_app.auth`` (``tests/test_layering.py``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses

from ..errors import ConfigError
from .fields import Node
from .loader import RawResource
from .refs import RefTable
from .refs import lookup
from .refs import read_ref

DEFAULT_SECRET_KEY = "client-secret"


class SecretValue:
    """A secret string whose ``repr``/``str`` never show the value; use :meth:`reveal`."""

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str = "") -> None:
        self._value = value
        self.origin = origin

    def reveal(self) -> str:
        """The secret itself: only where it is sent (an IdP request), never logged."""
        return self._value

    def __repr__(self) -> str:
        return f"SecretValue({self.origin or 'hidden'})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretValue) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclasses.dataclass(frozen=True)
class Secret:
    """A Kubernetes ``Secret``: its values by key, each a :class:`SecretValue`."""

    name: str
    namespace: str
    values: dict[str, SecretValue]


def parse_secret(resource: RawResource) -> Secret:
    """``stringData`` (plain) and/or ``data`` (base64), as Kubernetes Secrets have."""
    node = Node(resource.body, resource.where, path="")
    for field in ("apiVersion", "kind", "metadata", "type", "immutable"):
        node.raw(field)
    values: dict[str, SecretValue] = {}
    origin = f"{resource.namespace}/{resource.name}"
    for key, encoded in node.str_map("data").items():
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as e:
            raise node.error(f"data.{key}", "is not valid base64 of UTF-8 text") from e
        values[key] = SecretValue(decoded, f"{origin}:{key}")
    for key, plain in node.str_map("stringData").items():
        values[key] = SecretValue(plain, f"{origin}:{key}")
    node.done()
    if not values:
        raise node.error(None, "a Secret needs data or stringData")
    return Secret(resource.name, resource.namespace, values)


class SecretStore:
    """Secrets by namespace/name, resolving references from other resources."""

    def __init__(self, secrets: list[Secret], rejected: dict[tuple[str, str], str] | None = None) -> None:
        self._secrets: RefTable[Secret] = RefTable("Secret", {(s.namespace, s.name): s for s in secrets})
        self._secrets.rejected.update(rejected or {})

    def resolve(self, ref: Node, default_namespace: str, key: str | None = None) -> SecretValue:
        """Read ``{name, namespace, key?}`` from ``ref`` and return the value.

        Without ``key``: ``client-secret`` if present, else the secret's only value.
        :raises ConfigError: dangling reference (see :mod:`.refs`) or ambiguous key.
        """
        namespace, name = read_ref(ref, default_namespace)
        key = ref.str("key", default=key)
        ref.done()
        secret = lookup(self._secrets, (namespace, name), ref)
        if key is None:
            if DEFAULT_SECRET_KEY in secret.values:
                key = DEFAULT_SECRET_KEY
            elif len(secret.values) == 1:
                key = next(iter(secret.values))
            else:
                raise ref.error(None, f"Secret {namespace}/{name} has several keys; set 'key'")
        if key not in secret.values:
            raise ref.error("key", f"Secret {namespace}/{name} has no key {key!r}")
        return secret.values[key]


def empty_store() -> SecretStore:
    """A store without secrets: every ``secretRef`` in it is dangling."""
    return SecretStore([])


__all__ = ["ConfigError", "Secret", "SecretStore", "SecretValue", "parse_secret", "empty_store"]
