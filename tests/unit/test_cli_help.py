"""Every `keyferry` command documents itself: examples and exit codes in its --help, a help
page that renders, and shell completion that knows the commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.cli import exits
from broker.cli.main import app
from tests.tools.clidoc import Command, commands

EVERY = list(commands())
LEAVES = [c for c in EVERY if not c.is_group]
DOCS = Path(__file__).parents[2] / "docs"
NAMES = ("OK", "FAILED", "CONFIG", "UNREACHABLE", "NOTHING_SELECTED")
CODES = {getattr(exits, name) for name in NAMES}


def _text(entry: Command) -> str:
    return f"{entry.command.help or ''}\n{entry.command.epilog or ''}"


def test_the_walk_finds_every_audience() -> None:
    paths = {c.path for c in EVERY}
    for path in (
        "keyferry broker serve",
        "keyferry webhook serve",
        "keyferry agent run",
        "keyferry clusters register",
        "keyferry roles apply",
        "keyferry rotate",
        "keyferry audit verify",
        "keyferry demo",
    ):
        assert path in paths


@pytest.mark.parametrize("entry", EVERY, ids=lambda c: c.path)
def test_every_command_shows_examples(entry: Command) -> None:
    assert "Examples:" in _text(entry), f"{entry.path}: add an epilog starting with Examples:"
    assert re.search(r"^  .*\b(keyferry|tests/run) ", _text(entry), re.MULTILINE), entry.path


@pytest.mark.parametrize("entry", LEAVES, ids=lambda c: c.path)
def test_every_leaf_command_has_an_epilog_with_its_exit_codes(entry: Command) -> None:
    epilog = entry.command.epilog or ""
    assert "Examples:" in epilog, f"{entry.path}: the examples belong in the epilog"
    assert "Exit code" in epilog, f"{entry.path}: say which exit codes it returns"
    for code in re.findall(r"\b(\d)\b[^;.]*", epilog.split("Exit code", 1)[1]):
        assert int(code) in CODES


@pytest.mark.parametrize("entry", EVERY, ids=lambda c: c.path)
def test_every_help_page_renders(entry: Command) -> None:
    args = [*entry.path.split()[1:], "--help"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "Examples" in result.output


def test_the_exit_codes_page_names_every_code() -> None:
    page = (DOCS / "reference" / "exit-codes.md").read_text()
    for name in NAMES:
        assert f"| {getattr(exits, name)} | `{name}` |" in page
    for entry in LEAVES:
        command = entry.path.removeprefix("keyferry ")
        assert command.split()[-1] in page, f"{entry.path} is missing from exit-codes.md"


def test_shell_completion_completes_the_installed_command() -> None:
    keyferry = Path(sys.executable).with_name("keyferry")
    env = {
        **os.environ,
        "_KEYFERRY_COMPLETE": "complete_bash",
        "COMP_WORDS": "keyferry clusters ",
        "COMP_CWORD": "2",
    }
    done = subprocess.run([str(keyferry)], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["register", "list", "get", "deregister", "label"]
    script = subprocess.run(
        [str(keyferry), "--show-completion", "bash"], capture_output=True, text=True, check=True
    )
    assert "complete -o default -F _keyferry_completion keyferry" in script.stdout
