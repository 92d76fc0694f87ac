from __future__ import annotations

import gc
import pathlib
import sys
import threading
import weakref

import pytest

from gateway_app.errors import ConfigError
from gateway_app.errors import PolicyError
from gateway_app.policy import engine as engine_module
from gateway_app.policy.engine import PolicyEngine
from gateway_app.policy.input_shape import input_shape
from gateway_app.policy.loader import RegoModule
from gateway_app.policy.loader import load_module
from gateway_app.policy.loader import load_rego_directory
from tests.support.regorus_engines import record_engines

V0_POLICY = """package gloo
default allow = false
allow {
  input.user == "alice"
}
"""

V1_POLICY = """package modern
allow if input.user == "alice"
"""

V1_IMPORT_POLICY = """package explicit
import rego.v1
level := input.level if input.level > 2
"""


def write(directory: pathlib.Path, name: str, source: str) -> pathlib.Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return path


def engine_for(*sources: str, queries: tuple[str, ...] = (), data: dict | None = None) -> PolicyEngine:
    modules = [load_module(f"m{i}", source, f"m{i}.rego") for i, source in enumerate(sources)]
    return PolicyEngine(modules, data=data, queries=queries)


# -- loading ----------------------------------------------------------------------------------


def test_modules_are_named_after_their_path_without_extension(tmp_path):
    write(tmp_path, "oauth-scope-apiproduct-opa-cm.rego", V0_POLICY)
    write(tmp_path, "team/x.rego", V1_POLICY)

    modules = load_rego_directory(tmp_path)

    assert list(modules) == ["oauth-scope-apiproduct-opa-cm", "team/x"]
    assert modules["team/x"].origin == str(tmp_path / "team" / "x.rego")
    assert modules["team/x"].source == V1_POLICY


def test_test_modules_are_returned_only_when_asked_for(tmp_path):
    write(tmp_path, "gloo.rego", V0_POLICY)
    write(tmp_path, "gloo_test.rego", "package gloo\nimport rego.v1\ntest_alice if allow with input as {\"user\": \"alice\"}\n")

    runtime = load_rego_directory(tmp_path)
    everything = load_rego_directory(tmp_path, include_tests=True)

    assert list(runtime) == ["gloo"]
    assert list(everything) == ["gloo", "gloo_test"]
    assert everything["gloo_test"].is_test and not everything["gloo"].is_test


def test_broken_test_module_does_not_stop_the_runtime_load(tmp_path):
    write(tmp_path, "gloo.rego", V0_POLICY)
    write(tmp_path, "gloo_test.rego", "package gloo\ntest_x if {\n")

    assert list(load_rego_directory(tmp_path)) == ["gloo"]
    with pytest.raises(ConfigError):
        load_rego_directory(tmp_path, include_tests=True)


def test_test_modules_are_parsed_but_not_evaluated_at_load(tmp_path):
    write(tmp_path, "gloo.rego", V0_POLICY)
    write(tmp_path, "gloo_test.rego", "package gloo\nimport rego.v1\ntest_errors if json.unmarshal(\"{\")\n")

    assert list(load_rego_directory(tmp_path, include_tests=True)) == ["gloo", "gloo_test"]


def test_missing_rego_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_rego_directory(tmp_path / "nope")


@pytest.mark.parametrize(("source", "version"), [
    (V0_POLICY, 0),
    (V1_POLICY, 1),
    (V1_IMPORT_POLICY, 1),
    ("package plain\nx := 1\n", 1),
], ids=["v0 rule bodies without if are v0", "if keywords without import are v1",
        "import rego.v1 is v1", "a module valid in both is v1"])
def test_module_version_is_resolved_at_load(source, version):
    assert load_module("m", source, "m.rego").version == version


def test_syntax_error_names_file_line_column_and_engine_message():
    source = "package broken\nimport rego.v1\n\nallow if {\n  input.x == \n}\n"
    with pytest.raises(ConfigError) as caught:
        load_module("broken", source, "rego/broken.rego")

    assert caught.value.where == "rego/broken.rego:6:1"
    assert caught.value.line == 6
    assert "expecting expression" in str(caught.value)
    assert "backtrace" not in str(caught.value).lower()


