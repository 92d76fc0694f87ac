"""The README's shell commands run as written on a fresh clone: each names a ``make`` target, a
``.venv/bin/`` program, a file of the repository or a well-known tool; the cheap ones are run."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from tests.support.servers import REPO_ROOT
from tests.support.servers import child_environment

README = REPO_ROOT / "README.md"
BIN_DIR = pathlib.Path(sys.executable).parent
SHELL_FENCES = ("sh", "bash", "shell", "console")
# Tools a reader brings (or the demo provides); shell keywords and builtins.
TOOLS = {"curl", "python3", "docker", "kubectl", "echo", "for", "do", "done", "bash"}
CHEAP = ("validate", "routes", "test-rego", "eval", "--version", "--help")


def readme_commands() -> list[tuple[int, str]]:
    """``(line, command)`` for every command in the README's shell blocks: continuations joined,
    comments dropped, pipelines, ``;``, ``&&`` and ``$(...)`` split into their commands."""
    commands: list[tuple[int, str]] = []
    fence, pending, start = None, "", 0
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
            continue
        if fence not in SHELL_FENCES:
            continue
        text = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        full, pending = pending + text, ""
        commands.extend((start, command) for command in _split(full))
    return commands


def _split(text: str) -> list[str]:
    """The simple commands of a shell line, quotes respected."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, words = [], []
    for token in lexer:
        if token in ("|", "||", ";", "&&", "(", ")", "$("):
            if words:
                commands.append(shlex.join(words))
            words = []
        else:
            words.append(token)
    if words:
        commands.append(shlex.join(words))
    return commands


def _words(command: str) -> list[str]:
    words = shlex.split(command)
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):      # VAR=value before a command
        words = words[1:]
    return words


def _makefile_targets() -> set[str]:
    text = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.MULTILINE))


def _problem(command: str) -> str | None:
    """Why ``command`` would not run on a fresh clone after ``make venv``; None when it would."""
    words = _words(command)
    if not words:
        return None
    program = words[0]
    if program == "make":
        missing = [target for target in words[1:] if target not in _makefile_targets()]
        return f"no make target {missing[0]}" if missing else None
    if program.startswith(".venv/bin/"):
        name = program.removeprefix(".venv/bin/")
        if not (BIN_DIR / name).exists():
            return f"{program} is not installed by make venv"
        if name.startswith("python") and words[1:2] == ["-m"] and importlib.util.find_spec(words[2]) is None:
            return f"no module {words[2]}"
    elif program not in TOOLS:
        return f"{program} is neither a make target, a .venv/bin/ program nor a known tool"
    for word in words[1:]:
        if re.match(r"^[\w.-]+/[\w./-]*$", word) and not word.startswith(".venv/") and "://" not in word:
            if not (REPO_ROOT / word).exists():
                return f"{word} does not exist in the repository"
    return None


@pytest.mark.parametrize("line, command", readme_commands(), ids=lambda value: str(value)[:60])
def test_readme_command_refers_to_a_make_target_venv_program_or_file(line, command):
    assert _problem(command) is None, f"README.md:{line}: {command!r}: {_problem(command)}"


def test_a_bare_gateway_app_or_gunicorn_command_is_caught():
    assert _problem("gateway-app validate") is not None
    assert _problem("gunicorn -c conf/gunicorn.conf.py wsgi:app") is not None
    assert _problem("make no-such-target") is not None
    assert _problem(".venv/bin/gateway-app validate --config-dir nowhere/conf") is not None


@pytest.mark.parametrize("line, command", [(line, command) for line, command in readme_commands()
                                           if command.startswith(".venv/bin/") and "gateway" in command
                                           and any(f" {word}" in command for word in CHEAP)],
                         ids=lambda value: str(value)[:60])
def test_cheap_readme_commands_run_as_written(line, command):
    argv = _words(command)
    argv[0] = str(BIN_DIR / argv[0].removeprefix(".venv/bin/"))
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env=child_environment(), stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"README.md:{line}: {command}\n{done.stdout}\n{done.stderr}"


def test_the_readme_names_the_rego_engine_build():
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "`gordon-to-regorus` build of [microsoft/regorus]" in text
    assert "gateway_app/policy/engine.py" in text
