"""Rego modules compiled once at start-up, evaluated with regorus on one engine per thread.

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
failure is a :class:`~gateway_app.errors.ConfigError` whose ``where`` is ``file:line:column``.

**Threads.** ``regorus.Engine`` is *unsendable*: touching it from another thread panics
(``pyo3_runtime.PanicException``, a ``BaseException``), and dropping it on another thread
leaks it with an unraisable ``RuntimeError``. Engines therefore live in a per-thread registry
that outlives any :class:`PolicyEngine`; an engine is built lazily in the thread that uses it
and dropped in that same thread: when the thread ends (its thread-local goes with it), on the
thread's next evaluation after its :class:`PolicyEngine` was collected (an old config
generation: collection only bumps a counter, the thread drops its own engines), or by
:func:`release_thread_engines`, which the gateway calls on the thread that built a config
(the reload watcher is a daemon thread that would never end on its own).

**Cost.** An evaluation is ``set_input(dict)`` plus one query: for the seed policy about 16 µs
with the query ``data.test.allow`` and 26 µs with ``data.test.allow == true``.
Measured on the seed policy and a full :func:`build_input` document (800-byte token):
``set_input(dict)`` 36 µs, ``json.dumps`` 42 µs + ``set_input_json`` 29 µs, so ``set_input``
it is. Most of that is converting input the policy never reads, so the input is *trimmed*: the
modules' and the query's sources are scanned for ``input.<key>`` / ``input["<key>"]`` and only
those top-level keys are passed (``set_input`` 7 µs for the seed policy). Any other use of
``input`` (``input[k]``, ``f(input)``, the word in a comment) turns trimming off for that query:
the whole document is passed. A query that is a plain rule path (``data.pkg.allow``) is
answered with ``eval_rule`` (~6 µs) instead of ``eval_query`` (~14 µs).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import pathlib
import re
import threading
import typing as t
import weakref

import regorus

from ..errors import ConfigError
from ..errors import PolicyError

log = logging.getLogger("gateway_app.policy")

_REGO_V1_IMPORT = re.compile(r"^\s*import\s+rego\.v1\s*$", re.MULTILINE)
_RULE_PATH = re.compile(r"^data(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_RULE_EQUALS_TRUE = re.compile(r"^\s*(data(?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*==\s*true\s*$")
_ENGINE_LOCATION = re.compile(r"-->\s*(?P<file>.+?):(?P<line>\d+):(?P<column>\d+)\s*$", re.MULTILINE)
_ENGINE_ERROR = re.compile(r"^error:\s*(?P<text>.+)$", re.MULTILINE)
_QUERY_FILE = "<query.rego>"
_NOT_A_RULE = "not a valid rule path"
_INPUT_REF = re.compile(r'(?<![\w.])input\b(?:\.(?P<field>[A-Za-z_]\w*)|\[\s*"(?P<key>[^"\\]*)"\s*\])?')
_INPUT_PATH = re.compile(r'(?<![\w.])input\b(?P<chain>(?:\.[A-Za-z_]\w*|\[\s*"[^"\\]*"\s*\])*)')
_PATH_STEP = re.compile(r'\.(?P<field>[A-Za-z_]\w*)|\[\s*"(?P<key>[^"\\]*)"\s*\]')
ALL = True   # an input shape leaf: keep the whole subtree
MEMO_ENTRIES = 4096
# Builtins whose answer is not a function of input and data: policies using them are never memoized.
_NON_DETERMINISTIC = ("time.now_ns", "rand.", "http.send", "uuid.", "opa.runtime", "net.lookup", "io.jwt.decode_verify",
                      "print(", "trace(")
_MISSING = object()
_MAX_DETAIL = 300
_TEST_SUFFIX = "_test"


@dataclasses.dataclass(frozen=True)
class RegoModule:
    """One Rego source. ``origin`` is a file path or ``"ConfigMap ns/name"``.

    ``version`` is 0 or 1, resolved by :func:`load_module`; ``None`` means "not resolved yet"
    and :class:`PolicyEngine` resolves it when built.
    """

    name: str
    source: str
    origin: str
    version: int | None = None

    @property
    def is_test(self) -> bool:
        return self.name.endswith(_TEST_SUFFIX)


@dataclasses.dataclass(frozen=True)
class EngineMessage:
    """What a regorus ``RuntimeError`` says, without its Rust backtrace."""

    text: str
    file: str | None = None
    line: int = 0
    column: int = 0

    @classmethod
    def parse(cls, error: BaseException) -> EngineMessage:
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
        return f"{self.file}:{self.line}:{self.column}" if self.file else ""

    def describe(self) -> str:
        detail = f"{self.location}: {self.text}" if self.file else self.text
        return detail[:_MAX_DETAIL]

    def config_error(self, query: str | None = None) -> ConfigError:
        if self.file == _QUERY_FILE or (query is not None and not self.file):
            column = f" (column {self.column})" if self.column else ""
            return ConfigError(f"{self.text}{column}", where=f"Rego query {query!r}")
        error = ConfigError(self.text, where=self.location)
        error.line = self.line or None  # for reports; the message already reads file:line:column
        return error


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


# -- loading -------------------------------------------------------------------------------


def load_rego_directory(rego_dir: pathlib.Path, *, include_tests: bool = False) -> dict[str, RegoModule]:
    """Every ``*.rego`` file under ``rego_dir`` (recursive, sorted), parsed and checked.

    Test modules (``*_test.rego``) are read and parsed only with ``include_tests=True``; they
    are not evaluated at load (a test that errors is the test runner's to report).

    :raises ConfigError: the directory is missing, a file is unreadable or does not compile.
    """
    rego_dir = pathlib.Path(rego_dir)
    if not rego_dir.is_dir():
        raise ConfigError("Rego directory not found", where=str(rego_dir))
    modules: dict[str, RegoModule] = {}
    for path in sorted(rego_dir.rglob("*.rego")):
        relative = path.relative_to(rego_dir)
        if any(part.startswith(".") for part in relative.parts):
            continue                      # hidden folders, e.g. the kubelet's ..data in ConfigMap mounts
        name = relative.with_suffix("").as_posix()
        if include_tests or not name.endswith(_TEST_SUFFIX):
            modules[name] = load_module(name, _read_source(path), str(path))
    check_modules(module for module in modules.values() if not module.is_test)
    return modules


def _read_source(path: pathlib.Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read Rego module: {e}", where=str(path)) from e


def load_module(name: str, source: str, origin: str) -> RegoModule:
    """Parse ``source`` once and resolve its Rego version (see the module docstring).

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
        conflicting definitions).
    """
    engine, packages = build_engine(list(modules), _plain_data(data))
    _evaluate_packages(engine, packages.values())


def _resolved(modules: t.Iterable[RegoModule]) -> tuple[RegoModule, ...]:
    return tuple(m if m.version is not None else load_module(m.name, m.source, m.origin) for m in modules)


def _plain_data(data: t.Mapping[str, t.Any] | None) -> dict[str, t.Any] | None:
    """A private JSON-clean copy of the policy data document."""
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

    The engine belongs to the calling thread; tools use it for ASTs and prints.
    """
    engine = regorus.Engine()
    packages = {module.origin: _add_module(engine, module) for module in _resolved(modules)}
    if data:
        engine.add_data(data)
    return engine, packages


