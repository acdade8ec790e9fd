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