def test_broken_v0_module_reports_the_v0_error_not_the_missing_if():
    source = "package gloo\ndefault allow = false\nallow {\n  input.x = = 1\n}\n"
    with pytest.raises(ConfigError) as caught:
        load_module("gloo", source, "gloo.rego")

    assert caught.value.where.startswith("gloo.rego:4:")
    assert "`if` keyword" not in str(caught.value)


def test_unsafe_variable_is_caught_at_load_not_at_first_request(tmp_path):
    write(tmp_path, "unsafe.rego", "package unsafe\nimport rego.v1\ndefault allow := false\nallow if { x == 1 }\n")

    with pytest.raises(ConfigError) as caught:
        load_rego_directory(tmp_path)

    assert caught.value.where == f"{tmp_path / 'unsafe.rego'}:4:12"
    assert "unsafe" in str(caught.value)


def test_unknown_function_is_caught_when_the_engine_is_built():
    module = RegoModule("f", "package f\nimport rego.v1\nallow if nosuchfn(1)\n", "ConfigMap ns/f")
    with pytest.raises(ConfigError, match="could not find function nosuchfn") as caught:
        PolicyEngine([module])
    assert caught.value.where == "ConfigMap ns/f:3:18"


def test_unresolved_module_gets_its_version_when_the_engine_is_built():
    engine = PolicyEngine([RegoModule("gloo", V0_POLICY, "ConfigMap ns/gloo")])
    assert engine.modules[0].version == 0
    assert engine.evaluate("data.gloo.allow", {"user": "alice"}) is True


# -- evaluation -------------------------------------------------------------------------------


def test_v0_and_v1_modules_evaluate_together_in_one_engine():
    engine = engine_for(V0_POLICY, V1_POLICY, V1_IMPORT_POLICY)

    assert engine.evaluate("data.gloo.allow", {"user": "alice"}) is True
    assert engine.evaluate("data.gloo.allow", {"user": "bob"}) is False
    assert engine.evaluate("data.modern.allow", {"user": "alice"}) is True
    assert engine.evaluate("data.explicit.level", {"level": 3}) == 3


def test_gloo_style_comparison_query_returns_its_value():
    engine = engine_for(V0_POLICY, queries=("data.gloo.allow == true",))

    assert engine.evaluate("data.gloo.allow == true", {"user": "alice"}) is True
    assert engine.evaluate("data.gloo.allow == true", {"user": "bob"}) is False


def test_undefined_result_is_none():
    engine = engine_for(V1_POLICY, queries=("data.modern.allow",))

    assert engine.evaluate("data.modern.allow", {"user": "bob"}) is None
    assert engine.evaluate("data.nothing.here", {"user": "alice"}) is None


@pytest.mark.parametrize("query", ["data.m0.decision", "data.m0", "data.m0.decision.allowed", "data.limits.max"],
                         ids=["rule", "package", "field of a rule", "data document"])
def test_rule_paths_and_other_refs_give_the_same_answers_as_a_query(query):
    source = 'package m0\nimport rego.v1\ndecision := {"allowed": input.ok}\n'
    engine = engine_for(source, data={"limits": {"max": 5}}, queries=(query,))
    expected = {
        "data.m0.decision": {"allowed": True},
        "data.m0": {"decision": {"allowed": True}},
        "data.m0.decision.allowed": True,
        "data.limits.max": 5,
    }[query]

    assert engine.evaluate(query, {"ok": True}) == expected


def test_data_document_is_visible_to_policies():
    source = "package quota\nimport rego.v1\nallow if input.plan in data.plans.paid\n"
    engine = engine_for(source, data={"plans": {"paid": ["gold", "silver"]}})

    assert engine.evaluate("data.quota.allow", {"plan": "gold"}) is True
    assert engine.evaluate("data.quota.allow", {"plan": "free"}) is None


@pytest.mark.parametrize(("source", "keys"), [
    ("allow if input.user == input.role", {"user", "role"}),
    ('allow if input["check-request"].ok', {"check-request"}),
    ("import input.check_request as cr", {"check_request"}),
    ("x := data.input.y\ny := my_input.z", set()),
    ("keys := {k | input[k]}", None),
    ("allow if f(input)", None),
    ("# the whole input", None),
], ids=["dotted fields", "a quoted field", "an input import", "fields named input are not input",
        "a variable key", "input passed whole", "the word in a comment"])
