"""Which package may import which: ``config`` builds ``auth`` objects, so ``auth`` reads only the
leaves of ``config`` (the strict field reader and the secret store) and those leaves never
import ``auth`` back. Read from the sources' import statements, at any depth (module level,
``if t.TYPE_CHECKING:`` blocks and function bodies alike)."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "gateway_app"
AUTH_MAY_READ = {"gateway_app.config.fields", "gateway_app.config.secrets"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path) -> set[str]:
    """The ``gateway_app`` modules (or packages) the file at ``path`` imports."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    return imports_in(path.read_text(encoding="utf-8"), package)


def imports_in(source: str, package: list[str]) -> set[str]:
    """The ``gateway_app`` modules ``source`` (a module of ``package``) imports, relative imports resolved."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            if node.module:
                found.add(".".join(base + [node.module]))
            else:
                found.update(".".join(base + [alias.name]) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("gateway_app")}


def sources(folder: str) -> list[pathlib.Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


def file_of(module: str) -> pathlib.Path:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def test_auth_reads_config_only_through_its_field_reader_and_secret_store():
    reads = {(path.name, name) for path in sources("auth") for name in imports_of(path)
             if name.startswith("gateway_app.config")}

    assert {name for _, name in reads} <= AUTH_MAY_READ, sorted(reads)


def test_the_config_modules_auth_reads_never_import_auth_back():
    seen: set[str] = set()
    todo = list(AUTH_MAY_READ)
    while todo:                                    # everything those modules import, transitively
        module = todo.pop()
        if module in seen or not file_of(module).is_file():
            continue
        seen.add(module)
        todo.extend(imports_of(file_of(module)))

    assert not sorted(name for name in seen if name.startswith("gateway_app.auth")), sorted(seen)


def test_the_import_reader_sees_relative_imports_at_any_depth():
    source = """
import typing as t
from ..config.fields import Node
from . import remembered
if t.TYPE_CHECKING:
    from ..routing import Route
def f():
    from .steps import OpaStep
"""
    assert imports_in(source, ["gateway_app", "auth"]) == {
        "gateway_app.config.fields", "gateway_app.auth.remembered", "gateway_app.routing", "gateway_app.auth.steps"}
