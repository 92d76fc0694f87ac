"""A stand-in for ``regorus.Engine`` that records each engine's life, for the policy tests.

The gateway builds every engine from ``regorus.Engine`` (:func:`gateway_app.policy.loader.build_engine`).
:func:`record_engines` replaces that class with :class:`RecordedEngine`, which delegates to a
real engine and notes, per engine, the thread that built it, the evaluations it answered and
the thread that dropped it. So a test observes the engine rules of
:mod:`gateway_app.policy.engine` (one engine per thread, dropped on its own thread, answers
memoized) from outside: it counts builds and evaluations instead of reading the registry.

An unsendable regorus engine touched on another thread raises ``pyo3_runtime.PanicException``,
a ``BaseException``; :meth:`EngineRecorder.panic_next` makes the next engine evaluated raise
:class:`PanicException` on that evaluation and every later one (a poisoned engine).
"""

from __future__ import annotations

import dataclasses
import threading
import typing as t

import pytest
import regorus

_EVALUATIONS = frozenset({"eval_query", "eval_query_as_json", "eval_rule", "eval_rule_as_json"})


class PanicException(BaseException):
    """Stands in for ``pyo3_runtime.PanicException`` (same name and base class)."""


@dataclasses.dataclass
class EngineLife:
    """One engine's record: thread idents (``threading.get_ident()``) and evaluation count.

    ``dropped_on`` is ``None`` while the engine is alive; ``evaluations`` counts ``eval_*``
    calls (a memoized answer makes none); ``panic`` is the message of the :class:`PanicException`
    each evaluation raises (a poisoned engine), ``""`` if none.
    """

    built_on: int
    evaluations: int = 0
    dropped_on: int | None = None
    panic: str = ""

    @property
    def alive(self) -> bool:
        """Whether the engine has not been dropped yet."""
        return self.dropped_on is None


class EngineRecorder:
    """The lives (:class:`EngineLife`) of every engine built since :func:`record_engines`, in build order."""

    def __init__(self, real_engine: type) -> None:
        self.real_engine = real_engine
        self.lives: list[EngineLife] = []
        self._lock = threading.Lock()
        self._next_panic = ""

    def built_on(self, thread: int) -> list[EngineLife]:
        """The engines built on ``thread`` (a ``threading.get_ident()``), in build order."""
        with self._lock:
            return [life for life in self.lives if life.built_on == thread]

    def evaluations(self) -> int:
        """``eval_*`` calls answered so far by every recorded engine."""
        with self._lock:
            return sum(life.evaluations for life in self.lives)

    def panic_next(self, message: str) -> None:
        """Poison the next engine evaluated: that evaluation and every later one raise
        ``PanicException(message)``."""
        with self._lock:
            self._next_panic = message

    def add(self, life: EngineLife) -> None:
        with self._lock:
            self.lives.append(life)

    def evaluated(self, life: EngineLife) -> None:
        """Count one evaluation; raise the engine's panic, poisoning it first if one is pending."""
        with self._lock:
            life.evaluations += 1
            if self._next_panic and not life.panic:
                life.panic, self._next_panic = self._next_panic, ""
        if life.panic:
            raise PanicException(life.panic)     # a new one each time: a kept traceback would keep the engine


class RecordedEngine:
    """A real ``regorus.Engine`` (built on the calling thread) whose life is recorded."""

    recorder: t.ClassVar[EngineRecorder]

    def __init__(self) -> None:
        self.real = self.recorder.real_engine()
        self.life = EngineLife(built_on=threading.get_ident())
        self.recorder.add(self.life)

    def __getattr__(self, name: str) -> t.Any:
        method = getattr(self.real, name)
        if name not in _EVALUATIONS:
            return method

        def evaluation(*args: t.Any) -> t.Any:
            self.recorder.evaluated(self.life)
            return method(*args)

        return evaluation

    def __del__(self) -> None:
        self.life.dropped_on = threading.get_ident()


def record_engines(monkeypatch: pytest.MonkeyPatch) -> EngineRecorder:
    """Replace ``regorus.Engine`` with a :class:`RecordedEngine` class until the test ends.

    Engines built before the call are not recorded. Engines built after it include the loader's
    throw-away parse engines (built and dropped at once) and count the evaluations a
    :class:`~gateway_app.policy.engine.PolicyEngine` makes to check its queries, so a test
    counts evaluations as a difference from a baseline.
    """
    recorder = EngineRecorder(regorus.Engine)
    engine_class = type("Engine", (RecordedEngine,), {"recorder": recorder})
    monkeypatch.setattr(regorus, "Engine", engine_class)
    return recorder