def test_input_shape_lists_the_top_level_fields_read_or_none_when_unsure(source, keys):
    shape = input_shape([source])
    assert (None if shape is None else set(shape)) == keys


def test_policy_reading_input_dynamically_sees_the_whole_input():
    source = "package dyn\nimport rego.v1\nnames := {k | input[k]}\nuser := input.user\n"
    engine = engine_for(source, queries=("data.dyn.names", "data.dyn.user"))
    document = {"user": "alice", "role": "admin", "team": "blue"}

    assert engine.evaluate("data.dyn.names", document) == {"user", "role", "team"}
    assert engine.evaluate("data.dyn.user", document) == "alice"


def test_query_reading_other_input_fields_than_the_modules_sees_them():
    engine = engine_for(V0_POLICY, queries=("data.gloo.allow == true; input.role == \"admin\"",))
    query = "data.gloo.allow == true; input.role == \"admin\""

    assert engine.evaluate(query, {"user": "alice", "role": "admin"}) is True
    assert engine.evaluate(query, {"user": "alice", "role": "guest"}) is None


def test_query_syntax_error_is_a_config_error_naming_the_query():
    with pytest.raises(ConfigError) as caught:
        engine_for(V0_POLICY, queries=("data.gloo.allow ===",))
    assert "data.gloo.allow ===" in caught.value.where
    assert "(column 19)" in str(caught.value)


def test_prepare_rejects_a_query_calling_an_unknown_function():
    engine = engine_for(V0_POLICY)
    with pytest.raises(ConfigError, match="could not find function nosuch"):
        engine.prepare("nosuch(input)")


def test_rule_conflict_at_evaluation_is_a_policy_error():
    source = "package c\nimport rego.v1\nx := input.a\nx := input.b\n"
    engine = engine_for(source, queries=("data.c.x",))

    assert engine.evaluate("data.c.x", {"a": 1, "b": 1}) == 1
    with pytest.raises(PolicyError) as caught:
        engine.evaluate("data.c.x", {"a": 1, "b": 2})
    assert caught.value.reason == "policy_error"
    assert "m0.rego:4:1: rule conflicts" in str(caught.value)
    assert "backtrace" not in str(caught.value).lower()


def test_builtin_error_in_query_is_a_policy_error():
    engine = engine_for(V0_POLICY, queries=("json.unmarshal(input.body)",))
    with pytest.raises(PolicyError, match="could not deserialize json"):
        engine.evaluate("json.unmarshal(input.body)", {"body": "{"})


def test_unprepared_query_that_does_not_compile_is_a_policy_error_at_evaluation():
    engine = engine_for(V0_POLICY)
    with pytest.raises(PolicyError, match="cannot be evaluated"):
        engine.evaluate("data.gloo.allow ===", {})


def test_engine_panic_becomes_a_policy_error_and_the_engine_is_rebuilt(monkeypatch):
    engines = record_engines(monkeypatch)
    policy = engine_for(V0_POLICY, queries=("data.gloo.allow",))
    here = threading.get_ident()
    engines.panic_next("thread 'main' panicked at src/interpreter.rs")

    with pytest.raises(PolicyError) as caught:
        policy.evaluate("data.gloo.allow", {"user": "alice"})
    cause_name = type(caught.value.__cause__).__name__
    reason = caught.value.reason
    del caught
    gc.collect()
    poisoned = [life for life in engines.built_on(here) if life.panic]

    assert (cause_name, reason) == ("PanicException", "policy_error")
    assert [life.dropped_on for life in poisoned] == [here]
    assert policy.evaluate("data.gloo.allow", {"user": "alice"}) is True   # a poisoned engine would panic again
    assert engines.built_on(here)[-1].alive


def test_an_old_generations_engine_is_dropped_by_its_own_thread_at_its_next_evaluation(monkeypatch):
    engines = record_engines(monkeypatch)
    old = engine_for(V0_POLICY, queries=("data.gloo.allow",))
    new = engine_for(V0_POLICY, queries=("data.gloo.allow",))
    seen: list[list[int | None]] = []
    step = threading.Event()
    proceed = threading.Event()

    def serve() -> None:
        old.evaluate("data.gloo.allow", {"user": "alice"})
        seen.append([life.dropped_on for life in engines.built_on(threading.get_ident())])
        step.set()
        proceed.wait(5)
        new.evaluate("data.gloo.allow", {"user": "alice"})     # the next request, new generation
        seen.append([life.dropped_on for life in engines.built_on(threading.get_ident())])

    thread = threading.Thread(target=serve)
    thread.start()
    assert step.wait(5)
    del old                       # the old generation goes away on this (another) thread
    gc.collect()
    proceed.set()
    thread.join()

    assert seen == [[None], [thread.ident, None]]     # old's engine dropped on its thread; new's built and kept


