"""Rego evaluation: one regorus engine per thread, and a plan per query.

Modules reach this module loaded and checked (:mod:`gateway_app.policy.loader`); this module
owns evaluating them on the request path.

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
it is, on the input trimmed to what the modules and the query read
(:mod:`gateway_app.policy.input_shape`; ``set_input`` 7 µs for the seed policy). A query that
is a plain rule path (``data.pkg.allow``) is answered with ``eval_rule`` (~6 µs) instead of
``eval_query`` (~14 µs), and ``data.pkg.allow == true`` as the rule's value compared with
``true``. Answers of deterministic policies that read only parts of the input are memoized
per trimmed input (at most :data:`MEMO_ENTRIES` per query).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
import threading
import typing as t
import weakref

from ..errors import ConfigError
from ..errors import PolicyError
from .input_shape import input_shape
from .input_shape import trim_input
from .input_shape import union
from .loader import EngineMessage
from .loader import RegoModule
from .loader import build_engine
from .loader import evaluate_packages
from .loader import plain_data
from .loader import resolve_versions

log = logging.getLogger("gateway_app.policy")

_RULE_PATH = re.compile(r"^data(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_RULE_EQUALS_TRUE = re.compile(r"^\s*(data(?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*==\s*true\s*$")
_NOT_A_RULE = "not a valid rule path"
MEMO_ENTRIES = 4096
# Builtins whose answer is not a function of input and data: policies using them are never memoized.
_NON_DETERMINISTIC = ("time.now_ns", "rand.", "http.send", "uuid.", "opa.runtime", "net.lookup", "io.jwt.decode_verify",
                      "print(", "trace(")
_MISSING = object()


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
        self.modules = resolve_versions(modules)
        self._data = plain_data(data)
        self._key = next(_engine_keys)
        weakref.finalize(self, _note_released).atexit = False
        self._plans: dict[str, _QueryPlan] = {}
        self._module_input_shape = input_shape(m.source for m in self.modules)
        engine, packages = build_engine(self.modules, self._data)
        self.packages = sorted(set(packages.values()))
        evaluate_packages(engine, self.packages)
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
        keys = union(self._module_input_shape, input_shape([query]))
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
