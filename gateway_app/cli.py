"""gateway-app / python -m gateway_app: validate, routes, serve, test-rego, eval."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import sys
import typing as t

import requests

from .admin import render_status
from .config.build import build_config
from .explain import build_request
from .explain import explain
from .explain import render_text
from .gateway import Gateway
from .policy import tooling
from .settings import Settings


def _dirs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-dir", default=os.environ.get("GATEWAY_CONFIG_DIR", "conf"), metavar="DIR",
                        help="the YAML resources (default: $GATEWAY_CONFIG_DIR, else conf)")
    parser.add_argument("--rego-dir", default=os.environ.get("GATEWAY_REGO_DIR", "rego"), metavar="DIR",
                        help="the Rego modules (default: $GATEWAY_REGO_DIR, else rego)")


def cmd_validate(args: argparse.Namespace) -> int:
    """One line per resource, ACCEPTED or REJECTED, then a summary; exit 1 on any rejection.

    ``--format json``: one JSON object per resource (:meth:`ResourceStatus.record`) and no summary.
    """
    result = build_config(pathlib.Path(args.config_dir), pathlib.Path(args.rego_dir))
    for status in result.statuses:
        print(json.dumps(status.record()) if args.format == "json" else status.describe())
    if args.format == "json":
        return 1 if result.errors else 0
    if args.check_network and result.config is not None:
        failures = _check_network(result.config)
        if failures:
            for failure in failures:
                print(f"UNREACHABLE: {failure}")
            return 1
    rejected = len(result.errors)
    print(f"{len(result.statuses) - rejected} accepted, {rejected} rejected")
    return 1 if rejected else 0


def _check_network(config: t.Any) -> list[str]:
    failures = []
    for validator in config.validators:
        warm_up = getattr(validator, "warm_up", None)
        if warm_up is not None:
            warm_up()
            if not validator.ready():
                failures.append(f"{type(validator).__name__}: keys could not be fetched")
    return failures


def cmd_routes(args: argparse.Namespace) -> int:
    """The effective route table, in match order."""
    result = build_config(pathlib.Path(args.config_dir), pathlib.Path(args.rego_dir))
    if result.config is None:
        for status in result.errors:
            print(status.describe(), file=sys.stderr)
        return 1
    rows = [("HOST", "MATCH", "ROUTE", "DESTINATION", "API PRODUCT", "USAGE PLAN", "AUTH")]
    for vhost in result.config.router.virtual_hosts:
        for route in vhost.routes:
            destination = ", ".join(t.base_url for t in route.targets)
            if route.path_rewrite:
                destination += f" (rewrite -> {route.path_rewrite.replacement})"
            auth = route.auth.summary if route.auth else "-"
            match = " | ".join(m.describe() for m in route.matchers)
            rows.append((",".join(vhost.domains), match, route.name, destination, route.api_product_id or "-",
                         _plan_summary(result.config.usage_plans, route.usage_plan), auth))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _plan_summary(plans: t.Any, name: str | None) -> str:
    """``dev-portal (5/MINUTE)``: the route's default usage plan and its rate limit, or ``-``."""
    plan = plans.plans.get(name) if name else None
    return f"{name} ({plan.summary})" if plan is not None else (name or "-")


def cmd_serve(args: argparse.Namespace) -> int:
    """Run under gunicorn with conf/gunicorn.conf.py (the production server)."""
    os.environ["GATEWAY_CONFIG_DIR"] = args.config_dir
    os.environ["GATEWAY_REGO_DIR"] = args.rego_dir
    argv = ["gunicorn", "-c", args.gunicorn_config, "--bind", args.bind, "wsgi:app"]
    os.execvp(sys.executable, [sys.executable, "-m", "gunicorn", *argv[1:]])
    return 0  # pragma: no cover


