"""Vault lease operations keyed by lease id, and the list of every lease under keyferry's prefix.

Renew and revoke use the URL form (`sys/leases/renew/<lease id>`) rather than a lease id
in the body, so the broker's policy can grant them for `keyferry/*` leases only.
"""

from __future__ import annotations

from datetime import timedelta

from broker.models import VaultLease

from .base import LeaseReply
from .vault import VaultClient, parse_reply


async def renew_lease(
    vault: VaultClient, lease: VaultLease, increment: timedelta | None = None
) -> VaultLease:
    data = {"increment": int(increment.total_seconds())} if increment else {}
    body = await vault.write(f"sys/leases/renew/{lease.lease_id}", data)
    reply = parse_reply(LeaseReply, body, "a lease renewal")
    return lease.renewed(timedelta(seconds=reply.lease_duration), vault.clock())


async def revoke_lease(vault: VaultClient, lease_id: str) -> None:
    await vault.write(f"sys/leases/revoke/{lease_id}")


async def list_keyferry_leases(vault: VaultClient) -> list[str]:
    """Every lease id Vault holds under keyferry's mount prefix, sorted."""
    found: list[str] = []
    pending = [vault.settings.mount_prefix]
    while pending:
        prefix = pending.pop()
        for key in await vault.list(f"sys/leases/lookup/{prefix}"):
            (pending if key.endswith("/") else found).append(f"{prefix}{key}")
    return sorted(found)
