"""Rego tooling for the CLI: ``test-rego`` (like ``opa test``) and ``eval`` (one decision).

``test-rego`` loads every module under the Rego directory, ``*_test.rego`` included, and
evaluates each rule named ``test_*`` (a complete rule, not a function) in every package: it
passes when its value is ``true``; ``false``, undefined and errors fail. No test at all is a
failure too, so a wrong ``--rego-dir`` cannot pass silently. Exit code 0 or 1.

``eval`` evaluates a query against an input document given as a file, or built with
:func:`~gateway_app.policy.input_document.build_input` from a request description
``{method, path, host, headers, query, scheme, id}`` plus token claims (``input.state.jwtAccessToken``).
It prints the input (credentials redacted by :func:`gateway_app.observability.redact_input`), the raw result and the decision as JSON.
Exit code 0 when allowed, 1 when denied, 2 when the modules, query or arguments are unusable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import sys
import time
import typing as t

import yaml

from ..auth.state import AuthState
from ..auth.state import TokenInfo
from ..config.fields import Node
from ..errors import BadRequestError
from ..errors import ConfigError
from ..errors import PolicyError
from ..incoming import IncomingRequest
from ..incoming import from_environ
from ..observability import redact_input
from .decision import Decision
from .engine import PolicyEngine
from .engine import first_value
from .loader import EngineMessage
from .loader import RegoModule
from .loader import build_engine
from .loader import load_rego_directory
from .input_document import build_input

_TEST_PREFIX = "test_"
_SEPARATOR = "-" * 72
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class RegoTest:
    """One ``test_*`` rule: ``rule`` is its full path (``data.pkg.test_x``)."""

    rule: str
    origin: str
    line: int


@dataclasses.dataclass(frozen=True)
class CommandRoute:
    """The route an ``eval`` pretends the request matched (satisfies ``RouteMeta``)."""

    name: str = "eval"
    labels: t.Mapping[str, str] = dataclasses.field(default_factory=dict)
    api_product_id: str | None = None
    usage_plan: str | None = None


# -- test-rego ------------------------------------------------------------------------------


def run_rego_tests(rego_dir: pathlib.Path, verbose: bool = False, out: t.TextIO = sys.stdout) -> int:
    """Run every ``test_*`` rule under ``rego_dir``; print one line per test and a summary."""
    try:
        modules = load_rego_directory(pathlib.Path(rego_dir), include_tests=True)
        engine, packages = build_engine(list(modules.values()))
    except ConfigError as e:
        print(f"error: {e}", file=out)
        return 1
    tests = discover_tests(engine, packages)
    if not tests:
        print(f"error: no test_* rules found under {rego_dir}", file=out)
        return 1
    engine.set_gather_prints(True)
    failed = sum(not _run_test(engine, test, verbose, out) for test in tests)
    print(_SEPARATOR, file=out)
    print(f"{len(tests) - failed} passed, {failed} failed", file=out)
    return 1 if failed else 0


def discover_tests(engine: t.Any, packages: t.Mapping[str, str]) -> list[RegoTest]:
    """The ``test_*`` complete rules of every module in ``engine``, in file order, once each.

    ``packages`` maps each module's origin to its package, as :func:`build_engine` returns it.
    """
    tests: dict[str, RegoTest] = {}
    for module in json.loads(engine.get_ast_as_json()):
        origin = module["source"]["file"]
        for name, line in _complete_rule_names(module["ast"]["rules"]):
            if name.startswith(_TEST_PREFIX):
                rule = _rule_ref(packages[origin], name)
                tests.setdefault(rule, RegoTest(rule, origin, line))
    return list(tests.values())


def _rule_ref(package: str, name: str) -> str:
    """``data.a["b-c"].test_x`` for package ``data.a.b-c``: quote what is not an identifier."""
    segments = package.split(".")[1:] + [name]
    return "data" + "".join(f".{s}" if _IDENTIFIER.match(s) else f"[{json.dumps(s)}]" for s in segments)


def _complete_rule_names(rules: list[dict[str, t.Any]]) -> t.Iterator[tuple[str, int]]:
    for rule in rules:
        head = rule.get("Spec", {}).get("head", {})
        var = head.get("Compr", {}).get("refr", {}).get("Var")
        if var:
            yield var["value"], var["span"]["line"]


def _run_test(engine: t.Any, test: RegoTest, verbose: bool, out: t.TextIO) -> bool:
    started = time.perf_counter()
    try:
        value = first_value(engine.eval_query(test.rule))
    except RuntimeError as e:
        print(f"ERROR {test.rule} ({test.origin}:{test.line}): {EngineMessage.parse(e).describe()}", file=out)
        return False
    elapsed_ms = (time.perf_counter() - started) * 1000
    passed = value is True
    if passed and not verbose:
        print(f"PASS {test.rule}", file=out)
    elif passed:
        print(f"PASS {test.rule} ({test.origin}:{test.line}, {elapsed_ms:.1f} ms)", file=out)
    else:
        print(f"FAIL {test.rule} ({test.origin}:{test.line}): got {_short(value)}", file=out)
    for line in engine.take_prints():
        if verbose or not passed:
            print(f"    {line}", file=out)
    return passed


def _short(value: t.Any) -> str:
    return "undefined" if value is None else json.dumps(value, default=_json_default)[:80]


# -- eval -------------------------------------------------------------------------------------


def evaluate_command(rego_dir: pathlib.Path, query: str, input_document: dict[str, t.Any] | None = None,
                     request_spec: dict[str, t.Any] | None = None, claims: dict[str, t.Any] | None = None,
                     modules: list[str] | None = None, out: t.TextIO = sys.stdout, *,
                     api_product_id: str | None = None, usage_plan: str | None = None,
                     labels: t.Mapping[str, str] | None = None) -> int:
    """Evaluate ``query`` once and print ``{input, query, result, decision}`` as JSON.

    ``modules`` names the modules to load (all of ``rego_dir`` when ``None``). Without
    ``input_document`` the input is built from ``request_spec`` and ``claims`` on a route with
    ``api_product_id``, ``usage_plan`` and ``labels``.
    """
    try:
        engine = PolicyEngine(select_modules(load_rego_directory(pathlib.Path(rego_dir)), modules), queries=[query])
        if input_document is None:
            route = CommandRoute(labels=dict(labels or {}), api_product_id=api_product_id, usage_plan=usage_plan)
            input_document = input_from_request(request_spec or {}, claims, route)
    except ConfigError as e:
        print(f"error: {e}", file=out)
        return 2
    try:
        result = engine.evaluate(query, input_document)
        decision = Decision.from_result(result)
    except PolicyError as e:
        result = None
        decision = Decision.from_error(e)
    report = {"input": redact_input(input_document), "query": query, "result": result,
              "decision": decision.to_dict()}
    print(json.dumps(report, indent=2, default=_json_default), file=out)
    return 0 if decision.allowed else 1


def select_modules(available: t.Mapping[str, RegoModule], names: list[str] | None) -> list[RegoModule]:
    """The named modules, or all of them; an unknown name is a :class:`ConfigError`."""
    if not names:
        return list(available.values())
    unknown = [name for name in names if name not in available]
    if unknown:
        known = ", ".join(available) or "none"
        raise ConfigError(f"unknown Rego module {unknown[0]!r} (known: {known})", where="--module")
    return [available[name] for name in names]


def input_from_request(spec: t.Mapping[str, t.Any], claims: t.Mapping[str, t.Any] | None,
                       route: CommandRoute) -> dict[str, t.Any]:
    """The input :func:`build_input` makes for a described request carrying a token with ``claims``."""
    state = AuthState()
    if claims is not None:
        if not isinstance(claims, t.Mapping):
            raise ConfigError("claims must be a JSON object", where="--claims")
        state.accept_token(TokenInfo(claims=dict(claims), kind="jwt"))
    return build_input(request_from_spec(spec), route, state)


def request_from_spec(spec: t.Mapping[str, t.Any]) -> IncomingRequest:
    """An :class:`IncomingRequest` from ``{method, path, host, headers, query, scheme, id}``.

    The request is read as the gateway reads one from a client that is not a trusted proxy
    (:func:`gateway_app.incoming.from_environ`): the path normalized, the host normalized,
    forwarding headers dropped. A ``?query`` in ``path`` is used when ``query`` is absent; a
    ``host`` header is taken from ``host`` when the headers lack one, as any HTTP/1.1 client
    sends it.

    :raises ConfigError: an unknown field, or a request the gateway would refuse (400).
    """
    node = Node(dict(spec) if isinstance(spec, t.Mapping) else spec, where="--request", path="request")
    path, _, query_in_path = node.str("path", default="/").partition("?")
    host = node.str("host", default="localhost")
    headers = {name.lower(): value for name, value in node.str_map("headers").items()}
    headers.setdefault("host", host)
    query = node.str("query", default=query_in_path)
    environ: dict[str, t.Any] = {
        "REQUEST_METHOD": node.str("method", default="GET").upper(),
        "RAW_URI": f"{path or '/'}?{query}" if query else (path or "/"),
        "wsgi.url_scheme": node.str("scheme", default="http"),
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    request_id = node.str("id", default="eval")
    node.done()
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value
    try:
        return from_environ(environ, request_id=request_id)
    except BadRequestError as e:
        raise ConfigError(f"the gateway would refuse this request: {e} ({e.reason})", where="--request") from None


def _json_default(value: t.Any) -> t.Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=lambda item: json.dumps(item, sort_keys=True, default=str))
    return str(value)


# -- argparse -------------------------------------------------------------------------------


def add_subcommands(subparsers: t.Any) -> None:
    """Register ``test-rego`` and ``eval``; each sets ``func(args) -> exit code``."""
    tester = subparsers.add_parser("test-rego", help="run the test_* rules of the Rego modules, like opa test",
                                   description="Evaluate every test_* rule of the modules under the Rego "
                                               "directory (*_test.rego included); exit status 1 on any failure.")
    tester.add_argument("--rego-dir", type=pathlib.Path, default=pathlib.Path("rego"), metavar="DIR",
                        help="the Rego modules (default rego)")
    tester.add_argument("-v", "--verbose", action="store_true", help="show locations, timings and prints")
    tester.set_defaults(func=rego_tests_command)

    evaluator = subparsers.add_parser("eval", help="evaluate a Rego query against one request and print the decision",
                                      description="Evaluate a query against an input document (--input) or one "
                                                  "built from a request and token claims; print input, result and "
                                                  "decision as JSON. Exit status 0 allowed, 1 denied, 2 unusable.")
    evaluator.add_argument("--rego-dir", type=pathlib.Path, default=pathlib.Path("rego"), metavar="DIR",
                           help="the Rego modules (default rego)")
    evaluator.add_argument("--query", required=True, help='e.g. "data.test.allow == true"')
    source = evaluator.add_mutually_exclusive_group()
    source.add_argument("--input", type=pathlib.Path, metavar="FILE", help="the input document (JSON or YAML)")
    source.add_argument("--request", metavar="JSON|FILE", help="{method, path, host, headers, query}")
    evaluator.add_argument("--claims", metavar="JSON|FILE", help="verified token claims (input.state.jwtAccessToken)")
    evaluator.add_argument("--module", action="append", dest="modules", metavar="NAME",
                           help="a module to load (repeatable; default: all)")
    evaluator.add_argument("--api-product", metavar="ID", help="the route's API product id")
    evaluator.add_argument("--usage-plan", metavar="PLAN", help="the route's usage plan")
    evaluator.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a route label (repeatable)")
    evaluator.set_defaults(func=eval_command)


def rego_tests_command(args: argparse.Namespace) -> int:
    """``gateway-app test-rego``: :func:`run_rego_tests` on ``--rego-dir``; its exit status."""
    return run_rego_tests(args.rego_dir, verbose=args.verbose, out=sys.stdout)


def eval_command(args: argparse.Namespace) -> int:
    """``gateway-app eval``: one query over an input read from ``--input``, or built from
    ``--request``/``--claims``/``--label`` as the gateway builds it; exit 2 on unusable arguments."""
    try:
        input_document = _read_document(args.input.read_text(encoding="utf-8"), "--input") if args.input else None
        request_spec = _json_or_file(args.request, "--request") if args.request else None
        claims = _json_or_file(args.claims, "--claims") if args.claims else None
        labels = dict(_parse_label(label) for label in args.label)
        if input_document is not None and (claims is not None or labels or args.api_product or args.usage_plan):
            raise ConfigError("--claims, --label, --api-product and --usage-plan only apply without --input",
                              where="eval")
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stdout)
        return 2
    return evaluate_command(args.rego_dir, args.query, input_document, request_spec, claims, args.modules,
                            sys.stdout, api_product_id=args.api_product, usage_plan=args.usage_plan, labels=labels)


def _json_or_file(text: str, option: str) -> t.Any:
    """Inline JSON (starting with ``{``) or the path of a JSON/YAML file."""
    if text.lstrip().startswith("{"):
        return _read_document(text, option)
    try:
        return _read_document(pathlib.Path(text).read_text(encoding="utf-8"), option)
    except OSError as e:
        raise ConfigError(f"cannot read {text}: {e.strerror}", where=option) from e


def _read_document(text: str, option: str) -> t.Any:
    """A JSON object, or a YAML mapping."""
    try:
        document = json.loads(text)
    except ValueError:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"not JSON or YAML: {e}", where=option) from e
    if not isinstance(document, dict):
        raise ConfigError("expected a JSON object", where=option)
    return document


def _parse_label(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise ConfigError(f"expected KEY=VALUE, got {text!r}", where="--label")
    return key, value
