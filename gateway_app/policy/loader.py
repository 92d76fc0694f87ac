"""Rego sources: loading, version detection, compile checks, and regorus's messages.

This module owns what happens to a Rego module before it serves requests; per-thread engines
and query evaluation are :mod:`gateway_app.policy.engine`'s.

**Naming rule.** A module loaded from ``rego/`` is named after its path relative to that
directory, with ``/`` separators and without ``.rego``: ``rego/oauth-scope-apiproduct-opa-cm.rego``
is ``oauth-scope-apiproduct-opa-cm``, ``rego/team/x.rego`` is ``team/x``. Files ending in
``_test.rego`` are test modules (:attr:`RegoModule.is_test`): :func:`load_rego_directory`
returns them only with ``include_tests=True`` (the test runner); the gateway never loads them.

**Version rule** (regorus defaults to Rego v1; the v0 flag applies per ``add_policy`` call, so
one engine mixes v0 and v1 modules). Per module: a module that contains ``import rego.v1`` is
v1; otherwise it is v1 if it parses as v1, else v0 if it parses as v0. When it parses as
neither, the error reported is the one from the parser that got further into the file (v1 on
a tie), so a broken v0 module is not reported as "``if`` keyword is required".

**Checks at load.** Each module is parsed once, then all runtime (non-test) modules are put in
one engine and every package is evaluated once with an empty input, which surfaces what
regorus only finds at evaluation (unsafe variables, unknown functions, conflicting rules). Any
failure is a :class:`~gateway_app.errors.ConfigError` whose ``where`` is ``file:line:column``,
read from regorus's ``RuntimeError`` text by :class:`EngineMessage`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import typing as t

import regorus

from ..errors import ConfigError

_REGO_V1_IMPORT = re.compile(r"^\s*import\s+rego\.v1\s*$", re.MULTILINE)
_ENGINE_LOCATION = re.compile(r"-->\s*(?P<file>.+?):(?P<line>\d+):(?P<column>\d+)\s*$", re.MULTILINE)
_ENGINE_ERROR = re.compile(r"^error:\s*(?P<text>.+)$", re.MULTILINE)
_QUERY_FILE = "<query.rego>"
_MAX_DETAIL = 300
_TEST_SUFFIX = "_test"


@dataclasses.dataclass(frozen=True)
class RegoModule:
    """One Rego source. ``origin`` is a file path or ``"ConfigMap ns/name"``.

    ``version`` is 0 or 1, resolved by :func:`load_module`; ``None`` means "not resolved yet"
    and :func:`resolve_versions` (so :class:`~gateway_app.policy.engine.PolicyEngine`) resolves it.
    """

    name: str
    source: str
    origin: str
    version: int | None = None

    @property
    def is_test(self) -> bool:
        """Whether the name ends in ``_test`` (OPA's convention for ``opa test`` files)."""
        return self.name.endswith(_TEST_SUFFIX)


@dataclasses.dataclass(frozen=True)
class EngineMessage:
    """What a regorus ``RuntimeError`` says, without its Rust backtrace.

    ``file``/``line``/``column`` come from the ``--> file:line:column`` line regorus prints
    (1-based); ``file`` is ``None`` when the message names no place.
    """

    text: str
    file: str | None = None
    line: int = 0
    column: int = 0

    @classmethod
    def parse(cls, error: BaseException) -> EngineMessage:
        """Read ``error``'s text: its ``error:`` lines, its ``Caused by:`` line and its location."""
        raw = str(error).split("Stack backtrace:", 1)[0]
        location = _ENGINE_LOCATION.search(raw)
        texts = [m.group("text").strip() for m in _ENGINE_ERROR.finditer(raw)]
        cause = raw.split("Caused by:", 1)[1].strip().splitlines()[0].strip() if "Caused by:" in raw else ""
        text = "; ".join(texts) or _first_line(raw) or type(error).__name__
        if cause:
            text = f"{text}: {cause}"
        if not location:
            return cls(text=text)
        return cls(text=text, file=location.group("file"), line=int(location.group("line")),
                   column=int(location.group("column")))

    @property
    def location(self) -> str:
        """``file:line:column``, or ``""`` when the message names no file."""
        return f"{self.file}:{self.line}:{self.column}" if self.file else ""

    def describe(self) -> str:
        """One line for logs and tools: the location and the text, at most 300 characters."""
        detail = f"{self.location}: {self.text}" if self.file else self.text
        return detail[:_MAX_DETAIL]

    def config_error(self, query: str | None = None) -> ConfigError:
        """The :class:`ConfigError` for this message: ``where`` is the module's
        ``file:line:column``, or ``Rego query '<query>'`` when the query is what failed."""
        if self.file == _QUERY_FILE or (query is not None and not self.file):
            located = _query_syntax_error(query) if query is not None and self.column <= 1 else None
            message = located or self
            column = f" (column {message.column})" if message.column else ""
            return ConfigError(f"{message.text}{column}", where=f"Rego query {query!r}")
        error = ConfigError(self.text, where=self.location)
        error.line = self.line or None  # for reports; the message already reads file:line:column
        return error


def _query_syntax_error(query: str) -> EngineMessage | None:
    """Where a query stops parsing. regorus reports query syntax errors at column 1 with an
    empty "expecting"; parsed as the body of a rule, the same text gets its real column
    (an error on the closing line means "at the end of the query"). None when it parses."""
    lines = query.splitlines() or [""]
    if len(lines) != 1:
        return None
    engine = regorus.Engine()
    try:
        engine.add_policy(_QUERY_FILE, f"package __query\n__query if {{\n{query}\n}}\n")
    except RuntimeError as e:
        message = EngineMessage.parse(e)
        column = message.column if message.line == 3 else len(query) + 1
        return EngineMessage(text=message.text, file=_QUERY_FILE, line=1, column=column)
    return None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


# -- loading -------------------------------------------------------------------------------


def load_rego_directory(rego_dir: pathlib.Path, *, include_tests: bool = False) -> dict[str, RegoModule]:
    """Every ``*.rego`` file under ``rego_dir`` (recursive, sorted), parsed and checked, by name.

    Test modules (``*_test.rego``) are read and parsed only with ``include_tests=True``; they
    are not evaluated at load (a test that errors is the test runner's to report).

    :raises ConfigError: the directory is missing, or the first module that is unreadable or
        does not compile (:func:`load_rego_modules` reports each one instead).
    """
    loaded = load_rego_modules(rego_dir, include_tests=include_tests)
    if loaded.rejected:
        raise next(iter(loaded.rejected.values()))
    return loaded.modules


@dataclasses.dataclass(frozen=True)
class LoadedModules:
    """A Rego directory's modules by name: those that compile, and why each other one does not."""

    modules: dict[str, RegoModule]
    rejected: dict[str, ConfigError]
    origins: dict[str, str]            # every module's file, by name


def load_rego_modules(rego_dir: pathlib.Path, *, include_tests: bool = False) -> LoadedModules:
    """Like :func:`load_rego_directory`, but one broken module breaks only itself.

    Each file is parsed on its own; the modules that parse are then checked together, and a
    module the check blames (by the file in the engine's message) is set aside and the check
    repeated, so modules that import a broken one are rejected too, each with its own reason.
    Hidden folders (the kubelet's ``..data`` in ConfigMap mounts) are skipped.

    :raises ConfigError: the directory is missing.
    """
    rego_dir = pathlib.Path(rego_dir)
    if not rego_dir.is_dir():
        raise ConfigError("Rego directory not found", where=str(rego_dir))
    modules: dict[str, RegoModule] = {}
    rejected: dict[str, ConfigError] = {}
    origins: dict[str, str] = {}
    for path in sorted(rego_dir.rglob("*.rego")):
        relative = path.relative_to(rego_dir)
        if any(part.startswith(".") for part in relative.parts):
            continue                      # hidden folders, e.g. the kubelet's ..data in ConfigMap mounts
        name = relative.with_suffix("").as_posix()
        if not include_tests and name.endswith(_TEST_SUFFIX):
            continue
        origins[name] = str(path)
        try:
            modules[name] = load_module(name, _read_source(path), str(path))
        except ConfigError as e:
            rejected[name] = e
    _check_each(modules, rejected)
    return LoadedModules(modules, rejected, origins)


def _check_each(modules: dict[str, RegoModule], rejected: dict[str, ConfigError]) -> None:
    """:func:`check_modules` on the runtime modules, moving each blamed module to ``rejected``."""
    by_origin = {module.origin: name for name, module in modules.items()}
    while True:
        runtime = [module for module in modules.values() if not module.is_test]
        try:
            check_modules(runtime)
            return
        except ConfigError as e:
            blamed = by_origin.get(e.where.rsplit(":", 2)[0]) if e.where else None
            if blamed not in modules:
                blamed = _failing_alone(runtime)
            rejected[blamed] = e
            del modules[blamed]


def _failing_alone(modules: list[RegoModule]) -> str:
    """The first module that fails the check on its own; else (a conflict between modules) the last."""
    for module in modules:
        try:
            check_modules([module])
        except ConfigError:
            return module.name
    return modules[-1].name


def _read_source(path: pathlib.Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read Rego module: {e}", where=str(path)) from e


def load_module(name: str, source: str, origin: str) -> RegoModule:
    """Parse ``source`` once and resolve its Rego version (the version rule above).

    :raises ConfigError: naming ``origin:line:column`` and the engine's message.
    """
    versions = (1,) if _REGO_V1_IMPORT.search(source) else (1, 0)
    failures: list[EngineMessage] = []
    for version in versions:
        failure = _parse_failure(origin, source, version)
        if failure is None:
            return RegoModule(name, source, origin, version)
        failures.append(failure)
    furthest = max(failures, key=lambda message: (message.line, message.column))
    raise furthest.config_error()


def _parse_failure(origin: str, source: str, version: int) -> EngineMessage | None:
    """Why ``source`` does not parse as Rego ``version``; ``None`` when it does."""
    engine = regorus.Engine()
    engine.set_rego_v0(version == 0)
    try:
        engine.add_policy(origin, source)
    except RuntimeError as e:
        return EngineMessage.parse(e)
    return None


def _add_module(engine: t.Any, module: RegoModule) -> str:
    """``add_policy`` under the module's version; returns its package (``data.pkg``)."""
    engine.set_rego_v0(module.version == 0)
    try:
        return engine.add_policy(module.origin, module.source)
    except RuntimeError as e:
        raise EngineMessage.parse(e).config_error() from e


def check_modules(modules: t.Iterable[RegoModule], data: t.Mapping[str, t.Any] | None = None) -> None:
    """Put ``modules`` in one engine and evaluate every package once with an empty input.

    :raises ConfigError: on rules that cannot be evaluated (unsafe variable, unknown function,
        conflicting definitions), or ``data`` that is not a JSON object.
    """
    engine, packages = build_engine(list(modules), plain_data(data))
    evaluate_packages(engine, packages.values())


def resolve_versions(modules: t.Iterable[RegoModule]) -> tuple[RegoModule, ...]:
    """``modules`` with every unresolved ``version`` resolved by :func:`load_module`.

    :raises ConfigError: a module without a version does not parse.
    """
    return tuple(m if m.version is not None else load_module(m.name, m.source, m.origin) for m in modules)


def plain_data(data: t.Mapping[str, t.Any] | None) -> dict[str, t.Any] | None:
    """A private JSON-clean copy of the policy data document (OPA's ``data``); ``None`` stays ``None``.

    :raises ConfigError: ``data`` is not a mapping or holds values JSON cannot carry.
    """
    if data is None:
        return None
    if not isinstance(data, t.Mapping):
        raise ConfigError("policy data must be a mapping", where="policy data")
    try:
        return json.loads(json.dumps(dict(data)))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"policy data is not JSON: {e}", where="policy data") from e


def build_engine(modules: t.Sequence[RegoModule],
                 data: dict[str, t.Any] | None = None) -> tuple[t.Any, dict[str, str]]:
    """A raw ``regorus.Engine`` holding ``modules`` and ``data``, and each module's package
    (``data.pkg``) by origin.

    The engine belongs to the calling thread (regorus engines are unsendable); tools use it
    for ASTs and prints, :class:`~gateway_app.policy.engine.PolicyEngine` for evaluation.

    :raises ConfigError: a module does not compile.
    """
    engine = regorus.Engine()
    packages = {module.origin: _add_module(engine, module) for module in resolve_versions(modules)}
    if data:
        engine.add_data(data)
    return engine, packages


def evaluate_packages(engine: t.Any, packages: t.Iterable[str]) -> None:
    """Evaluate each package (``data.pkg``) once with an empty input, in name order.

    :raises ConfigError: a rule cannot be evaluated, naming its ``file:line:column``.
    """
    engine.set_input({})
    for package in sorted(set(packages)):
        try:
            engine.eval_query(package)
        except RuntimeError as e:
            raise EngineMessage.parse(e).config_error() from e