def cmd_status(args: argparse.Namespace) -> int:
    """Print a running gateway's admin view (``<admin prefix>/config``); exit 1 when unreachable."""
    url = args.url.rstrip("/") + args.admin_prefix.rstrip("/") + "/config"
    try:
        response = requests.get(url, timeout=args.timeout)
        response.raise_for_status()
        view = response.json()
    except (requests.RequestException, ValueError) as e:
        print(f"error: cannot read {url}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(view, indent=2) if args.json else render_status(view))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Run one request through the real stages without forwarding; exit 0 when it would be
    forwarded, 1 when the gateway would answer an error, 2 when the config or request is unusable."""
    method, url = (args.request[0], args.request[1]) if len(args.request) == 2 else (args.method, args.request[0])
    try:
        headers = [_header(text) for text in args.header]
        body = args.data.encode("utf-8") if args.data is not None else None
        request = build_request(method, url, headers, body)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = build_config(pathlib.Path(args.config_dir), pathlib.Path(args.rego_dir))
    if result.config is None:
        for status in result.errors:
            print(status.describe())
        return 2
    settings = Settings.from_env(config_dir=pathlib.Path(args.config_dir), rego_dir=pathlib.Path(args.rego_dir),
                                 reload_interval=0)
    explanation = explain(Gateway(settings), request)
    print(json.dumps(explanation.to_dict(), indent=2, default=str) if args.json else render_text(explanation))
    return 0 if explanation.status is None else 1


def _header(text: str) -> tuple[str, str]:
    name, separator, value = text.partition(":")
    if not separator or not name.strip():
        raise ValueError(f"expected -H 'Name: value', got {text!r}")
    return name.strip(), value.strip()


DESCRIPTION = """\
The gateway's command line: check and inspect a configuration, run the server, test and
evaluate Rego policies. Every subcommand has its own --help."""


def version() -> str:
    """The installed package's version (setup.cfg)."""
    try:
        return importlib.metadata.version("gateway-app")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The ``gateway-app`` parser: one subcommand per ``cmd_*`` function and the Rego tools'."""
    parser = argparse.ArgumentParser(prog="gateway-app", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"gateway-app {version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    validate = sub.add_parser("validate", help="check conf/ and rego/ as the server loads them",
                              description="Load the config and Rego directories exactly as the server does and "
                                          "print one line per resource, ACCEPTED or REJECTED with file:line. "
                                          "Exit status 1 on any rejection.")
    _dirs(validate)
    validate.add_argument("--check-network", action="store_true", help="also fetch remote JWKS")
    validate.add_argument("--format", choices=("text", "json"), default="text",
                          help="text lines and a summary (default), or one JSON object per resource")
    validate.set_defaults(func=cmd_validate)
    routes = sub.add_parser("routes", help="print the effective route table",
                            description="Print the routes in match order: host, matchers, destination, "
                                        "API product and auth.")
    _dirs(routes)
    routes.set_defaults(func=cmd_routes)
    serve = sub.add_parser("serve", help="run the gateway under gunicorn",
                           description="Run gunicorn with the gateway's settings; a broken config is listed "
                                       "once and the server does not start.")
    _dirs(serve)
    serve.add_argument("--bind", default="127.0.0.1:8080", metavar="HOST:PORT",
                       help="the address to listen on (default 127.0.0.1:8080)")
    serve.add_argument("--gunicorn-config", default="conf/gunicorn.conf.py", metavar="FILE",
                       help="the gunicorn settings file (default conf/gunicorn.conf.py)")
    serve.set_defaults(func=cmd_serve)
    status = sub.add_parser("status", help="print a running gateway's config, reloads, JWKS and routes",
                            description="Read the admin view (<admin prefix>/config) of a running gateway: "
                                        "generation, every resource's state, the last reload, each token "
                                        "validator's JWKS and cache state, and the routes with their auth.")
    status.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway (default http://127.0.0.1:8080)")
    status.add_argument("--admin-prefix", default=os.environ.get("GATEWAY_ADMIN_PREFIX", "/__gateway"),
                        metavar="PREFIX", help="its GATEWAY_ADMIN_PREFIX (default /__gateway)")
    status.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="HTTP timeout (default 5)")
    status.add_argument("--json", action="store_true", help="print the JSON document as received")
    status.set_defaults(func=cmd_status)
    explain_cmd = sub.add_parser("explain", help="show what the gateway would do with one request, stage by stage",
                                 description="Run one request through the real stages against the config on disk "
                                             "(real IdP and JWKS calls included) without forwarding it: the route and "
                                             "why others did not match, the token, its validation, the policy input "
                                             "and decision, the headers set and removed, the upstream URL. "
                                             "Credentials are redacted.")
    _dirs(explain_cmd)
    explain_cmd.add_argument("request", nargs="+", metavar="[METHOD] URL",
                             help="e.g. GET http://localhost:8080/headers (the method defaults to -X, else GET)")
    explain_cmd.add_argument("-X", "--method", default="GET", help="the method when not given before the URL")
    explain_cmd.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                             help="a request header (repeatable), as with curl")
    explain_cmd.add_argument("-d", "--data", metavar="BODY", help="a request body, as with curl")
    explain_cmd.add_argument("--json", action="store_true", help="print the stages as one JSON document")
    explain_cmd.set_defaults(func=cmd_explain)
    tooling.add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand on ``argv`` (default ``sys.argv[1:]``); its exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:                 # output piped into head & co.
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
