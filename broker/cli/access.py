"""`keyferry access`: just-in-time grants of a role's credentials, through the broker's
admin listener, as the operator of the CLI context."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from google.protobuf import duration_pb2, timestamp_pb2

from broker.api.v1 import access_pb2, access_pb2_grpc
from broker.models import parse_duration

from .admin_channel import TIMEOUT, call_admin
from .context import ContextOption
from .exits import CONFIG
from .output import Output, OutputOption, emit, emit_one

if TYPE_CHECKING:
    from broker.api.v1.access_pb2_grpc import AccessServiceAsyncStub

T = TypeVar("T")
STATES = {
    access_pb2.GRANT_STATE_PENDING: "pending",
    access_pb2.GRANT_STATE_APPROVED: "approved",
    access_pb2.GRANT_STATE_ISSUED: "issued",
    access_pb2.GRANT_STATE_DENIED: "denied",
    access_pb2.GRANT_STATE_EXPIRED: "expired",
    access_pb2.GRANT_STATE_REVOKED: "revoked",
}
STATE_NUMBERS = {name: number for number, name in STATES.items()}
SECRET_FILE_MODE = 0o600
EXITS = (
    "\n\nExit codes: 0 done; 2 an option or the context is invalid; 1 the broker refused (its "
    "sentence says why: Cedar, self-approval, the grant's state); 3 the broker did not answer."
)

app = typer.Typer(
    name="access",
    help=(
        "Just-in-time access: ask for a role's credentials for a while, have someone else "
        "approve, use them, and they die when the grant ends.\n\n"
        "Talks to a running broker's admin listener (mutual TLS) as the operator of the CLI "
        "context (--context, KEYFERRY_CONTEXT). Cedar decides each step: request_access on "
        "the role, approve_access (approve and deny), revoke_access and view_access on the "
        "grant. Nobody approves their own request."
    ),
    epilog=(
        "Examples:\n\n"
        '  keyferry access request orders-db-ro --duration 30m --reason "INC-4711"\n\n'
        "  keyferry access list --state pending\n\n"
        "  keyferry access approve GRANT_ID\n\n"
        "  keyferry access issue GRANT_ID --to ~/orders-db.json"
    ),
    no_args_is_help=True,
)


@app.command(
    epilog=(
        "Examples:\n\n"
        '  keyferry access request orders-db-ro --duration 30m --reason "INC-4711: replica lag"'
        "\n\nThe grant is pending until another operator approves it; it lapses if nobody "
        "decides within the broker's access.approval_wait. Once approved it holds for "
        "--duration (at most the broker's access.max_duration)." + EXITS
    )
)
def request(
    role: Annotated[str, typer.Argument(help="the role to get credentials of")],
    duration: Annotated[str, typer.Option(help="how long the grant holds once approved, like 30m")],
    reason: Annotated[str, typer.Option(help="why (a ticket, an incident); stored and audited")],
    context: ContextOption = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Ask for a role's credentials for a while."""
    try:
        length = duration_pb2.Duration()
        length.FromTimedelta(parse_duration(duration))
    except ValueError as exc:
        typer.echo(f"--duration: {exc}", err=True)
        raise typer.Exit(CONFIG) from None
    message = access_pb2.RequestGrantRequest(role=role, duration=length, reason=reason)
    reply = _call(context, lambda stub: stub.RequestGrant(message, timeout=TIMEOUT))
    emit_one(grant_row(reply.grant), output)


