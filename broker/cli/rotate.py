"""`keyferry rotate`: replace leases' credentials now, through the broker's admin listener."""

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
from .exits import CONFIG

if TYPE_CHECKING:
    from broker.api.v1.rotation_pb2_grpc import RotationServiceAsyncStub

T = TypeVar("T")
EPILOG = (
    "Examples:\n\n"
    "  keyferry rotate --lease 3f0c2a9e-6d1b-4c55-9a39-0b8f1f7c2d11\n\n"
    "  keyferry rotate --lease ID1 --lease ID2 --grace 30s --context /tmp/kf/context.yaml\n\n"
    "The operator is the one of the CLI context's certificate; Cedar decides `rotate` for "
    "it on each lease.\n\n"
    "Each lease gets a new credential (its next generation), pushed to the pod's agent over "
    "Watch; the old credential is revoked when the agent acknowledges the new one, or when "
    "the grace period ends (default: the broker's rotation.grace).\n\n"
    "Exit codes: 0 rotated; 2 an option is invalid; 1 the broker refused; "
    "3 the broker did not answer."
)


def rotate(
    lease: Annotated[
        list[str], typer.Option("--lease", help="id of an active lease; repeat for several")
    ],
    grace: Annotated[
        str | None,
        typer.Option(help="how long the old credential lives without an Ack, like 30s or 5m"),
    ] = None,
    context: ContextOption = None,
) -> None:
    """Rotate leases now: new credential, pushed to the pod, old one revoked after the Ack."""
    request = rotation_pb2.RotateLeasesRequest(lease_ids=lease)
    if grace is not None:
        try:
            request.grace.CopyFrom(_duration(grace))
        except ValueError as exc:
            typer.echo(f"--grace: {exc}", err=True)
            raise typer.Exit(CONFIG) from None

    reply = _call(context, lambda stub: stub.RotateLeases(request, timeout=TIMEOUT))
    for rotation in reply.rotations:
        new = rotation.lease
        state = "already rotated" if rotation.already_rotated else "rotated"
        end = "old one revoked on Ack"
        if rotation.HasField("revoke_after"):
            end += f", at the latest {rotation.revoke_after.ToDatetime().isoformat()}Z"
        typer.echo(
            f"lease {rotation.previous_lease_id} {state}: new lease {new.id} "
            f"(generation {new.generation}); {end}"
        )


def _call(context: Path | None, call: Callable[[RotationServiceAsyncStub], Awaitable[T]]) -> T:
    return call_admin(context, rotation_pb2_grpc.RotationServiceStub, call)


def _duration(text: str) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(parse_duration(text))
    return duration