def test_release_thread_engines_drops_the_calling_threads_engines(monkeypatch):
    engines = record_engines(monkeypatch)
    here = threading.get_ident()
    policy = engine_for(V0_POLICY, queries=("data.gloo.allow",))
    policy.evaluate("data.gloo.allow", {"user": "alice"})
    assert [life for life in engines.built_on(here) if life.alive]

    engine_module.release_thread_engines()

    assert all(life.dropped_on == here for life in engines.built_on(here))
    assert policy.evaluate("data.gloo.allow", {"user": "alice"}) is True
    assert engines.built_on(here)[-1].alive                    # rebuilt on its next evaluation


def test_engines_are_built_once_per_thread_not_per_evaluation(monkeypatch):
    policy = engine_for(V0_POLICY, queries=("data.gloo.allow",))
    engines = record_engines(monkeypatch)
    for _ in range(50):
        policy.evaluate("data.gloo.allow", {"user": "alice"})
    worker = threading.Thread(target=lambda: [policy.evaluate("data.gloo.allow", {}) for _ in range(50)])
    worker.start()
    worker.join()

    assert [life.built_on for life in engines.lives] == [worker.ident]


def test_a_threads_engine_is_dropped_on_that_thread_when_it_ends(monkeypatch):
    policy = engine_for(V0_POLICY, queries=("data.gloo.allow",))
    engines = record_engines(monkeypatch)
    worker = threading.Thread(target=policy.evaluate, args=("data.gloo.allow", {"user": "alice"}))
    worker.start()
    worker.join()

    assert [(life.built_on, life.dropped_on) for life in engines.lives] == [(worker.ident, worker.ident)]


