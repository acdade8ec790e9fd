"""Certificates from a PKI mount: the names come from the role's templates filled with the
pod's identity; there is no renewal (rotation issues a new certificate), and revoking puts
the serial on the mount's CRL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, SecretStr

from broker import errors
from broker.models import (
    BackendKind,
    Credential,
    Ending,
    IssueContext,
    IssuedSecret,
    Lifecycle,
    PkiRole,
    RoleSpec,
    VaultLease,
    render_name,
)
from broker.models.durations import format_duration

from .base import SecretReply, expect, not_renewable
from .vault import VaultClient, parse_reply

LIFECYCLE = Lifecycle(renewable=False, revocable=True, ends=Ending.CRL)


class _Certificate(BaseModel):
    certificate: str
    private_key: str
    issuing_ca: str
    ca_chain: list[str] = []
    serial_number: str
    expiration: int


class PkiBackend:
    kind: BackendKind = "pki"
    revokes_at_vault: bool = True

    def __init__(self, vault: VaultClient) -> None:
        self._vault = vault

    def lifecycle(self, role: RoleSpec) -> Lifecycle:
        return LIFECYCLE

    async def issue(self, role: RoleSpec, context: IssueContext) -> IssuedSecret:
        spec = expect(role, PkiRole)
        mount = self._vault.mount(spec.mount)
        path = f"{mount}/issue/{spec.vault_role}"
        names = context.template_values()
        data: dict[str, Any] = {"common_name": render_name(spec.common_name, names)}
        if spec.alt_names:
            data["alt_names"] = ",".join(render_name(alt, names) for alt in spec.alt_names)
        if spec.ttl is not None:
            data["ttl"] = format_duration(spec.ttl)
        reply = parse_reply(SecretReply, await self._vault.write(path, data), path)
        cert = parse_reply(_Certificate, reply.data, path)
        now = self._vault.clock()
        expires = datetime.fromtimestamp(cert.expiration, UTC)
        values = {
            "certificate": SecretStr(cert.certificate),
            "private_key": SecretStr(cert.private_key),
            "issuing_ca": SecretStr(cert.issuing_ca),
            "ca_chain": SecretStr("\n".join(cert.ca_chain or [cert.issuing_ca])),
        }
        lease = VaultLease(
            role=spec.name,
            kind=spec.kind,
            mount=mount,
            renewable=False,
            ttl=expires - now,
            issued_at=now,
            expires_at=expires,
            serial=cert.serial_number,
        )
        return IssuedSecret(credential=Credential(values=values), lease=lease)

    async def renew(self, lease: VaultLease, increment: timedelta | None = None) -> VaultLease:
        raise not_renewable(lease, "a certificate's lifetime is fixed when it is signed")

    async def revoke(self, lease: VaultLease) -> None:
        if not lease.serial:
            raise errors.InvalidRequest("lease", "a pki lease needs the certificate's serial")
        await self._vault.write(f"{lease.mount}/revoke", {"serial_number": lease.serial})
