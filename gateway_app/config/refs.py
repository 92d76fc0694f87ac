"""References between resources: the one lookup order every ``{name, namespace}`` follows.

Gloo's ``ResourceRef`` (and Gloo Platform's ``ObjectReference``) semantics, in this order:

1. **Namespace.** The reference's ``namespace``; without one, the *referring resource's*
   namespace (never ``default``).
2. **Accepted.** The resource of the wanted kind at ``namespace/name``.
3. **Rejected.** When that resource exists but was rejected, the reference fails with
   ``depends on rejected <Kind> ns/name: <its reason>``: ``validate`` marks every dependent
   resource REJECTED and names the dependency.
4. **Not found.** Otherwise the reference is dangling; when a resource of that kind and name
   exists in another namespace, the error names it (the usual mistake is the namespace).

A RouteTable's ``delegate.routeTables[]`` entry with ``name`` and ``namespace`` follows steps
2-4; with ``name`` alone it is a *selector*, not a reference: like Gloo Platform's
``ObjectSelector`` it selects the tables of that name in every namespace (sorted by namespace).

``opaAuth.modules`` (:func:`resolve_module`) reads the same way with ConfigMaps as the kind,
plus one step for the Rego directory (which stands in for ConfigMaps mounted as files): only
when *no* ConfigMap of that name exists in any namespace, ``rego/<namespace>/<name>.rego``
then ``rego/<name>.rego`` is used. A ConfigMap reference whose namespace is wrong is therefore
an error, never a silent fall-back to a same-named file the user did not mean.
"""

from __future__ import annotations

import typing as t

from .fields import Node

T = t.TypeVar("T")
Key = tuple[str, str]


class RefTable(dict[Key, T]):
    """Accepted resources of one kind by ``(namespace, name)``, plus ``rejected``: the reasons
    of the resources of that kind that were rejected."""

    def __init__(self, kind: str, items: t.Mapping[Key, T] | None = None) -> None:
        super().__init__(items or {})
        self.kind = kind
        self.rejected: dict[Key, str] = {}


def read_ref(ref: Node, referrer_namespace: str) -> Key:
    """``(namespace, name)`` of a ``{name, namespace?}`` reference (step 1 above)."""
    name = ref.str("name", required=True)
    namespace = ref.str("namespace", default=referrer_namespace)
    return namespace, name


def lookup(table: t.Mapping[Key, T], key: Key, ref: Node, kind: str | None = None, field: str = "name") -> T:
    """Steps 2-4 above for ``key`` in ``table``; errors name ``ref``'s ``field``.

    ``table`` is a :class:`RefTable` (or a plain mapping, which knows no rejections).
    :raises ConfigError: the resource was rejected or does not exist.
    """
    kind = kind or getattr(table, "kind", "resource")
    found = table.get(key)
    if found is not None:
        return found
    raise ref.error(field, missing_reason(table, key, kind))


def missing_reason(table: t.Mapping[Key, t.Any], key: Key, kind: str) -> str:
    """Why ``key`` is not in ``table``: rejected (with its reason), elsewhere, or absent."""
    namespace, name = key
    rejected = getattr(table, "rejected", {})
    if key in rejected:
        return f"depends on rejected {kind} {namespace}/{name}: {rejected[key]}"
    elsewhere = sorted(f"{ns}/{n}" for ns, n in list(table) + list(rejected) if n == name and ns != namespace)
    hint = f" (there is {kind} {elsewhere[0]}; set namespace)" if elsewhere else ""
    return f"{kind} {namespace}/{name} not found{hint}"


def resolve_ref(ref: Node, namespace: str, table: t.Mapping[Key, T], kind: str | None = None) -> T:
    """``{name, namespace}`` looked up in ``table`` in the order above; ``namespace`` is the
    referring resource's.

    :raises ConfigError: a rejected dependency or a dangling reference, naming the field.
    """
    key = read_ref(ref, namespace)
    ref.done()
    return lookup(table, key, ref, kind)


def resolve_module(ref: Node, namespace: str, configmaps: t.Mapping[Key, list[T]],
                   rego_modules: t.Mapping[str, T], rego_rejected: t.Mapping[str, str],
                   rego_dir: str) -> list[T]:
    """The Rego modules one ``opaAuth.modules[]`` entry names (see the module docstring).

    ``configmaps`` maps ConfigMaps to their modules (a :class:`RefTable` knows the rejected
    ones); ``rego_modules`` / ``rego_rejected`` are the Rego directory's modules by name.
    :raises ConfigError: rejected or missing ConfigMap or module.
    """
    key = read_ref(ref, namespace)
    ref.done()
    ns, name = key
    rejected = getattr(configmaps, "rejected", {})
    configmap_names = {n for _, n in list(configmaps) + list(rejected)}
    if key in configmaps or name in configmap_names:
        return lookup(configmaps, key, ref, "ConfigMap")
    for module_name in (f"{ns}/{name}", name):
        if module_name in rego_modules:
            return [rego_modules[module_name]]
        if module_name in rego_rejected:
            raise ref.error("name", f"depends on rejected Rego module {module_name}: {rego_rejected[module_name]}")
    raise ref.error("name", f"no ConfigMap {ns}/{name} in the config and no module "
                            f"{name}.rego or {ns}/{name}.rego in {rego_dir}")


__all__ = ["RefTable", "lookup", "missing_reason", "read_ref", "resolve_module", "resolve_ref"]
