"""The `keyferry` command: one entry point, a subcommand per audience.

Only commands that work are listed; each later part of keyferry adds its own group.
"""

from __future__ import annotations

import sys
from importlib.metadata import version as dist_version
from pathlib import Path

import typer

from injector.agent.cli import app as agent_app
from injector.webhook.cli import app as webhook_app

from . import admin, audit, roles, rotate, serve

app = typer.Typer(
    name="keyferry",
    help=(
        "keyferry: short-lived credentials from Vault, delivered into pods, rotated in seconds, "
        "across every registered cluster.\n\n"
        "Examples:\n\n"
        "  keyferry version\n\n"
        "  keyferry admin init --operator alice --group security   # admin CA + context\n\n"
        "  keyferry broker serve --config broker.yaml   # run the broker\n\n"
        "  keyferry roles apply -f roles.yaml           # define credential roles\n\n"
        "  keyferry roles list\n\n"
        "  keyferry rotate --lease ID                   # new credential now, old one revoked\n\n"
        "  keyferry audit verify --config broker.yaml   # catch edits, drops, truncation\n\n"
        "  keyferry demo            # start the test bed's servers and show where they listen\n\n"
        "  keyferry demo --hold     # ... and keep them running until Ctrl-C"
    ),
    no_args_is_help=True,
    add_completion=True,
)
app.add_typer(webhook_app, name="webhook")
app.add_typer(agent_app, name="agent")
app.add_typer(serve.app)
app.add_typer(roles.app)
app.add_typer(audit.app)
app.add_typer(admin.app)
app.command(epilog=rotate.EPILOG)(rotate.rotate)


@app.command()
def version() -> None:
    """Print keyferry's version."""
    typer.echo(f"keyferry {dist_version('keyferry')}")


@app.command()
def demo(
    hold: bool = typer.Option(False, help="keep the servers running until Ctrl-C"),
) -> None:
    """Run the demo from a source checkout: for now, start every test-bed server and report it.

    Needs the repository's tests/ folder (the bed builds its servers from Go modules on
    first use and caches them outside the repository).
    """
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "tests" / "bed" / "__init__.py").exists():
        typer.echo(
            "keyferry demo runs from a source checkout (it needs the test bed under tests/): "
            "clone the keyferry repository and run `tests/run demo` there",
            err=True,
        )
        raise typer.Exit(2)
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    from tests.bed.__main__ import up  # noqa: PLC0415 - only a checkout has the bed

    up(only=None, hold=hold)


def main() -> None:
    app()