def _evaluate_packages(engine: t.Any, packages: t.Iterable[str]) -> None:
    engine.set_input({})
    for package in sorted(set(packages)):
        try:
            engine.eval_query(package)
        except RuntimeError as e:
            raise EngineMessage.parse(e).config_error() from e


# -- per-thread engines --------------------------------------------------------------------

_thread_local = threading.local()
_engine_keys = itertools.count(1)
_released_lock = threading.Lock()
_released = 0            # PolicyEngines garbage-collected so far, on any thread


class _ThreadEngines:
    """One thread's regorus engines, by :class:`PolicyEngine` key.

    ``seen`` is the value of :data:`_released` when this thread last dropped its orphans: a
    thread looks for orphans (engines whose PolicyEngine is gone, i.e. an old config
    generation) only when another PolicyEngine was released since, so a request pays one
    integer comparison.
    """

    __slots__ = ("engines", "seen")

    def __init__(self) -> None:
        self.engines: dict[int, tuple[weakref.ref[PolicyEngine], t.Any]] = {}
        self.seen = -1

    def drop_orphans(self) -> None:
        """Drop, on this thread, the engines whose PolicyEngine is gone."""
        self.seen = _released
        for key in [key for key, (owner, _) in self.engines.items() if owner() is None]:
            del self.engines[key]