@app.command(epilog="Examples:\n\n  keyferry access approve 6f1c0d3e-..." + EXITS)
def approve(
    grant_id: Annotated[str, typer.Argument(help="the pending grant's id")],
    context: ContextOption = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Approve someone else's pending grant; it holds for its duration from now."""
    message = access_pb2.ApproveGrantRequest(grant_id=grant_id)
    reply = _call(context, lambda stub: stub.ApproveGrant(message, timeout=TIMEOUT))
    emit_one(grant_row(reply.grant), output)


@app.command(epilog="Examples:\n\n  keyferry access deny 6f1c0d3e-..." + EXITS)
def deny(
    grant_id: Annotated[str, typer.Argument(help="the pending grant's id")],
    context: ContextOption = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Deny someone else's pending grant; nothing is ever issued for it."""
    message = access_pb2.DenyGrantRequest(grant_id=grant_id)
    reply = _call(context, lambda stub: stub.DenyGrant(message, timeout=TIMEOUT))
    emit_one(grant_row(reply.grant), output)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  keyferry access issue 6f1c0d3e-... --to ~/orders-db.json\n\n"
        "  keyferry access issue 6f1c0d3e-... --show-secrets -o json\n\n"
        "Without --show-secrets or --to only the lease is shown, never the values. --to "
        "writes the values as a JSON object to FILE with mode 0600. Running it again "
        "returns the same credential; it dies when the grant expires or is revoked." + EXITS
    )
)
def issue(
    grant_id: Annotated[str, typer.Argument(help="your approved grant's id")],
    to: Annotated[
        Path | None, typer.Option("--to", help="write the credential's values to FILE (0600)")
    ] = None,
    show_secrets: Annotated[
        bool, typer.Option("--show-secrets", help="print the credential's values")
    ] = False,
    context: ContextOption = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Get the credential of your approved grant."""
    message = access_pb2.IssueForGrantRequest(grant_id=grant_id)
    reply = _call(context, lambda stub: stub.IssueForGrant(message, timeout=TIMEOUT))
    values = dict(reply.credential.values)
    if to is not None:
        write_private(to, json.dumps(values, indent=2) + "\n")
    row: dict[str, object] = {
        "grant": reply.grant.id,
        "lease": reply.lease.id,
        "role": reply.lease.role,
        "expires_at": _time(reply.lease, "expires_at"),
        "grant_ends_at": _time(reply.grant, "expires_at"),
        "values": sorted(values),
    }
    if to is not None:
        row["written_to"] = str(to)
    if show_secrets:
        row["credential"] = values
    emit_one(row, output)


@app.command(epilog="Examples:\n\n  keyferry access revoke 6f1c0d3e-..." + EXITS)
def revoke(
    grant_id: Annotated[str, typer.Argument(help="the grant's id")],
    context: ContextOption = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """End a grant now; its credential is revoked at Vault."""
    message = access_pb2.RevokeGrantRequest(grant_id=grant_id)
    reply = _call(context, lambda stub: stub.RevokeGrant(message, timeout=TIMEOUT))
    row = grant_row(reply.grant)
    row["queued_leases"] = list(reply.pending_lease_ids)
    emit_one(row, output)


@app.command(
    "list",
    epilog=(
        "Examples:\n\n  keyferry access list\n\n"
        "  keyferry access list --state pending -o json\n\n"
        "  keyferry access list --requester alice\n\n"
        "Only the grants Cedar lets you see (view_access), newest first." + EXITS
    ),
)
def list_grants(
    state: Annotated[
        list[str] | None,
        typer.Option(
            help="only grants in this state (repeat for several): " + ", ".join(STATE_NUMBERS)
        ),
    ] = None,
    requester: Annotated[str | None, typer.Option(help="only this operator's requests")] = None,
    context: ContextOption = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """List grants."""
    unknown = [s for s in state or [] if s not in STATE_NUMBERS]
    if unknown:
        typer.echo(f"--state: {unknown[0]!r} is not one of {', '.join(STATE_NUMBERS)}", err=True)
        raise typer.Exit(CONFIG)
    message = access_pb2.ListGrantsRequest(
        states=[STATE_NUMBERS[s] for s in state or []], requester=requester or ""
    )
    reply = _call(context, lambda stub: stub.ListGrants(message, timeout=TIMEOUT))
    emit(
        [grant_row(g) for g in reply.grants],
        output,
        columns=("id", "state", "role", "requester", "duration", "expires_at", "decided_by"),
        empty="no grants; ask for one with `keyferry access request`",
    )


@app.command(epilog="Examples:\n\n  keyferry access get 6f1c0d3e-... -o yaml" + EXITS)
def get(
    grant_id: Annotated[str, typer.Argument(help="the grant's id")],
    context: ContextOption = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Show one grant."""
    message = access_pb2.GetGrantRequest(grant_id=grant_id)
    reply = _call(context, lambda stub: stub.GetGrant(message, timeout=TIMEOUT))
    emit_one(grant_row(reply.grant), output)


def grant_row(grant: access_pb2.Grant) -> dict[str, object]:
    return {
        "id": grant.id,
        "state": STATES.get(grant.state, "unknown"),
        "role": grant.role,
        "requester": grant.requester,
        "reason": grant.reason,
        "duration": f"{grant.duration.seconds}s",
        "requested_at": _time(grant, "requested_at"),
        "expires_at": _time(grant, "expires_at"),
        "decided_by": grant.decided_by or None,
        "decided_at": _time(grant, "decided_at"),
        "ended_by": grant.ended_by or None,
        "ended_at": _time(grant, "ended_at"),
        "lease": grant.lease_id or None,
    }


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read, even if the file existed before."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SECRET_FILE_MODE)
    with os.fdopen(descriptor, "w") as file:
        os.fchmod(file.fileno(), SECRET_FILE_MODE)
        file.write(text)


def _time(message: object, field: str) -> str | None:
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    return stamp.ToDatetime(dt.UTC).isoformat()


def _call(context: Path | None, call: Callable[[AccessServiceAsyncStub], Awaitable[T]]) -> T:
    return call_admin(context, access_pb2_grpc.AccessServiceStub, call)
