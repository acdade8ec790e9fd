"""The role catalog as the broker uses it: typed RoleSpecs over the store's roles table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from broker.errors import InvalidRequest
from broker.models import RoleSpec, describe_problems
from broker.store import RoleRecord, RowTampered
from broker.store.async_store import AsyncRoles

_ROLE = TypeAdapter[RoleSpec](RoleSpec)


class StoredRole(BaseModel):
    model_config = ConfigDict(frozen=True)

    spec: RoleSpec
    updated_at: datetime


OnTampered = Callable[[RowTampered], Awaitable[object]]


class RoleCatalog:
    """`on_tampered` hears of every role row that fails its integrity check (the audit
    trail records it) before RowTampered reaches the caller."""

    def __init__(self, roles: AsyncRoles, on_tampered: OnTampered | None = None) -> None:
        self._roles = roles
        self._on_tampered = on_tampered

    async def get(self, name: str) -> StoredRole:
        """The role; RoleNotFound (NOT_FOUND, ROLE_UNKNOWN) when there is none, RowTampered
        (FAILED_PRECONDITION) when its row was edited outside the broker."""
        try:
            return _stored(await self._roles.get(name))
        except RowTampered as error:
            await self._tampered(error)
            raise

    async def list_all(self) -> list[StoredRole]:
        try:
            return [_stored(record) for record in await self._roles.list()]
        except RowTampered as error:
            await self._tampered(error)
            raise

    async def _tampered(self, error: RowTampered) -> None:
        if self._on_tampered is not None:
            await self._on_tampered(error)

    async def apply(self, specs: Sequence[RoleSpec]) -> list[StoredRole]:
        """Create or replace each role (already validated by its model)."""
        names = [spec.name for spec in specs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InvalidRequest("roles", f"role names must be unique; repeated: {repeated}")
        saved = []
        for spec in specs:
            record = await self._roles.put(spec.name, spec.model_dump(mode="json"))
            saved.append(_stored(record))
        return saved

    async def delete(self, name: str) -> None:
        await self._roles.delete(name)


def _stored(record: RoleRecord) -> StoredRole:
    try:
        spec = _ROLE.validate_python(record.spec)
    except ValidationError as exc:
        raise InvalidRequest(
            "role",
            f"stored role {record.name!r} no longer validates; apply it again: "
            f"{describe_problems(exc)}",
        ) from None
    return StoredRole(spec=spec, updated_at=record.updated_at)
