"""RevokeSelected: end every live lease a selector reaches, on an operator's demand.

Each selected lease is decided (Cedar `revoke`, audited) before any is touched; then the
lease engine ends each (engine/lease_engine.py: the row revoking, no longer handed out, audited
with reason REVOKE_SELECTED, then the Revoker asks Vault), `concurrency` at a time. A
revocation Vault does not take now stays queued on its row and the Revoker's periodic
pass retries it until it succeeds (engine/revoker.py): it is reported as queued, never as
given up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog

from broker.audit import Principal
from broker.errors import KeyferryError
from broker.policy import Action, Operator
from broker.store import LIVE_STATES, LeaseState

from ..common.audit_trail import operator_principal
from ..core import Core
from .selection import (
    LeaseProgress,
    LeaseSelector,
    Outcome,
    Planned,
    Selected,
    Selection,
    SelectionEvent,
    Summary,
    check_concurrency,
    planned_only,
    run_batched,
)

log = structlog.get_logger("keyferry.revoke")
REVOKE_SELECTED = "REVOKE_SELECTED"


class RevocationFlow:
    def __init__(self, core: Core, *, concurrency: int) -> None:
        self._selection = Selection(core)
        self._engine = core.engine
        self._concurrency = concurrency

    async def revoke_selected(
        self,
        operator: Operator,
        selector: LeaseSelector,
        *,
        concurrency: int | None,
        dry_run: bool,
        request_id: str,
    ) -> AsyncIterator[SelectionEvent]:
        """Revoke every live lease the selector reaches; one LeaseProgress per lease as it
        finishes (revoked, or queued for retry), then the Summary."""
        workers = check_concurrency(concurrency, self._concurrency)
        chosen = await self._selection.plan(
            operator, Action.REVOKE, selector, LIVE_STATES, request_id, dry_run=dry_run
        )
        yield Planned(len(chosen))
        if dry_run:
            for event in planned_only(chosen):
                yield event
            return
        who = operator_principal(operator)

        async def step(selected: Selected) -> LeaseProgress:
            return await self._revoke_one(who, selected, request_id)

        revoked = queued = 0
        async for progress in run_batched(chosen, workers, step):
            if progress.outcome is Outcome.REVOKED:
                revoked += 1
            else:
                queued += 1
            yield progress
        yield Summary(len(chosen), revoked, 0, queued, dry_run=False)

    async def _revoke_one(
        self, who: Principal, selected: Selected, request_id: str
    ) -> LeaseProgress:
        try:
            done = await self._engine.end(selected.lease, who, REVOKE_SELECTED, request_id)
        except KeyferryError as error:
            log.warning("lease not revoked now; queued", lease_id=selected.lease.id)
            return LeaseProgress(selected.lease, Outcome.QUEUED, error=error.message)
        if done.state is LeaseState.REVOKING:  # its issue is still running: queued
            return LeaseProgress(done, Outcome.QUEUED, error=done.last_error)
        return LeaseProgress(done, Outcome.REVOKED)  # revoked (or failed meanwhile)
