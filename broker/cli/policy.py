"""`keyferry policy check`: validate Cedar policy files and list the permits that let
workloads of any cluster in (broker/policy/lint.py); the broker logs the same at start."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from broker.policy import PolicyEngine, PolicyInvalid

from .config_file import load_or_exit
from .exits import CONFIG, FAILED
from .output import Output, OutputOption, emit

app = typer.Typer(
    name="policy",
    help="Check Cedar policies before the broker loads them.",
    epilog="Examples:\n\n  keyferry policy check policies.cedar",
    no_args_is_help=True,
)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  keyferry policy check policies.cedar more.cedar\n\n"
        "  keyferry policy check --config /etc/keyferry/broker.yaml   # the broker's files\n\n"
        "A permit that can match a Workload and never reads principal.cluster also admits "
        'the pods of any cluster registered later: add principal.cluster == Cluster::"name" '
        "(or `in [...]`).\n\n"
        "Exit codes: 0 valid, every workload permit constrains the cluster; 1 some permits "
        "do not (listed); 2 a file does not validate, or no file was given."
    )
)
def check(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="Cedar policy files", exists=True, dir_okay=False, readable=True),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="check the policy files of this broker config instead",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Validate policies; list permits that do not constrain the workload's cluster."""
    paths = list(files or [])
    if config is not None:
        paths.extend(load_or_exit(config).policies)
    if not paths:
        typer.echo("give policy files, or --config with the broker's config file", err=True)
        raise typer.Exit(CONFIG)
    try:
        engine = PolicyEngine.from_files(paths)
    except PolicyInvalid as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(CONFIG) from None
    found = engine.open_permits()
    rows = [
        {"policy": p.policy, "actions": ", ".join(p.actions) or "any", "problem": p.describe()}
        for p in found
    ]
    if output is Output.TABLE and not rows:
        typer.echo(
            f"ok: {len(engine.policy_names)} policies; every workload permit names its cluster"
        )
    else:
        emit(rows, output, columns=["policy", "actions", "problem"])
    if found:
        raise typer.Exit(FAILED)
