"""``ConfigMap`` resources -> the Rego modules in their ``data``.

Gloo's ``opaAuth`` reads its policies from ConfigMaps (``modules: [{name, namespace}]``): each
``data`` key ending in ``.rego`` is one module, named ``<namespace>/<name>/<key>``; other keys
are ignored, as Gloo does. References to ConfigMaps resolve as :func:`.refs.resolve_module` says.
"""

from __future__ import annotations

from ..policy.loader import RegoModule
from ..policy.loader import load_module
from .fields import Node
from .loader import RawResource


def parse_config_map(resource: RawResource) -> list[RegoModule]:
    """The Rego modules of one ConfigMap, each parsed and its version resolved, in ``data`` order.

    :raises ConfigError: an unknown top-level field, a ``data`` value that is not a string, a
        module that does not parse (``origin:line:column``), or no ``.rego`` key at all.
    """
    node = Node(resource.body, resource.where, path="")
    for field in ("apiVersion", "kind", "metadata"):
        node.raw(field)
    data = node.str_map("data")
    node.done()
    modules = []
    for key, source in data.items():
        if key.endswith(".rego"):
            origin = f"{resource.file}: ConfigMap {resource.namespace}/{resource.name} data.{key}"
            modules.append(load_module(f"{resource.namespace}/{resource.name}/{key}", source, origin))
    if not modules:
        raise node.error("data", "has no Rego module (a key ending in .rego, such as policy.rego)")
    return modules
