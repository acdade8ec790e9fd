"""Dynamic users from Vault's database engine: a user per lease, renewed by the broker,
dropped by Vault on revoke (PostgreSQL, MariaDB and every other database plugin)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, SecretStr

from broker.models import (
    BackendKind,
    Credential,
    DatabaseRole,
    Ending,
    IssueContext,
    IssuedSecret,
    Lifecycle,
    RoleSpec,
    VaultLease,
)

from .base import SecretReply, expect, leased, not_renewable
from .leases import renew_lease, revoke_lease
from .vault import VaultClient, parse_reply

LIFECYCLE = Lifecycle(renewable=True, revocable=True, ends=Ending.REVOKED)


class _Login(BaseModel):
    username: str
    password: str


class DatabaseBackend:
    kind: BackendKind = "database"
    revokes_at_vault: bool = True

    def __init__(self, vault: VaultClient) -> None:
        self._vault = vault

    def lifecycle(self, role: RoleSpec) -> Lifecycle:
        return LIFECYCLE

    async def issue(self, role: RoleSpec, context: IssueContext) -> IssuedSecret:
        spec = expect(role, DatabaseRole)
        mount = self._vault.mount(spec.mount)
        body = await self._vault.read(f"{mount}/creds/{spec.vault_role}")
        reply = parse_reply(SecretReply, body, f"{mount}/creds/{spec.vault_role}")
        login = parse_reply(_Login, reply.data, f"{mount}/creds/{spec.vault_role}")
        values = {"username": SecretStr(login.username), "password": SecretStr(login.password)}
        if spec.connection is not None:
            values.update({k: SecretStr(v) for k, v in spec.connection.values().items()})
        credential = Credential(values=values)
        return IssuedSecret(
            credential=credential, lease=leased(spec, mount, reply, self._vault.clock())
        )

    async def renew(self, lease: VaultLease, increment: timedelta | None = None) -> VaultLease:
        if not lease.renewable:
            raise not_renewable(lease, "Vault issued it without a renewable lease")
        return await renew_lease(self._vault, lease, increment)

    async def revoke(self, lease: VaultLease) -> None:
        await revoke_lease(self._vault, lease.lease_id)


async def rotate_root(vault: VaultClient, mount: str, connection: str) -> str:
    """Have Vault rotate the root credential of a connection on a keyferry database mount
    (`<mount>/rotate-root/<connection>`); the Vault path rotated."""
    path = f"{vault.mount(mount)}/rotate-root/{connection}"
    await vault.write(path)
    return path