def _thread_engines() -> _ThreadEngines:
    """This thread's engines; dropped with the thread-local on this thread when it ends."""
    slots = getattr(_thread_local, "slots", None)
    if slots is None:
        slots = _thread_local.slots = _ThreadEngines()
    if slots.seen != _released:
        slots.drop_orphans()
    return slots


def _note_released() -> None:
    """A PolicyEngine was collected (any thread): only a counter changes, no engine is touched."""
    global _released
    with _released_lock:
        _released += 1


def release_thread_engines() -> None:
    """Drop every regorus engine the calling thread holds, on this thread.

    For threads that build configs but serve no requests (the main thread at boot, the
    reload watcher, a daemon thread): an engine left in such a thread would otherwise be
    dropped at interpreter exit by another thread, which regorus reports as
    ``RuntimeError: regoruspy::Engine is unsendable, but is being dropped on another thread``.
    """
    slots = getattr(_thread_local, "slots", None)
    if slots is not None:
        slots.engines.clear()


class PolicyEngine:
    """The Rego modules one ``opaAuth`` step references, plus optional data, ready to evaluate.

    Built once at start-up: modules are added and checked, and ``queries`` are checked
    (a query that does not compile is a :class:`ConfigError`). :meth:`evaluate` is safe to
    call from any thread.
    """

    def __init__(self, modules: t.Sequence[RegoModule], data: t.Mapping[str, t.Any] | None = None,
                 queries: t.Iterable[str] = ()) -> None:
        self.modules = _resolved(modules)
        self._data = _plain_data(data)
        self._key = next(_engine_keys)
        weakref.finalize(self, _note_released).atexit = False
        self._plans: dict[str, _QueryPlan] = {}
        self._module_input_shape = input_shape(m.source for m in self.modules)
        engine, packages = build_engine(self.modules, self._data)
        self.packages = sorted(set(packages.values()))
        _evaluate_packages(engine, self.packages)
        self._register(engine)
        for query in queries:
            self.prepare(query)

    def prepare(self, query: str) -> None:
        """Check ``query`` once with an empty input and choose how to evaluate it.

        :raises ConfigError: the query does not compile or cannot be evaluated.
        """
        engine = self._engine()
        engine.set_input({})
        try:
            engine.eval_query(query)
        except RuntimeError as e:
            raise EngineMessage.parse(e).config_error(query) from e
        keys = _union(self._module_input_shape, input_shape([query]))
        equals_true = _RULE_EQUALS_TRUE.match(query)
        if equals_true and _is_rule(engine, equals_true.group(1)):
            # Gloo's usual "data.x.allow == true": the rule's value compared with true, without
            # compiling the comparison on every request; undefined stays undefined.
            self._plans[query] = _QueryPlan(True, keys, rule=equals_true.group(1), equals_true=True,
                                            memoize=self._deterministic(query))
            return
        use_rule = bool(_RULE_PATH.match(query)) and _is_rule(engine, query)
        self._plans[query] = _QueryPlan(use_rule, keys, rule=query, memoize=self._deterministic(query))

    def _deterministic(self, query: str) -> bool:
        """Whether answers depend only on the (trimmed) input: then they may be memoized."""
        sources = [m.source for m in self.modules] + [query]
        return not any(name in source for source in sources for name in _NON_DETERMINISTIC)

    def reads(self, query: str) -> dict[str, t.Any] | None:
        """The parts of the input the query's answer depends on (an input shape), or None when
        the answer may depend on anything: the whole input, or a non-deterministic builtin.
        """
        plan = self._plans.get(query) or self._prepare_late(query)
        return plan.input_shape if plan.memoize else None

    def evaluate(self, query: str, input_document: t.Mapping[str, t.Any]) -> t.Any:
        """The value of the query's first expression in its first result; ``None`` if undefined.

        :raises PolicyError: evaluation failed (``reason="policy_error"``); fail closed.
        """
        plan = self._plans.get(query) or self._prepare_late(query)
        try:
            engine = self._engine()
            trimmed = plan.trim(input_document)
            memo_key = plan.memo_key(trimmed)
            if memo_key is not None:
                remembered = plan.memo.get(memo_key, _MISSING)
                if remembered is not _MISSING:
                    return remembered
            engine.set_input(trimmed)
            if plan.use_rule:
                value = engine.eval_rule(plan.rule)
                value = value if not plan.equals_true or value is None else value is True
            else:
                value = first_value(engine.eval_query(query))
            if memo_key is not None:
                plan.remember(memo_key, value)
            return value
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            raise _policy_error(e) from e
        except BaseException as e:
            self._discard_engine()
            log.warning("regorus engine panicked; rebuilding it for this thread: %s", type(e).__name__)
            raise _policy_error(e) from e

    def _prepare_late(self, query: str) -> _QueryPlan:
        try:
            self.prepare(query)
        except ConfigError as e:
            raise PolicyError(f"policy query cannot be evaluated: {e.detail}", reason="policy_error") from e
        return self._plans[query]

    def _engine(self) -> t.Any:
        entry = _thread_engines().engines.get(self._key)
        if entry is not None:
            return entry[1]
        engine, _ = build_engine(self.modules, self._data)
        self._register(engine)
        return engine

    def _register(self, engine: t.Any) -> None:
        _thread_engines().engines[self._key] = (weakref.ref(self), engine)

    def _discard_engine(self) -> None:
        _thread_engines().engines.pop(self._key, None)


