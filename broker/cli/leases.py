"""`keyferry leases list` and `keyferry leases count`: the leases a selector reaches (the
selector of `keyferry rotate`), read through the broker's admin listener (LeasesService) as
the operator of the CLI context. Nothing changes; no credential value is shown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from broker.api.v1 import leases_pb2, leases_pb2_grpc, rotation_pb2

from .admin_channel import TIMEOUT, call_admin
from .context import ContextOption
from .output import Output, OutputOption, emit, emit_one
from .selecting import (
    SELECTOR_HELP,
    selected,
)

if TYPE_CHECKING:
    from broker.api.v1.leases_pb2_grpc import LeasesServiceAsyncStub

T = TypeVar("T")
States = Annotated[
    list[str] | None,
    typer.Option(
        "--state",
        help="pending, active, revoking, revoked or failed; repeat for several "
        "(default: pending and active)",
    ),
]
COLUMNS = ("lease", "state", "cluster", "namespace", "pod", "role", "generation", "expires_at")
EXITS = (
    "Exit codes: 0 listed; 1 the broker refused; 2 an option or the context is invalid; "
    "3 the broker did not answer."
)

app = typer.Typer(
    name="leases",
    help=(
        "List and count leases by selector, through the broker's admin listener as the CLI "
        "context's operator (Cedar action `audit` on the Broker). Changes nothing."
    ),
    epilog=(
        "Examples:\n\n  keyferry leases list --cluster prod-eu --namespace orders\n\n"
        "  keyferry leases count --all --by cluster --by role"
    ),
    no_args_is_help=True,
)


def lease_row(listed: leases_pb2.ListedLease) -> dict[str, Any]:
    lease = listed.lease
    return {
        "lease": lease.id,
        "state": lease.state,
        "cluster": lease.cluster,
        "namespace": lease.namespace,
        "service_account": lease.service_account,
        "pod": lease.pod,
        "role": lease.role,
        "credential": lease.credential_name,
        "generation": lease.generation,
        "created_at": _time(listed, "created_at"),
        "expires_at": _time(listed, "expires_at"),
        "revoke_after": _time(listed, "revoke_after"),
        "last_error": listed.last_error or None,
    }


def _time(listed: leases_pb2.ListedLease, field: str) -> str | None:
    if not listed.HasField(field):  # type: ignore[arg-type]
        return None
    return str(getattr(listed, field).ToDatetime(tzinfo=UTC).isoformat())


@app.command(
    "list",
    epilog=(
        "Examples:\n\n  keyferry leases list --cluster prod-eu --namespace orders\n\n"
        "  keyferry leases list --all --state revoking -o json\n\n"
        "Leases come by lease id, --limit per page; when there are more, the next page's "
        f"token is printed on stderr (--page-token).\n\n{SELECTOR_HELP}\n\n{EXITS}"
    ),
)
@selected
def list_(
    *,
    selector: rotation_pb2.LeaseSelector,
    state: States = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="leases per page")] = 100,
    page_token: Annotated[
        str | None, typer.Option(help="the token a previous page printed: the next page")
    ] = None,
    output: OutputOption = Output.TABLE,
    context: ContextOption = None,
) -> None:
    """List the selected leases, by lease id."""
    request = leases_pb2.ListLeasesRequest(
        selector=selector,
        states=state or [],
        page_size=limit,
        page_token=page_token or "",
    )
    reply = _call(context, lambda stub: stub.ListLeases(request, timeout=TIMEOUT))
    emit([lease_row(listed) for listed in reply.leases], output, columns=COLUMNS, empty="no leases")
    if reply.next_page_token:
        typer.echo(f"more: --page-token {reply.next_page_token}", err=True)


@app.command(
    epilog=(
        "Examples:\n\n  keyferry leases count --all\n\n"
        "  keyferry leases count --cluster prod-eu --by role --by state --state active "
        f"--state revoking\n\n{SELECTOR_HELP}\n\n{EXITS}"
    )
)
@selected
def count(
    *,
    selector: rotation_pb2.LeaseSelector,
    state: States = None,
    by: Annotated[
        list[str] | None,
        typer.Option(
            "--by",
            help="group by cluster, namespace, service_account, role or state; repeat (at most 3)",
        ),
    ] = None,
    output: OutputOption = Output.TABLE,
    context: ContextOption = None,
) -> None:
    """Count the selected leases, in total or grouped."""
    group_by = by or []
    request = leases_pb2.CountLeasesRequest(
        selector=selector,
        states=state or [],
        group_by=group_by,
    )
    reply = _call(context, lambda stub: stub.CountLeases(request, timeout=TIMEOUT))
    if not group_by:
        emit_one({"leases": reply.total}, output)
        return
    rows = [
        {**dict(zip(group_by, group.values, strict=True)), "leases": group.leases}
        for group in reply.groups
    ]
    emit(rows, output, columns=[*group_by, "leases"], empty="no leases")
    if output is Output.TABLE:
        more = " (more than 1,000 groups: the largest shown)" if reply.truncated else ""
        typer.echo(f"total: {reply.total}{more}")


def _call(context: Path | None, call: Callable[[LeasesServiceAsyncStub], Awaitable[T]]) -> T:
    return call_admin(context, leases_pb2_grpc.LeasesServiceStub, call)
