"""`keyferry access`: just-in-time grants of a role's credentials, through the broker's
admin listener, as the operator of the CLI context."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
import yaml
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
        "\n\n"
        "  keyferry access request --cluster a --namespace orders --kube-role edit "
        '--duration 30m --reason "INC-4711"\n\n'
        "Give a ROLE for its credentials, or --cluster, --kube-role and --namespace (or "
        "--all-namespaces: a ClusterRoleBinding, which only a Cedar permit naming "
        "request_cluster_wide_access allows) for access to a member cluster "
        "(docs/cluster-access.md). "
        "The grant is pending until another operator approves it; it lapses if nobody "
        "decides within the broker's access.approval_wait. Once approved it holds for "
        "--duration (at most the broker's access.max_duration)." + EXITS
    )
)
def request(
    *,
    duration: Annotated[str, typer.Option(help="how long the grant holds once approved, like 30m")],
    reason: Annotated[str, typer.Option(help="why (a ticket, an incident); stored and audited")],
    role: Annotated[
        str | None, typer.Argument(help="the role to get credentials of (not with --cluster)")
    ] = None,
    cluster: Annotated[
        str | None, typer.Option(help="access to this member cluster instead of a role")
    ] = None,
    namespace: Annotated[
        str | None, typer.Option(help="with --cluster: the namespace to get access in")
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", help="with --cluster: in every namespace")
    ] = False,
    kube_role: Annotated[
        str | None, typer.Option(help="with --cluster: the ClusterRole to get, like view or edit")
    ] = None,
    context: ContextOption = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Ask for a role's credentials, or access to a cluster, for a while."""
    try:
        length = duration_pb2.Duration()
        length.FromTimedelta(parse_duration(duration))
    except ValueError as exc:
        typer.echo(f"--duration: {exc}", err=True)
        raise typer.Exit(CONFIG) from None
    if cluster is None:
        if role is None or namespace or all_namespaces or kube_role:
            typer.echo(
                "give a ROLE, or --cluster with --kube-role and --namespace (or --all-namespaces)",
                err=True,
            )
            raise typer.Exit(CONFIG)
        message = access_pb2.RequestGrantRequest(role=role, duration=length, reason=reason)
    else:
        if role is not None or not kube_role or bool(namespace) == all_namespaces:
            typer.echo(
                "--cluster: give --kube-role and exactly one of --namespace or "
                "--all-namespaces, and no ROLE",
                err=True,
            )
            raise typer.Exit(CONFIG)
        wanted = access_pb2.ClusterAccessRequest(
            cluster=cluster,
            namespace=namespace or "",
            all_namespaces=all_namespaces,
            kube_role=kube_role,
        )
        message = access_pb2.RequestGrantRequest(
            cluster_access=wanted, duration=length, reason=reason
        )
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
        "  keyferry access issue 6f1c0d3e-... --to ~/.kube/orders-a.yaml   (a cluster grant)\n\n"
        "Without --show-secrets or --to only the lease is shown, never the values. --to "
        "writes the values as a JSON object to FILE with mode 0600. Running it again "
        "returns the same credential; it dies when the grant expires or is revoked. For a "
        "grant of access to a cluster, --to is required and FILE becomes a kubeconfig "
        "(0600) for kubectl, with the granted namespace as its default; running it again "
        "gives a new token of the same ServiceAccount." + EXITS
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
    """Get the credential (or kubeconfig) of your approved grant."""
    known = access_pb2.GetGrantRequest(grant_id=grant_id)
    found = _call(context, lambda stub: stub.GetGrant(known, timeout=TIMEOUT)).grant
    if found.HasField("cluster_access"):
        _issue_cluster_access(grant_id, to, context, output)
        return
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
        columns=(
            "id",
            "state",
            "role",
            "requester",
            "duration",
            "expires_at",
            "decided_by",
            "cluster_objects",
        ),
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
        "cluster_objects": _objects(grant),
        "cluster_access": _cluster_access(grant),
    }


def _objects(grant: access_pb2.Grant) -> str | None:
    """A cluster grant's objects in its cluster, with pending deletions' tries."""
    if not grant.HasField("cluster_access"):
        return None
    access = grant.cluster_access
    if access.objects == "removing":
        return f"removing ({access.removal_attempts} failed tries)"
    if access.objects == "removed" and access.ended_path:
        return f"removed ({access.ended_path})"
    return access.objects


def _cluster_access(grant: access_pb2.Grant) -> dict[str, object] | None:
    if not grant.HasField("cluster_access"):
        return None
    access = grant.cluster_access
    return {
        "cluster": access.cluster,
        "namespace": access.namespace or None,
        "all_namespaces": access.all_namespaces,
        "kube_role": access.kube_role,
        "service_account": f"{access.service_account_namespace}/{access.service_account}",
        "objects": access.objects,
        "removal_attempts": access.removal_attempts,
        "last_error": access.last_error or None,
        "ended_path": access.ended_path or None,
        "token_expires_at": _time(access, "token_expires_at"),
    }


def _issue_cluster_access(
    grant_id: str, to: Path | None, context: Path | None, output: Output
) -> None:
    if to is None:
        typer.echo(
            "--to: a cluster grant's kubeconfig needs a file to go to, like "
            "--to ~/.kube/orders-a.yaml",
            err=True,
        )
        raise typer.Exit(CONFIG)
    message = access_pb2.IssueClusterAccessRequest(grant_id=grant_id)
    reply = _call(context, lambda stub: stub.IssueClusterAccess(message, timeout=TIMEOUT))
    write_private(to, kubeconfig(reply))
    emit_one(
        {
            "grant": reply.grant.id,
            "role": reply.grant.role,
            "server": reply.server,
            "namespace": reply.namespace or None,
            "token_expires_at": _time(reply, "token_expires_at"),
            "grant_ends_at": _time(reply.grant, "expires_at"),
            "written_to": str(to),
        },
        output,
    )


def kubeconfig(reply: access_pb2.IssueClusterAccessResponse) -> str:
    """A kubeconfig for kubectl: the grant's cluster, token and namespace, one context."""
    access = reply.grant.cluster_access
    name = f"keyferry-{access.cluster}-{reply.grant.id[:8]}"
    context: dict[str, str] = {"cluster": name, "user": name}
    if reply.namespace:
        context["namespace"] = reply.namespace
    authority = base64.b64encode(reply.ca_pem.encode()).decode()
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {"server": reply.server, "certificate-authority-data": authority},
            }
        ],
        "users": [{"name": name, "user": {"token": reply.token}}],
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
    }
    return yaml.safe_dump(document, sort_keys=False)


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