@dataclasses.dataclass(frozen=True)
class _QueryPlan:
    """How to evaluate one query: ``eval_rule`` or ``eval_query``, and which input keys to pass."""

    use_rule: bool
    input_shape: dict[str, t.Any] | None
    rule: str = ""
    equals_true: bool = False
    memoize: bool = False
    memo: dict[str, t.Any] = dataclasses.field(default_factory=dict)
    _memo_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def memo_key(self, trimmed: t.Any) -> str | None:
        """Answers are remembered per trimmed input when the policy is deterministic and
        reads only parts of the input (a request id or a header would make every key new)."""
        if not self.memoize or self.input_shape is None:
            return None
        return repr(trimmed)     # JSON-like values: repr is exact (types kept) and cheaper than json.dumps

    def remember(self, key: str, value: t.Any) -> None:
        if value is not None and not isinstance(value, (bool, int, float, str)):
            return                           # objects (richer decisions) are evaluated every time
        with self._memo_lock:
            if len(self.memo) >= MEMO_ENTRIES:
                self.memo.pop(next(iter(self.memo)))
            self.memo[key] = value

    def trim(self, input_document: t.Any) -> t.Any:
        if self.input_shape is None:
            return input_document
        return trim_input(input_document, self.input_shape)


InputShape = t.Union[bool, dict]


def input_shape(sources: t.Iterable[str]) -> dict[str, t.Any] | None:
    """The parts of ``input`` the sources read, as a tree of keys whose leaves are :data:`ALL`.

    ``input.state.jwtAccessToken.scope`` keeps just that branch; ``None`` when it cannot be
    told (``input`` passed whole, read with a variable key, or named in a comment).
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


def input_keys(sources: t.Iterable[str]) -> frozenset[str] | None:
    """The top-level ``input`` keys the sources read, or ``None`` when that cannot be told."""
    shape = input_shape(sources)
    return None if shape is None else frozenset(shape)


def _union(first: dict[str, t.Any] | None, second: dict[str, t.Any] | None) -> dict[str, t.Any] | None:
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
    """The document cut down to ``shape``: less to convert on every evaluation."""
    if shape is ALL or not isinstance(document, dict):
        return document
    return {key: trim_input(document[key], sub) for key, sub in shape.items() if key in document}


def _is_rule(engine: t.Any, query: str) -> bool:
    """Whether ``eval_rule`` accepts this path (a rule, not a package, data or a rule's field)."""
    try:
        engine.eval_rule(query)
    except RuntimeError as e:
        if _NOT_A_RULE in str(e):
            return False
        raise EngineMessage.parse(e).config_error(query) from e
    return True


def first_value(result: t.Mapping[str, t.Any]) -> t.Any:
    """The first expression's value in ``eval_query``'s first result; ``None`` when undefined."""
    results = result.get("result") or []
    if not results:
        return None
    expressions = results[0].get("expressions") or []
    return expressions[0].get("value") if expressions else None


def _policy_error(error: BaseException) -> PolicyError:
    detail = EngineMessage.parse(error).describe()
    return PolicyError(f"policy evaluation failed: {detail}", reason="policy_error")
