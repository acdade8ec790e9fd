"""Rotation.RotateRoot: Vault replaces the root credential of a database connection under
keyferry's mounts (`<mount>/rotate-root/<connection>`), on an operator's demand.

Afterwards only Vault knows the new root password, so this is its own Cedar action
(`rotate_root` on the `Connection`), decided and audited before Vault is asked; the
outcome is audited as `connection.root_rotated` (or `connection.root_rotate_failed`).
Leases already issued keep working: Vault uses the new root for the next ones.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from broker.audit import AuditAction, AuditEvent
from broker.backends import VaultClient
from broker.backends.database import rotate_root
from broker.errors import InvalidRequest, KeyferryError
from broker.models.roles import MOUNT_PATTERN, VAULT_ROLE_PATTERN
from broker.policy import Action, ConnectionResource, Operator

from ..common.audit_trail import operator_principal
from ..core import Core

HINTS = {
    "mount": "a keyferry database mount relative to the prefix, like db-orders",
    "connection": "the connection's name under that mount, like orders (database/config/<name>)",
}


class RootTarget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    mount: Annotated[str, StringConstraints(pattern=MOUNT_PATTERN)]
    connection: Annotated[str, StringConstraints(pattern=VAULT_ROLE_PATTERN)]

    @classmethod
    def parse(cls, mount: str, connection: str) -> RootTarget:
        try:
            return cls(mount=mount, connection=connection)
        except ValidationError as exc:
            field = str(exc.errors()[0]["loc"][0])
            raise InvalidRequest(field, f"give {HINTS[field]}") from None


class RootRotated(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    rotated_at: datetime


class RootRotationFlow:
    def __init__(self, core: Core, *, vault: VaultClient) -> None:
        self._gate = core.gate
        self._audit = core.audit
        self._vault = vault
        self._clock = core.clock

    async def rotate_root(
        self, operator: Operator, target: RootTarget, request_id: str
    ) -> RootRotated:
        resource = ConnectionResource(mount=target.mount, name=target.connection)
        path = f"{self._vault.mount(target.mount)}/rotate-root/{target.connection}"
        who = operator_principal(operator)
        await self._gate.require(
            operator,
            Action.ROTATE_ROOT,
            resource,
            lambda decision: self._audit.operator_decision(
                operator, AuditAction.ROTATE_ROOT, decision, request_id, target=path
            ),
            f"no policy permits operator {operator.name!r} to rotate the root credential "
            f"of {target.mount}/{target.connection} (Cedar action 'rotate_root' on "
            "Connection); ask for a Cedar permit",
        )
        try:
            await rotate_root(self._vault, target.mount, target.connection)
        except KeyferryError as error:
            await self._audit.record(
                AuditEvent(
                    who=who,
                    action=AuditAction.CONNECTION_ROOT_ROTATE_FAILED,
                    reason=error.reason,
                    request_id=request_id,
                    target=path,
                )
            )
            raise
        await self._audit.record(
            AuditEvent(
                who=who,
                action=AuditAction.CONNECTION_ROOT_ROTATED,
                request_id=request_id,
                target=path,
            )
        )
        return RootRotated(path=path, rotated_at=self._clock())
