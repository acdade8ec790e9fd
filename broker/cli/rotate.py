"""`keyferry rotate` and `keyferry rotate-root`: replace credentials now, through the
broker's admin listener."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from google.protobuf import duration_pb2

from broker.api.v1 import rotation_pb2, rotation_pb2_grpc
from broker.models import parse_duration

from .admin_channel import TIMEOUT, call_admin
from .context import ContextOption
from .exits import CONFIG, NOTHING_SELECTED
from .output import Output, OutputOption, emit_one
from .selecting import (
    SELECTOR_HELP,
    Concurrency,
    DryRun,
    Run,
    selected,
)

if TYPE_CHECKING:
    from broker.api.v1.rotation_pb2_grpc import RotationServiceAsyncStub

T = TypeVar("T")
EPILOG = (
    "Examples:\n\n"
    "  keyferry rotate --lease 3f0c2a9e-6d1b-4c55-9a39-0b8f1f7c2d11\n\n"
    "  keyferry rotate --cluster prod-eu --namespace orders --dry-run\n\n"
    "  keyferry rotate --role orders-db-ro --concurrency 4 --grace 30s -o json\n\n"
    f"{SELECTOR_HELP}\n\n"
    "The operator is the one of the CLI context's certificate; Cedar decides `rotate` for "
    "it on each selected lease, all before any is rotated.\n\n"
    "Each lease gets a new credential (its next generation), pushed to the pod's agent over "
    "Watch; the old credential is revoked when the agent acknowledges the new one, or when "
    "the grace period ends (default: the broker's rotation.grace). Leases are rotated "
    "--concurrency at a time; progress shows as they finish, then a summary: rotated, "
    "failed, pending (old credentials still waiting for the Ack or the grace).\n\n"
    "Exit codes: 0 rotated; 1 the broker refused, or some leases failed; 2 an option is "
    f"invalid; 3 the broker did not answer; {NOTHING_SELECTED} the selector matched no lease."
)
ROOT_EPILOG = (
    "Examples:\n\n"
    "  keyferry rotate-root --mount db-orders --connection orders\n\n"
    "Vault replaces the root credential of the connection (`<mount>/rotate-root/<name>` "
    "under keyferry's prefix); afterwards only Vault knows it. Cedar decides `rotate_root` "
    "on the Connection; leases already issued keep working.\n\n"
    "Exit codes: 0 rotated; 1 the broker refused; 2 an option is invalid; "
    "3 the broker did not answer."
)


@selected
def rotate(
    *,
    selector: rotation_pb2.LeaseSelector,
    dry_run: DryRun = False,
    concurrency: Concurrency = None,
    grace: Annotated[
        str | None,
        typer.Option(help="how long the old credential lives without an Ack, like 30s or 5m"),
    ] = None,
    output: OutputOption = Output.TABLE,
    context: ContextOption = None,
) -> None:
    """Rotate the selected leases now: new credential, pushed to the pod, old one revoked
    after the Ack."""
    request = rotation_pb2.RotateSelectedRequest(
        selector=selector, concurrency=concurrency or 0, dry_run=dry_run
    )
    if grace is not None:
        try:
            request.grace.CopyFrom(_duration(grace))
        except ValueError as exc:
            typer.echo(f"--grace: {exc}", err=True)
            raise typer.Exit(CONFIG) from None
    run = Run("rotated", output)
    _call(context, lambda stub: run.follow(stub.RotateSelected(request)))
    run.finish("old credentials revoked on the Ack or after the grace")


def rotate_root(
    mount: Annotated[str, typer.Option(help="keyferry database mount, like db-orders")],
    connection: Annotated[str, typer.Option(help="the connection's name on that mount")],
    output: OutputOption = Output.TABLE,
    context: ContextOption = None,
) -> None:
    """Have Vault rotate a database connection's root credential."""
    request = rotation_pb2.RotateRootRequest(mount=mount, connection=connection)
    reply = _call(context, lambda stub: stub.RotateRoot(request, timeout=TIMEOUT))
    emit_one(
        {"path": reply.path, "rotated_at": reply.rotated_at.ToDatetime().isoformat() + "Z"},
        output,
    )


def _call(context: Path | None, call: Callable[[RotationServiceAsyncStub], Awaitable[T]]) -> T:
    return call_admin(context, rotation_pb2_grpc.RotationServiceStub, call)


def _duration(text: str) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(parse_duration(text))
    return duration
