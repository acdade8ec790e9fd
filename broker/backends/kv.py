"""Static values from a KV version 2 mount. Nothing to renew or revoke: rotation means ops
write a new version and the broker hands it out; the version handed out is recorded."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, SecretStr

from broker import errors
from broker.models import (
    BackendKind,
    Credential,
    Ending,
    IssueContext,
    IssuedSecret,
    KvRole,
    Lifecycle,
    RoleSpec,
    VaultLease,
)

from .base import expect, not_renewable
from .vault import VaultClient, parse_reply

LIFECYCLE = Lifecycle(renewable=False, revocable=False, ends=Ending.SUPERSEDED, shared=True)


class _Metadata(BaseModel):
    version: int
    deletion_time: str = ""
    destroyed: bool = False


class _Version(BaseModel):
    data: dict[str, Any] | None
    metadata: _Metadata


class _Reply(BaseModel):
    data: _Version


class KvBackend:
    kind: BackendKind = "kv"
    revokes_at_vault: bool = False

    def __init__(self, vault: VaultClient) -> None:
        self._vault = vault

    def lifecycle(self, role: RoleSpec) -> Lifecycle:
        return LIFECYCLE

    async def issue(self, role: RoleSpec, context: IssueContext) -> IssuedSecret:
        spec = expect(role, KvRole)
        mount = self._vault.mount(spec.mount)
        path = f"{mount}/data/{spec.path}"
        params = {"version": spec.version} if spec.version is not None else None
        reply = parse_reply(_Reply, await self._vault.read(path, params), path)
        version = reply.data.metadata.version
        if reply.data.data is None:
            raise errors.NotFound(
                f"{path} version {version} is deleted or destroyed; restore it or pin "
                f"another version in role {spec.name!r}"
            )
        values = {
            key: SecretStr(value if isinstance(value, str) else json.dumps(value))
            for key, value in reply.data.data.items()
        }
        now = self._vault.clock()
        lease = VaultLease(
            role=spec.name,
            kind=spec.kind,
            mount=mount,
            renewable=False,
            ttl=timedelta(0),
            issued_at=now,
            expires_at=None,
            version=version,
        )
        return IssuedSecret(credential=Credential(values=values), lease=lease)

    async def renew(self, lease: VaultLease, increment: timedelta | None = None) -> VaultLease:
        raise not_renewable(lease, "a KV value has no lease")

    async def revoke(self, lease: VaultLease) -> None:
        """Nothing to end: a KV value stays valid until ops write a new version."""
