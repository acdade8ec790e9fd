"""RolesService's flows for an operator: Cedar decides, the audit trail records, then the
catalog changes.

Every Roles method is decided as the action `grant` on the `Role` resource (its name and
backend): a role says which Vault credentials can be handed out, so defining, deleting
and reading the catalog belong to whoever may grant access to it. Apply decides every
role before any is written; List returns only the roles the operator may see (one
decision, audited, per role). The audit records name what was asked (`roles.apply`,
`roles.read`, `roles.list`, `roles.delete`) and the operator. Default deny: without a
permit, nothing is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.audit import AuditAction
from broker.models import RoleSpec
from broker.policy import Action, Operator, RoleResource
from broker.policy import Decision as PolicyDecision

from ..common.gate import Record
from ..common.role_catalog import RoleCatalog, StoredRole
from ..core import Core

ACTION = Action.GRANT


class RoleAdmin:
    def __init__(self, core: Core, catalog: RoleCatalog) -> None:
        self._catalog = catalog
        self._gate = core.gate
        self._audit = core.audit

    async def apply(
        self, operator: Operator, specs: Sequence[RoleSpec], request_id: str
    ) -> list[StoredRole]:
        for spec in specs:
            await self._require(operator, spec.name, spec.kind, "apply", request_id)
        return await self._catalog.apply(specs)

    async def get(self, operator: Operator, name: str, request_id: str) -> StoredRole:
        stored = await self._catalog.get(name)
        await self._require(operator, name, stored.spec.kind, "read", request_id)
        return stored

    async def list_all(self, operator: Operator, request_id: str) -> list[StoredRole]:
        visible = []
        for stored in await self._catalog.list_all():
            name, kind = stored.spec.name, stored.spec.kind
            decision = await self._decide(operator, name, kind, "list", request_id)
            if decision.allowed:
                visible.append(stored)
        return visible

    async def delete(self, operator: Operator, name: str, request_id: str) -> None:
        stored = await self._catalog.get(name)
        await self._require(operator, name, stored.spec.kind, "delete", request_id)
        await self._catalog.delete(name)

    async def _require(
        self, operator: Operator, name: str, backend: str, verb: str, request_id: str
    ) -> None:
        await self._gate.require(
            operator,
            ACTION,
            RoleResource(name=name, backend=backend),
            self._record(operator, name, verb, request_id),
            f"no policy permits operator {operator.name!r} to {verb} role {name!r} "
            f"(Cedar action {ACTION.value!r} on Role); ask for a Cedar permit",
        )

    async def _decide(
        self, operator: Operator, name: str, backend: str, verb: str, request_id: str
    ) -> PolicyDecision:
        return await self._gate.decide(
            operator,
            ACTION,
            RoleResource(name=name, backend=backend),
            self._record(operator, name, verb, request_id),
        )

    def _record(self, operator: Operator, name: str, verb: str, request_id: str) -> Record:
        return lambda decision: self._audit.operator_decision(
            operator, AuditAction(f"roles.{verb}"), decision, request_id, role=name
        )
