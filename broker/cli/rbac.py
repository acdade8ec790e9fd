"""`keyferry rbac`: RBAC profiles kept in sync across member clusters (RbacService)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from broker.api.v1 import rbac_pb2, rbac_pb2_grpc

from .admin_channel import TIMEOUT, call_admin
from .context import ContextOption
from .exits import CONFIG
from .output import Output, OutputOption, emit

if TYPE_CHECKING:
    from broker.api.v1.rbac_pb2_grpc import RbacServiceAsyncStub

MAX_FILE = 256 * 1024

app = typer.Typer(
    name="rbac",
    help=(
        "RBAC kept in sync across member clusters: profiles say which group gets which "
        "ClusterRole (in a namespace, or cluster-wide) in clusters whose labels match "
        "(`keyferry clusters label`); the leader creates missing bindings, restores edited "
        "or deleted ones it made, and removes the ones it made that no profile asks for. "
        "Bindings it did not make are never touched. Cedar action manage_rbac."
    ),
    epilog=(
        "Examples:\n\n  keyferry clusters label a env=prod\n\n"
        "  keyferry rbac apply -f profiles.yaml --dry-run\n\n"
        "  keyferry rbac apply -f profiles.yaml"
    ),
    no_args_is_help=True,
)


@app.command(
    epilog=(
        "Examples:\n\n  keyferry rbac apply -f profiles.yaml --dry-run\n\n"
        "  keyferry rbac apply -f profiles.yaml\n\n"
        "A profiles file:\n\n"
        "  profiles:\n\n"
        "    - {name: oncall-view, group: oncall, cluster_role: view, clusters: {env: prod}}\n\n"
        "    - {name: orders-edit, group: orders-devs, cluster_role: edit, namespace: orders}\n\n"
        "The file becomes the broker's whole set of profiles (a profile left out is removed, "
        "and its bindings with it). --dry-run shows per cluster what would change "
        "(create, restore, remove; conflict: a binding of that name keyferry did not make) "
        "and changes nothing.\n\n"
        "Exit codes: 0 applied (or planned); 2 the file or the context is invalid; 1 the "
        "broker refused; 3 the broker did not answer."
    )
)
def apply(
    file: Annotated[Path, typer.Option("-f", "--file", help="the profiles file (YAML)")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the changes only")] = False,
    context: ContextOption = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Apply RBAC profiles to every matching cluster (or show what would change)."""
    try:
        text = file.read_text()
    except OSError as exc:
        typer.echo(f"--file: {exc}", err=True)
        raise typer.Exit(CONFIG) from None
    if len(text.encode()) > MAX_FILE:
        typer.echo("--file: over 256 KiB; split the profiles", err=True)
        raise typer.Exit(CONFIG)
    message = rbac_pb2.ApplyProfilesRequest(profiles_yaml=text, dry_run=dry_run)
    reply = call_admin(
        context,
        rbac_pb2_grpc.RbacServiceStub,
        lambda stub: cast("RbacServiceAsyncStub", stub).ApplyProfiles(message, timeout=TIMEOUT),
    )
    emit(
        [
            {
                "cluster": c.cluster,
                "action": c.action,
                "profile": c.profile,
                "binding": c.binding,
                "namespace": c.namespace or None,
                "detail": c.detail or None,
            }
            for c in reply.changes
        ],
        output,
        columns=("cluster", "action", "profile", "binding", "namespace", "detail"),
        empty="nothing to change: every cluster matches its profiles",
    )
