"""Read every YAML resource under a config directory, remembering file, document and line."""

from __future__ import annotations

import dataclasses
import pathlib
import typing as t

import yaml

from ..errors import ConfigError


class LineMap(dict):
    """A mapping from YAML that remembers the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[str, int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings are :class:`LineMap`s."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineMap:
    loader.flatten_mapping(node)
    result = LineMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be scalars", key_node.start_mark)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[str(key)] = key_node.start_mark.line + 1
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclasses.dataclass(frozen=True)
class RawResource:
    """One Kubernetes-style document as read from disk, before validation."""

    kind: str
    api_version: str
    name: str
    namespace: str
    body: LineMap
    file: str
    index: int

    @property
    def line(self) -> int:
        """The 1-based line where the document's mapping starts in ``file``."""
        return self.body.line

    @property
    def key(self) -> tuple[str, str, str]:
        """``(kind, namespace, name)``: two resources with one key are duplicates."""
        return (self.kind, self.namespace, self.name)

    @property
    def where(self) -> str:
        """``<file>: <Kind> <namespace>/<name>``, the prefix of every error about this resource."""
        return f"{self.file}: {self.kind} {self.namespace}/{self.name}"


DEFAULT_NAMESPACE = "default"


def config_files(config_dir: pathlib.Path) -> list[pathlib.Path]:
    """YAML files under ``config_dir``, sorted, hidden files and folders skipped."""
    if not config_dir.is_dir():
        raise ConfigError(f"config directory {config_dir} does not exist", where=str(config_dir))
    files = [p for p in config_dir.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()]
    return sorted(p for p in files if not any(part.startswith(".") for part in p.relative_to(config_dir).parts))


def load_file(path: pathlib.Path, display: str | None = None) -> list[RawResource]:
    """Parse one multi-document YAML file into raw resources.

    :raises ConfigError: bad YAML, or a document that is not a resource.
    """
    display = display or str(path)
    try:
        documents = list(yaml.load_all(path.read_text(encoding="utf-8"), Loader=_LineLoader))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"invalid YAML: {problem}", where=display, line=line) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read file: {e}", where=display) from e
    return [_to_resource(doc, display, index) for index, doc in enumerate(documents) if doc is not None]


def _to_resource(doc: t.Any, file: str, index: int) -> RawResource:
    where = f"{file}: document {index + 1}"
    if not isinstance(doc, LineMap):
        raise ConfigError("a resource must be a mapping with apiVersion, kind, metadata, spec", where=where)
    kind = doc.get("kind")
    metadata = doc.get("metadata")
    if not isinstance(kind, str) or not kind:
        raise ConfigError("missing field 'kind'", where=where, line=doc.line)
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str) or not metadata["name"]:
        raise ConfigError("missing field 'metadata.name'", where=f"{where} ({kind})", line=doc.line)
    namespace = metadata.get("namespace") or DEFAULT_NAMESPACE
    if not isinstance(namespace, str):
        raise ConfigError("metadata.namespace must be a string", where=f"{where} ({kind})", line=doc.line)
    return RawResource(kind=kind, api_version=str(doc.get("apiVersion", "")), name=metadata["name"],
                       namespace=namespace, body=doc, file=file, index=index)
