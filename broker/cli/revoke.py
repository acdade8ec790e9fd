"""`keyferry revoke`: end the selected leases now, through the broker's admin listener."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from broker.api.v1 import rotation_pb2, rotation_pb2_grpc

from .admin_channel import call_admin
from .context import ContextOption
from .exits import NOTHING_SELECTED
from .output import Output, OutputOption
from .selecting import (
    SELECTOR_HELP,
    Concurrency,
    DryRun,
    Run,
    selected,
)

if TYPE_CHECKING:
    from broker.api.v1.rotation_pb2_grpc import RotationServiceAsyncStub

EPILOG = (
    "Examples:\n\n"
    "  keyferry revoke --pod orders-7d9f-abcde --namespace orders --dry-run\n\n"
    "  keyferry revoke --cluster prod-eu --role orders-db-rw -o json\n\n"
    f"{SELECTOR_HELP}\n\n"
    "The operator is the one of the CLI context's certificate; Cedar decides `revoke` for "
    "it on each selected lease, all before any is revoked. Each lease stops being handed "
    "out and is revoked at Vault, --concurrency at a time; one that Vault does not revoke "
    "now stays queued and the broker retries it until it succeeds (summary: pending).\n\n"
    "Exit codes: 0 revoked or queued; 1 the broker refused; 2 an option is invalid; "
    f"3 the broker did not answer; {NOTHING_SELECTED} the selector matched no lease."
)


@selected
def revoke(
    *,
    selector: rotation_pb2.LeaseSelector,
    dry_run: DryRun = False,
    concurrency: Concurrency = None,
    output: OutputOption = Output.TABLE,
    context: ContextOption = None,
) -> None:
    """Revoke the selected leases now; their pods' credentials stop working."""
    request = rotation_pb2.RevokeSelectedRequest(
        selector=selector, concurrency=concurrency or 0, dry_run=dry_run
    )
    run = Run("revoked", output)

    def follow(stub: RotationServiceAsyncStub) -> Awaitable[None]:
        return run.follow(stub.RevokeSelected(request))

    call_admin(context, rotation_pb2_grpc.RotationServiceStub, follow)
    run.finish("queued for retry; the broker never gives up")
