from typer.testing import CliRunner

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