def test_eight_threads_evaluating_one_engine_get_their_own_correct_answers():
    source = "package calc\nimport rego.v1\nresult := {\"double\": input.n * 2, \"owner\": input.thread}\n"
    policy = engine_for(source, queries=("data.calc.result",))
    errors: list[str] = []

    def work(thread: int) -> None:
        for n in range(200):
            try:
                value = policy.evaluate("data.calc.result", {"n": n, "thread": thread})
            except BaseException as e:  # a panic must show up as a failure, not kill the thread
                errors.append(f"{thread}/{n}: {type(e).__name__}")
                continue
            if value != {"double": n * 2, "owner": thread}:
                errors.append(f"{thread}/{n}: {value!r}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []


def test_dropping_an_engine_used_by_a_live_thread_leaks_nothing_and_does_not_raise(monkeypatch):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    engines = record_engines(monkeypatch)
    policy = engine_for(V0_POLICY)
    policy_ref = weakref.ref(policy)
    evaluated = threading.Event()
    dropped = threading.Event()
    drops: list[list[int | None]] = []

    def drops_here() -> list[int | None]:
        """Where this thread's evaluated engines were dropped (the loader's parse engines are never evaluated)."""
        return [life.dropped_on for life in engines.built_on(threading.get_ident()) if life.evaluations]

    def work() -> None:
        policy_ref().evaluate("data.gloo.allow", {"user": "alice"})
        drops.append(drops_here())
        evaluated.set()
        dropped.wait(5)
        replacement = engine_for(V1_POLICY)
        replacement.evaluate("data.modern.allow", {"user": "alice"})
        drops.append(drops_here())

    worker = threading.Thread(target=work)
    worker.start()
    evaluated.wait(5)
    del policy
    dropped.set()
    worker.join()

    assert policy_ref() is None
    assert unraisable == []
    assert drops == [[None], [worker.ident, None]]     # the old engine dropped on the worker, one held


@pytest.mark.parametrize(("source", "shape"), [
    ("allow if input.state.jwtAccessToken.scope == \"x\"", {"state": {"jwtAccessToken": {"scope": True}}}),
    ('m := input.check_request.attributes["metadata_context"]', {"check_request": {"attributes": {"metadata_context": True}}}),
    ("a := input.state\nb := input.state.x.y", {"state": True}),
    ("h := input.attributes.request.http.headers[name]", {"attributes": {"request": {"http": {"headers": True}}}}),
    ("keys := {k | input[k]}", None),
], ids=["a deep field", "a quoted step", "a whole branch wins over a deeper one",
        "a variable key keeps the branch before it", "a variable key at the top keeps everything"])
def test_input_shape_keeps_only_the_branches_a_policy_reads(source, shape):
    assert input_shape([source]) == shape


def test_the_seed_policy_is_evaluated_on_a_trimmed_input_with_the_same_decision():
    seed = (pathlib.Path(__file__).parent.parent / "rego" / "oauth-scope-apiproduct-opa-cm.rego").read_text()
    engine = engine_for(seed, queries=("data.test.allow == true",))
    document = {
        "check_request": {"attributes": {
            "request": {"http": {"headers": {"authorization": "Bearer secret"}}},
            "metadata_context": {"filter_metadata": {"io.solo.gloo.apimanagement": {"api_product_id": "tracks"}}}}},
        "state": {"jwtAccessToken": {"scope": "petstore tracks", "sub": "c"}},
        "attributes": {"request": {"http": {"headers": {"authorization": "Bearer secret"}}}},
    }
    assert engine.evaluate("data.test.allow == true", document) is True
    document["state"]["jwtAccessToken"]["scope"] = "petstore"
    assert engine.evaluate("data.test.allow == true", document) is False
    del document["state"]["jwtAccessToken"]["scope"]
    assert engine.evaluate("data.test.allow == true", document) is False


@pytest.mark.parametrize(("value", "expected"), [
    ("true", True), ("false", False), ('"yes"', False), ("1", False),
], ids=["true", "false", "a string", "a number"])
def test_rule_equals_true_query_gives_what_the_full_query_gives(value, expected):
    source = f"package eq\nimport rego.v1\nallow := {value} if input.x == 1\n"
    engine = engine_for(source, queries=("data.eq.allow == true",))
    assert engine.evaluate("data.eq.allow == true", {"x": 1}) is expected
    assert engine.evaluate("data.eq.allow == true", {"x": 2}) is None


def test_answers_are_remembered_per_trimmed_input_and_still_follow_the_input(monkeypatch):
    engines = record_engines(monkeypatch)
    source = "package memo\nimport rego.v1\nallow if input.state.scope == \"ok\"\n"
    engine = engine_for(source, queries=("data.memo.allow == true",))
    before = engines.evaluations()
    for request_id in range(5):
        assert engine.evaluate("data.memo.allow == true", {"state": {"scope": "ok"}, "id": request_id}) is True
        assert engine.evaluate("data.memo.allow == true", {"state": {"scope": "no"}, "id": request_id}) is None
    assert engines.evaluations() - before == 2      # one per scope: the request id is not part of the key


def test_policies_using_the_clock_are_never_memoized(monkeypatch):
    engines = record_engines(monkeypatch)
    source = "package clock\nimport rego.v1\nallow if time.now_ns() > input.after\n"
    engine = engine_for(source, queries=("data.clock.allow",))
    before = engines.evaluations()
    assert engine.evaluate("data.clock.allow", {"after": 0}) is True
    assert engine.evaluate("data.clock.allow", {"after": 0}) is True
    assert engine.evaluate("data.clock.allow", {"after": 2**62}) is None
    assert engine.reads("data.clock.allow") is None    # no input shape: answers are never remembered
    assert engines.evaluations() - before == 3


def test_the_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(engine_module, "MEMO_ENTRIES", 3)
    engines = record_engines(monkeypatch)
    source = "package bound\nimport rego.v1\nallow if input.n > 0\n"
    engine = engine_for(source, queries=("data.bound.allow",))
    for n in range(1, 5):                        # one more distinct input than the memo holds
        assert engine.evaluate("data.bound.allow", {"n": n}) is True

    def evaluations_for(n: int) -> int:
        before = engines.evaluations()
        assert engine.evaluate("data.bound.allow", {"n": n}) is True
        return engines.evaluations() - before

    assert evaluations_for(4) == 0               # the newest answer is remembered
    assert evaluations_for(1) == 1               # the oldest was let go
