"""Rotation on a role's schedule (`rotation: {every: 24h}` or `{cron: "0 3 * * *"}`).

A leader job: each pass reads the roles that carry a schedule, pages through each one's
active leases and hands the due ones (their generation began long enough ago, or a cron
time has passed since) to `RotationFlow.rotate_scheduled` (handed in by runtime.py, so
this job does not import the operators' flows). Due-ness is computed from the lease's own
`created_at`, so a pass that is missed (a leader died, the broker was down) is caught up
by the next one, and a lease rotated once is not due again until its new generation ages.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import structlog

from broker.store import LeaseQuery, LeaseRecord, LeaseState

from ..common.role_catalog import RoleCatalog
from ..core import Core

log = structlog.get_logger("keyferry.schedule")
PAGE = 500
RotateDue = Callable[[list[LeaseRecord], str], Awaitable[int]]
"""Rotates the due leases under one request id; how many were rotated."""


class ScheduledRotation:
    def __init__(
        self,
        core: Core,
        *,
        catalog: RoleCatalog,
        rotate: RotateDue,
    ) -> None:
        self._catalog = catalog
        self._leases = core.store.leases
        self._rotate = rotate
        self._clock = core.clock

    async def run_once(self) -> int:
        """Rotate every lease its role's schedule made due; how many were rotated."""
        now = self._clock()
        rotated = 0
        for stored in await self._catalog.list_all():
            schedule = stored.spec.rotation
            if schedule is None:
                continue
            due = [
                lease
                for lease in await self._active(stored.spec.name)
                if schedule.due_after(lease.created_at) <= now
            ]
            if due:
                count = await self._rotate(due, uuid.uuid4().hex)
                log.info("scheduled rotation", role=stored.spec.name, due=len(due), rotated=count)
                rotated += count
        return rotated

    async def _active(self, role: str) -> list[LeaseRecord]:
        query = LeaseQuery(roles=frozenset({role}), states=frozenset({LeaseState.ACTIVE}))
        found: list[LeaseRecord] = []
        after: str | None = None
        while True:
            page = await self._leases.select_page(query, after, PAGE)
            found.extend(page)
            if len(page) < PAGE:
                return found
            after = page[-1].id
