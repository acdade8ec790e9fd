"""AWS credentials from Vault's aws engine.

- iam_user: Vault creates an IAM user with keys per lease; the broker renews the lease and
  revoking it deletes the user, so the keys stop working at once.
- assumed_role: STS session credentials from AssumeRole. AWS cannot cut a session short,
  so the lease is not renewable and revoking it only makes Vault forget it: the
  credentials expire at their TTL, and rotation replaces them before then.

Values use AWS's own names (`access_key_id`, `secret_access_key`, `session_token`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, SecretStr

from broker.models import (
    AwsRole,
    BackendKind,
    Credential,
    Ending,
    IssueContext,
    IssuedSecret,
    Lifecycle,
    RoleSpec,
    VaultLease,
)
from broker.models.durations import format_duration

from .base import SecretReply, expect, leased, not_renewable
from .leases import renew_lease, revoke_lease
from .vault import VaultClient, parse_reply

IAM_USER = Lifecycle(renewable=True, revocable=True, ends=Ending.REVOKED)
ASSUMED_ROLE = Lifecycle(renewable=False, revocable=False, ends=Ending.EXPIRES)


class _Keys(BaseModel):
    access_key: str
    secret_key: str
    security_token: str | None = None


class AwsBackend:
    kind: BackendKind = "aws"
    revokes_at_vault: bool = True

    def __init__(self, vault: VaultClient) -> None:
        self._vault = vault

    def lifecycle(self, role: RoleSpec) -> Lifecycle:
        return IAM_USER if expect(role, AwsRole).credential_type == "iam_user" else ASSUMED_ROLE

    async def issue(self, role: RoleSpec, context: IssueContext) -> IssuedSecret:
        spec = expect(role, AwsRole)
        mount = self._vault.mount(spec.mount)
        if spec.credential_type == "iam_user":
            path = f"{mount}/creds/{spec.vault_role}"
            body = await self._vault.read(path)
        else:
            path = f"{mount}/sts/{spec.vault_role}"
            data: dict[str, Any] = {}
            if spec.ttl is not None:
                data["ttl"] = format_duration(spec.ttl)
            if spec.role_arn is not None:
                data["role_arn"] = spec.role_arn
            body = await self._vault.write(path, data)
        reply = parse_reply(SecretReply, body, path)
        keys = parse_reply(_Keys, reply.data, path)
        values = {
            "access_key_id": SecretStr(keys.access_key),
            "secret_access_key": SecretStr(keys.secret_key),
        }
        if keys.security_token:
            values["session_token"] = SecretStr(keys.security_token)
        lease = leased(spec, mount, reply, self._vault.clock())
        return IssuedSecret(credential=Credential(values=values), lease=lease)

    async def renew(self, lease: VaultLease, increment: timedelta | None = None) -> VaultLease:
        if not lease.renewable:
            raise not_renewable(lease, "STS session credentials live to their TTL")
        return await renew_lease(self._vault, lease, increment)

    async def revoke(self, lease: VaultLease) -> None:
        await revoke_lease(self._vault, lease.lease_id)
