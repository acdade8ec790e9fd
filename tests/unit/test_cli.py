import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.cli import demo as demo_command
from broker.cli.main import app


def test_help_lists_the_commands_that_exist() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "version" in result.output
    assert "demo" in result.output


def test_version_names_the_distribution() -> None:
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.startswith("keyferry ")


def test_the_agent_path_does_not_import_the_broker() -> None:
    """`keyferry agent` runs in every pod: it must not load the broker's server-side code."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    probe = (
        "import sys\n"
        "sys.argv = ['keyferry', 'agent', '--help']\n"
        "from broker.cli.entry import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('broker.server', 'broker.store', 'broker.backends', 'broker.policy',\n"
        "         'sqlalchemy', 'hvac', 'cedarpy')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert "keyferry agent" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


class _Execed(Exception):
    """os.execv was called (the test stops there instead of replacing the process)."""


def test_demo_in_a_checkout_runs_the_checkouts_driver_and_imports_no_tests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, list[str], Path]] = []

    def execv(path: str, argv: list[str]) -> None:
        calls.append((path, argv, Path.cwd()))
        raise _Execed

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.chdir(Path.cwd())  # the command moves into the checkout; undone after
    result = CliRunner().invoke(app, ["demo", "--hold"])
    assert isinstance(result.exception, _Execed)
    checkout = Path(demo_command.__file__).resolve().parents[2]
    assert calls == [(sys.executable, [sys.executable, "-m", "tests.demo", "--hold"], checkout)]
    assert "tests.demo.driver" not in sys.modules  # started in the checkout, not imported


def test_demo_outside_a_checkout_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    installed = tmp_path / "site-packages" / "broker" / "cli" / "demo.py"
    monkeypatch.setattr(demo_command, "__file__", str(installed))
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 2
    assert "clone the keyferry repository and run `tests/run demo` there" in result.output
