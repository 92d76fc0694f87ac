"""The command line itself: --version, help text for every subcommand and option, readable errors."""

from __future__ import annotations

import argparse
import re

import pytest

from gateway_app.cli import build_parser
from gateway_app.cli import main
from tests.support.servers import REPO_ROOT

RST = re.compile(r"``|:(func|class|meth|mod|data|attr):`")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert re.fullmatch(r"gateway-app \d+\.\d+\.\d+\n", capsys.readouterr().out)


def test_every_subcommand_has_help_and_a_description_without_rst():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    for name, sub in _subcommands(parser).items():
        assert helps.get(name), f"{name} has no help line"
        assert sub.description, f"{name} has no description"
        assert not RST.search(sub.format_help()), f"{name} --help shows RST markup"
    assert not RST.search(parser.format_help())


def test_every_option_of_every_subcommand_has_help():
    parser = build_parser()
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, sub in _subcommands(parser).items() for action in sub._actions
               if not action.help and not isinstance(action, argparse._HelpAction)]
    assert missing == []


@pytest.mark.parametrize("query, column", [("data.x[.allow", 8), ("data.test.allow ==", 19)],
                         ids=["a bad token inside", "an expression cut short"])
def test_an_eval_query_syntax_error_says_where(capsys, query, column):
    status = main(["eval", "--rego-dir", str(REPO_ROOT / "rego"), "--query", query])
    assert status == 2
    assert f"(column {column})" in capsys.readouterr().out


def test_routes_shows_each_routes_usage_plan_with_its_limits(capsys):
    status = main(["routes", "--config-dir", str(REPO_ROOT / "conf"), "--rego-dir", str(REPO_ROOT / "rego")])
    lines = capsys.readouterr().out.splitlines()

    assert status == 0
    assert "USAGE PLAN" in lines[0]
    pets = next(line for line in lines if " pets-api " in line)
    open_route = next(line for line in lines if " tracks-status " in line)
    assert "dev-portal (5/60s, quota 1000/86400s)" in pets
    assert "dev-portal" not in open_route
