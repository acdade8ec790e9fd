"""Rotation.RotateLeases, the primitive: a lease's next generation is issued, pushed to the
pod's Watch streams, and the old generation is revoked on the Ack or after the grace period.

The lease engine (engine/lease_engine.py) does the bookkeeping: the next generation's pending row
is written before Vault is asked, and completing it with `retire_after=now + grace`
activates it and turns the old generation revoking in one transaction. The Revoker revokes
the old lease when its time comes (the pod's Ack brings that time forward, see
workload/watch.py). If Vault fails the old lease stays active; if the store fails after Vault
issued, the new Vault lease is undone as in Issue.

The operator is the one the admin listener's client certificate names; Cedar decides
`rotate` for it on each lease and the audit trail names it.

RotateSelected rotates a fleet: the selector is resolved and every lease decided first
(selection.py), then the rotation is written on each selected row (`request_rotation`)
before any is rotated, and `concurrency` workers rotate them, so a fleet rotation asks
Vault for at most that many credentials at once. A broker that dies part-way finds the
rest in the table: the rotation queue's periodic pass (`resume`) rotates every requested
lease the call did not reach, with the grace asked for, as the broker itself.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from typing import Any, cast

import structlog

from broker.audit import AuditAction, Principal
from broker.errors import InvalidRequest, KeyferryError
from broker.models import VaultLease
from broker.policy import Action, Operator
from broker.store import (
    ExistingLease,
    LeaseNotFound,
    LeaseQuery,
    LeaseRecord,
    LeaseState,
    LeaseStateConflict,
    PendingLease,
)

from ..common.audit_trail import operator_principal, system_principal
from ..common.lease_resource import lease_resource
from ..common.results import Rotation
from ..common.role_catalog import RoleCatalog
from ..core import Core
from ..engine.lease_engine import IssueOrder
from ..events.hub import EventHub, LeaseRotated
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

log = structlog.get_logger("keyferry.rotate")
MAX_LEASES = 100
MIN_GRACE = timedelta(seconds=1)
MAX_GRACE = timedelta(hours=24)
CHUNK = 500
SYSTEM_JOB = "broker.rotate"
REISSUE_JOB = "broker.reissue"
SCHEDULE_JOB = "broker.schedule"
ACTIVE = frozenset({LeaseState.ACTIVE})


class RotationFlow:
    def __init__(
        self,
        core: Core,
        *,
        catalog: RoleCatalog,
        hub: EventHub,
        grace: timedelta,
        concurrency: int,
        resume_after: timedelta,
    ) -> None:
        self._resume_after = resume_after
        self._selection = Selection(core)
        self._concurrency = concurrency
        self._claimed: set[str] = set()  # leases a running call of this broker carries
        self._catalog = catalog
        self._gate = core.gate
        self._audit = core.audit
        self._leases = core.store.leases
        self._engine = core.engine
        self._hub = hub
        self._grace = grace
        self._clock = core.clock

    async def rotate(
        self,
        operator: Operator,
        lease_ids: list[str],
        grace: timedelta | None,
        request_id: str,
    ) -> list[Rotation]:
        """Rotate every lease named, `rotation.concurrency` at a time, answering in the
        order named; all are found and decided before any is rotated. The first failure
        is raised once the rotations under way have finished; none starts after it."""
        grace = self._check_grace(grace)
        if not lease_ids or len(lease_ids) > MAX_LEASES:
            raise InvalidRequest("lease_ids", f"give between 1 and {MAX_LEASES} lease ids")
        first: dict[str, int] = {}
        for index, lease_id in enumerate(lease_ids):
            if not lease_id:
                raise InvalidRequest(f"lease_ids[{index}]", "is empty: give a lease id")
            if lease_id in first:
                repeated = f"repeats lease_ids[{first[lease_id]}]: name each lease once"
                raise InvalidRequest(f"lease_ids[{index}]", repeated)
            first[lease_id] = index
        found = await self._leases.get_many(lease_ids)
        missing = next((lease_id for lease_id in lease_ids if lease_id not in found), None)
        if missing is not None:
            raise LeaseNotFound(missing)
        leases = [found[lease_id] for lease_id in lease_ids]
        await self._decide_all(operator, leases, request_id)
        who = operator_principal(operator)
        shared, alone = await self._partition(list(enumerate(leases)))
        rotations: dict[int, Rotation] = {}
        if shared:
            batch = [(f"lease_ids[{index}]", lease) for index, lease in shared]
            outcomes = await self._rotate_together(who, batch, grace, request_id)
            for (index, _), outcome in zip(shared, outcomes, strict=True):
                if isinstance(outcome, KeyferryError):
                    raise outcome  # the first failure in the order named; none more start
                rotations[index] = outcome

        async def step(item: tuple[int, LeaseRecord]) -> tuple[int, Rotation]:
            index, lease = item
            field = f"lease_ids[{index}]"
            return index, await self._rotate_one(who, field, lease, grace, request_id)

        async for index, rotation in run_batched(alone, self._concurrency, step):
            rotations[index] = rotation
        return [rotations[index] for index in range(len(leases))]

    async def rotate_selected(
        self,
        operator: Operator,
        selector: LeaseSelector,
        *,
        grace: timedelta | None,
        concurrency: int | None,
        dry_run: bool,
        request_id: str,
    ) -> AsyncIterator[SelectionEvent]:
        """Rotate every active lease the selector reaches, `concurrency` at a time; one
        LeaseProgress per lease as it finishes, then the Summary. All are decided first."""
        grace = self._check_grace(grace)
        workers = check_concurrency(concurrency, self._concurrency)
        chosen = await self._selection.plan(
            operator, Action.ROTATE, selector, ACTIVE, request_id, dry_run=dry_run
        )
        yield Planned(len(chosen))
        if dry_run:
            for event in planned_only(chosen):
                yield event
            return
        ids = [selected.lease.id for selected in chosen]
        seconds = int(grace.total_seconds())
        for chunk in _chunks(ids):
            await self._leases.request_rotation(chunk, self._clock(), seconds)
        who = operator_principal(operator)
        done = failed = 0
        rotated_away: list[str] = []
        self._claimed.update(ids)
        try:
            async for progress in self._rotate_many(who, chosen, grace, workers, request_id):
                if progress.outcome is Outcome.FAILED:
                    failed += 1
                else:
                    done += 1
                    rotated_away.append(progress.lease.id)
                yield progress
        finally:
            self._claimed.difference_update(ids)
        pending = await self._count_revoking(rotated_away)
        yield Summary(len(chosen), done, failed, pending, dry_run=False)

    async def resume(self) -> int:
        """The rotation queue's pass: rotate the requested leases no running call holds
        (a broker that died part-way, a client that went away), `rotation.concurrency` at
        a time, those asked with the same grace together; how many were rotated."""
        before = self._clock() - self._resume_after
        requests = await self._leases.rotation_requests(before)
        by_grace: dict[timedelta, list[Selected]] = {}
        for request in requests:
            if request.lease.id in self._claimed:
                continue
            seconds = request.grace_seconds
            grace = self._grace if seconds is None else timedelta(seconds=seconds)
            by_grace.setdefault(grace, []).append(Selected(request.lease, None))
        who = system_principal(SYSTEM_JOB)
        done = 0
        for grace, chosen in by_grace.items():
            workers, request_id = self._concurrency, uuid.uuid4().hex
            async for progress in self._rotate_many(who, chosen, grace, workers, request_id):
                done += progress.outcome is not Outcome.FAILED
        return done

    async def rotate_scheduled(self, leases: list[LeaseRecord], request_id: str) -> int:
        """The broker's own rotation of leases their role's schedule made due: requested
        first (so a broker that dies part-way leaves them to `resume`), then rotated
        `concurrency` at a time with the default grace; how many were rotated."""
        todo = [lease for lease in leases if lease.id not in self._claimed]
        ids = [lease.id for lease in todo]
        seconds = int(self._grace.total_seconds())
        for chunk in _chunks(ids):
            await self._leases.request_rotation(chunk, self._clock(), seconds)
        chosen = [Selected(lease, None) for lease in todo]
        who = system_principal(SCHEDULE_JOB)
        done = 0
        self._claimed.update(ids)
        try:
            async for progress in self._rotate_many(
                who, chosen, self._grace, self._concurrency, request_id
            ):
                done += progress.outcome is Outcome.ROTATED
        finally:
            self._claimed.difference_update(ids)
        return done

    async def _rotate_many(
        self,
        who: Principal,
        chosen: list[Selected],
        grace: timedelta,
        workers: int,
        request_id: str,
    ) -> AsyncIterator[LeaseProgress]:
        """Rotate `chosen` with `workers` tasks; progress in the order leases finish. If the
        caller goes away, the rest stays requested for `resume`."""

        numbered = list(enumerate(chosen))
        shared, alone = await self._partition(
            [(index, selected.lease) for index, selected in numbered]
        )
        for start in range(0, len(shared), CHUNK):
            part = shared[start : start + CHUNK]
            batch = [(f"selected[{index}]", lease) for index, lease in part]
            outcomes = await self._rotate_together(who, batch, grace, request_id)
            for progress in await self._settle_requests([lease for _, lease in part], outcomes):
                yield progress
        by_index = dict(numbered)

        async def step(index: int) -> LeaseProgress:
            return await self._rotate_requested(who, index, by_index[index], grace, request_id)

        async for progress in run_batched([index for index, _ in alone], workers, step):
            yield progress

    async def _rotate_requested(
        self, who: Principal, index: int, selected: Selected, grace: timedelta, request_id: str
    ) -> LeaseProgress:
        lease = selected.lease
        try:
            rotation = await self._rotate_one(who, f"selected[{index}]", lease, grace, request_id)
        except KeyferryError as error:
            log.warning("lease not rotated", lease_id=lease.id, error=error.message)
            await self._leases.clear_rotation_request(lease.id)
            return LeaseProgress(lease, Outcome.FAILED, error=error.message)
        if not (rotation.already_rotated and rotation.lease.state is LeaseState.PENDING):
            # A pending successor may be one a dead broker began: reconcile fails it, and
            # the request, kept, has the next pass rotate this lease after all.
            await self._leases.clear_rotation_request(lease.id)
        outcome = Outcome.ALREADY_ROTATED if rotation.already_rotated else Outcome.ROTATED
        return LeaseProgress(lease, outcome, successor=rotation.lease)

    async def _settle_requests(
        self, leases: list[LeaseRecord], outcomes: list[Rotation | KeyferryError]
    ) -> list[LeaseProgress]:
        """`_rotate_requested`'s bookkeeping for a batch: progress per lease, and the
        rotation requests cleared in one statement (kept where a pending successor may be
        a dead broker's, as there)."""
        done: list[str] = []
        progress: list[LeaseProgress] = []
        for lease, outcome in zip(leases, outcomes, strict=True):
            if isinstance(outcome, KeyferryError):
                log.warning("lease not rotated", lease_id=lease.id, error=outcome.message)
                done.append(lease.id)
                progress.append(LeaseProgress(lease, Outcome.FAILED, error=outcome.message))
                continue
            if not (outcome.already_rotated and outcome.lease.state is LeaseState.PENDING):
                done.append(lease.id)
            kind = Outcome.ALREADY_ROTATED if outcome.already_rotated else Outcome.ROTATED
            progress.append(LeaseProgress(lease, kind, successor=outcome.lease))
        if done:
            await self._leases.clear_rotation_requests(done)
        return progress

    async def _partition(
        self, leases: list[tuple[int, LeaseRecord]]
    ) -> tuple[list[tuple[int, LeaseRecord]], list[tuple[int, LeaseRecord]]]:
        """The leases whose role one Vault read serves (rotated together) and the rest
        (rotated one by one); a role that cannot be read leaves its leases to the rest,
        where each reports the error."""
        shares: dict[str, bool] = {}
        for name in {lease.role for _, lease in leases}:
            try:
                shares[name] = self._engine.shares_issue((await self._catalog.get(name)).spec)
            except KeyferryError:
                shares[name] = False
        shared = [(i, lease) for i, lease in leases if shares[lease.role]]
        alone = [(i, lease) for i, lease in leases if not shares[lease.role]]
        return shared, alone

    async def _rotate_together(
        self,
        who: Principal,
        batch: list[tuple[str, LeaseRecord]],
        grace: timedelta,
        request_id: str,
    ) -> list[Rotation | KeyferryError]:
        """Rotate leases of shared roles as one batch: their next generations begun in one
        store transaction, one Vault read per role, every row completed in one
        transaction (the lease engine's `issue_many`), then each pod told at once: the
        pushes go out concurrently, one per Watch stream. Each lease's outcome in order,
        as `_rotate_one` would have answered or raised it. Shielded: a caller that goes
        away does not cut a batch between Vault and the store."""
        return await asyncio.shield(self._together(who, batch, grace, request_id))

    async def _together(
        self,
        who: Principal,
        batch: list[tuple[str, LeaseRecord]],
        grace: timedelta,
        request_id: str,
    ) -> list[Rotation | KeyferryError]:
        outcomes: list[Rotation | KeyferryError | None] = [None] * len(batch)
        try:  # before Vault: a failure here changed nothing, and is every lease's answer
            roles = {}
            for name in {lease.role for _, lease in batch}:
                roles[name] = (await self._catalog.get(name)).spec
            begun = await self._engine.begin_next_generations([lease.id for _, lease in batch])
        except KeyferryError as error:
            return [error] * len(batch)
        revoke_after = self._clock() + grace
        orders: list[tuple[int, IssueOrder]] = []
        for index, ((field, lease), first) in enumerate(zip(batch, begun, strict=True)):
            if isinstance(first, PendingLease):
                order = IssueOrder(
                    first.lease, roles[lease.role], who, request_id, retire_after=revoke_after
                )
                orders.append((index, order))
            elif isinstance(first, LeaseNotFound):
                outcomes[index] = first
            else:  # rotated already, or not rotatable (not active)
                outcomes[index] = await self._answered(field, lease, first)
        tracked = await self._engine.issue_many([order for _, order in orders])
        rotated = [(i, t) for (i, _), t in zip(orders, tracked, strict=True)]
        previous = await self._leases.get_many(
            [batch[i][1].id for i, t in rotated if not isinstance(t, KeyferryError)]
        )
        records = []
        for index, result in rotated:
            field, lease = batch[index]
            if isinstance(result, LeaseStateConflict):
                outcomes[index] = InvalidRequest(
                    field, f"lease {lease.id}'s pod is going away; not rotated"
                )
                continue
            if isinstance(result, KeyferryError):
                outcomes[index] = result
                continue
            records.append(
                self._audit.lease_change(
                    who,
                    AuditAction.LEASE_REVOKING,
                    previous[lease.id],
                    request_id,
                    reason="ROTATED",
                )
            )
            record, vault_lease = result.lease, result.vault_lease
            self._hub.publish(record.pod_key, LeaseRotated(record, result.credential, vault_lease))
            outcomes[index] = Rotation(
                previous_lease_id=lease.id,
                lease=record,
                renewable=vault_lease.renewable,
                revoke_after=revoke_after,
                already_rotated=False,
            )
        await asyncio.gather(*records)
        log.info(
            "leases rotated together",
            leases=len(batch),
            rotated=len(records),
            roles=sorted(roles),
            revoke_after=revoke_after.isoformat(),
            request_id=request_id,
        )
        return [cast("Rotation | KeyferryError", outcome) for outcome in outcomes]

    async def _answered(
        self, field: str, lease: LeaseRecord, begun: ExistingLease | LeaseStateConflict
    ) -> Rotation | KeyferryError:
        """A lease of a batch that needs no rotation: its live successor, or why not (as
        `_rotate_one` answers; a store that fails here is that lease's answer alone)."""
        try:
            if isinstance(begun, ExistingLease):
                return await self._already(lease, begun.lease)
            successor = await self._successor(lease)
            if successor is not None:
                return await self._already(lease, successor)
        except KeyferryError as error:
            return error
        return InvalidRequest(
            field,
            f"lease {lease.id} is {begun.lease.state}; only an active lease can be rotated",
        )

    async def _decide_all(
        self, operator: Operator, leases: list[LeaseRecord], request_id: str
    ) -> None:
        """Cedar decides `rotate` on every lease, each decision recorded (one group commit
        for the lot); the first denied, in the order named, is raised."""
        handles = await self._leases.vault_handles([lease.id for lease in leases])
        denied = await asyncio.gather(
            *(self._decide(operator, lease, handles.get(lease.id), request_id) for lease in leases),
            return_exceptions=True,
        )
        for error in denied:
            if isinstance(error, BaseException):
                raise error

    async def _count_revoking(self, lease_ids: list[str]) -> int:
        revoking = frozenset({LeaseState.REVOKING})
        count = 0
        for chunk in _chunks(lease_ids):
            query = LeaseQuery(lease_ids=frozenset(chunk), states=revoking)
            count += len(await self._leases.select_page(query, None, len(chunk)))
        return count

    async def reissue(self, lease: LeaseRecord, grace: timedelta, request_id: str) -> Rotation:
        """The broker's own rotation of a lease it cannot renew any further (not renewable,
        or capped at the role's max TTL): the next generation before this one ends."""
        who = system_principal(REISSUE_JOB)
        grace = min(max(grace, MIN_GRACE), MAX_GRACE)
        return await self._rotate_one(who, "lease_id", lease, grace, request_id)

    def _check_grace(self, grace: timedelta | None) -> timedelta:
        if grace is None:
            return self._grace
        if not MIN_GRACE <= grace <= MAX_GRACE:
            raise InvalidRequest("grace", "must be between 1 second and 24 hours")
        return grace

    async def _decide(
        self,
        operator: Operator,
        lease: LeaseRecord,
        handle: dict[str, Any] | None,
        request_id: str,
    ) -> None:
        vault_lease = VaultLease.model_validate(handle) if handle else None
        await self._gate.require(
            operator,
            Action.ROTATE,
            lease_resource(lease, vault_lease),
            lambda decision: self._audit.decision_on_lease(
                operator_principal(operator), AuditAction.ROTATE, decision, lease, request_id
            ),
            f"no policy permits operator {operator.name!r} to rotate lease {lease.id}",
        )

    async def _rotate_one(
        self,
        who: Principal,
        field: str,
        lease: LeaseRecord,
        grace: timedelta,
        request_id: str,
    ) -> Rotation:
        successor = await self._successor(lease)
        if successor is not None:
            return await self._already(lease, successor)
        if lease.state != LeaseState.ACTIVE:
            raise InvalidRequest(
                field, f"lease {lease.id} is {lease.state}; only an active lease can be rotated"
            )
        role = (await self._catalog.get(lease.role)).spec
        begun = await self._engine.begin_next_generation(lease.id)
        if isinstance(begun, ExistingLease):
            return await self._already(lease, begun.lease)
        revoke_after = self._clock() + grace
        order = IssueOrder(begun.lease, role, who, request_id, retire_after=revoke_after)
        try:
            tracked = await self._engine.issue(order)
        except LeaseStateConflict as conflict:
            # The pod went away while Vault answered: the row is revoking with the new Vault
            # lease recorded, so the Revoker ends it.
            raise InvalidRequest(
                field, f"lease {lease.id}'s pod is going away; not rotated"
            ) from conflict
        record, vault_lease = tracked.lease, tracked.vault_lease
        previous = await self._leases.get(lease.id)
        await self._audit.lease_change(
            who, AuditAction.LEASE_REVOKING, previous, request_id, reason="ROTATED"
        )
        self._hub.publish(record.pod_key, LeaseRotated(record, tracked.credential, vault_lease))
        log.info(
            "lease rotated",
            previous_lease_id=lease.id,
            lease_id=record.id,
            generation=record.generation,
            role=role.name,
            revoke_after=revoke_after.isoformat(),
            request_id=request_id,
        )
        return Rotation(
            previous_lease_id=lease.id,
            lease=record,
            renewable=vault_lease.renewable,
            revoke_after=revoke_after,
            already_rotated=False,
        )

    async def _successor(self, lease: LeaseRecord) -> LeaseRecord | None:
        """The live newer generation, when this lease was rotated already."""
        live = await self._leases.find_live(lease.cluster, lease.pod_uid, lease.credential)
        return live if live is not None and live.generation > lease.generation else None

    async def _already(self, lease: LeaseRecord, successor: LeaseRecord) -> Rotation:
        previous = await self._leases.get(lease.id)
        handle = await self._leases.handle(successor.id)
        renewable = bool(handle.vault_lease and handle.vault_lease.get("renewable"))
        return Rotation(
            previous_lease_id=lease.id,
            lease=successor,
            renewable=renewable,
            revoke_after=previous.revoke_after,
            already_rotated=True,
        )


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]
