"""The `keyferry` command: one entry point, a subcommand per audience.

Only commands that work are listed; each later part of keyferry adds its own group.
"""

from __future__ import annotations

from importlib.metadata import version as dist_version

import typer

from injector.agent.cli import app as agent_app
from injector.webhook.cli import app as webhook_app

from . import (
    access,
    admin,
    audit,
    clusters,
    console,
    demo,
    leases,
    policy,
    revoke,
    roles,
    rotate,
    serve,
)

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
        "  keyferry clusters register --kubeconfig kc.yaml --context prod   # add a cluster\n\n"
        "  keyferry clusters list                       # clusters and their health\n\n"
        "  keyferry rotate --lease ID                   # new credential now, old one revoked\n\n"
        "  keyferry rotate --cluster a --role R --dry-run   # what a fleet rotation would do\n\n"
        "  keyferry revoke --namespace orders           # end leases now, by selector\n\n"
        "  keyferry rotate-root --mount db-orders --connection orders   # Vault's root, new\n\n"
        "  keyferry access request orders-db-ro --duration 30m --reason INC-1   # JIT access\n\n"
        "  keyferry audit verify --config broker.yaml   # catch edits, drops, truncation\n\n"
        "  keyferry audit list --action rotate --since 1h   # the trail, newest first\n\n"
        "  keyferry leases count --all --by cluster --by role   # where the leases are\n\n"
        "  keyferry console         # the operator console in the browser, on loopback\n\n"
        "  keyferry policy check policies.cedar         # permits open to any cluster\n\n"
        "  keyferry demo            # the main job on the test bed's servers, narrated\n\n"
        "  keyferry demo --hold     # ... and keep it running until Ctrl-C"
    ),
    no_args_is_help=True,
    add_completion=True,
)
app.add_typer(webhook_app, name="webhook")
app.add_typer(agent_app, name="agent")
app.add_typer(serve.app)
app.add_typer(roles.app)
app.add_typer(clusters.app)
app.add_typer(audit.app)
app.add_typer(leases.app)
app.add_typer(access.app)
app.add_typer(admin.app)
app.add_typer(policy.app)
app.command(epilog=rotate.EPILOG)(rotate.rotate)
app.command("rotate-root", epilog=rotate.ROOT_EPILOG)(rotate.rotate_root)
app.command(epilog=revoke.EPILOG)(revoke.revoke)
app.command(epilog=demo.EPILOG)(demo.demo)
app.command(epilog=console.EPILOG)(console.console)


@app.command(epilog="Examples:\n\n  keyferry version\n\nExit codes: 0 printed.")
def version() -> None:
    """Print keyferry's version."""
    typer.echo(f"keyferry {dist_version('keyferry')}")


def main() -> None:
    app()
