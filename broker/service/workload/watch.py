"""Broker.Watch: one pod's stream of lease events, its Acks, and its end at token expiry.

The protocol is written for agent authors in docs/api.md (Broker.Watch). In short:
subscribe to the hub first, then send the snapshot (one LeaseRotated per active lease), so
no change falls between the two; then live events until the caller's token expires, when
the stream ends with TokenExpired and the agent reconnects with a fresh token. Acks
arrive on the same stream and are handled beside it: an Ack of a lease that is gone is
logged, but a malformed lease id or an Ack past the pod's rate limit ends the stream.

An idle stream costs no periodic work: it waits for an event, its overflow, its Acks or
one timer, at the token's end or the next re-check of its pod (limits.watch_recheck),
whichever comes first. The re-check ends the stream when the pod no longer exists with
its UID; it also re-reads the injected clock, which is how tests that move a controlled
clock see the token's end. Each pod, and the replica in all, may hold only so many
streams (limits.pod_watch_streams, limits.replica_watch_streams).

Each lease an event carries a credential for is decided with Cedar `watch` (audited)
before it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from broker import tracing
from broker.audit import AuditAction
from broker.errors import (
    InvalidRequest,
    KeyferryError,
    LimitExceeded,
    PermissionDenied,
    TemporaryError,
    Unauthenticated,
)
from broker.models import VaultLease
from broker.policy import Action, Workload
from broker.store import LeaseRecord, LeaseState, Selector

from ..common.audit_trail import principal_of
from ..common.callers import Callers
from ..common.lease_resource import lease_resource
from ..common.sealing import CredentialSealer
from ..core import Core
from ..events.hub import EventHub, LeaseRotated, StreamOverflowed, Subscription, WatchEvent
from .limits import LeaseCallRates, WatchStreamCaps
from .names import check_lease_id, check_restarted

log = structlog.get_logger("keyferry.watch")
RESTARTED_FOR = "ROTATION"  # pod.restarted's reason: the lease (the rotation) it put in use
FIRST_RECHECK = (0.5, 1.0)  # the first re-check comes after this share of the interval,
# drawn per stream, so streams opened together (a replica's restart) spread their re-checks


@dataclass(frozen=True)
class AckMessage:
    lease_id: str
    generation: int
    restarted: tuple[str, ...] = ()
    """The app containers the agent restarted to put this generation in use."""
    trace: str = ""
    """The W3C traceparent of the agent's span that handled the event ("": untraced)."""


class PodGone(Unauthenticated):
    """The stream's pod was deleted (or replaced) while the stream was open."""


class TokenExpired(Unauthenticated):
    def __init__(self, expired_at: datetime) -> None:
        super().__init__(
            f"the token of this Watch stream expired at {expired_at.isoformat()}; "
            "reconnect with a fresh token (the projected token file is refreshed by the kubelet)"
        )
        self.expired_at = expired_at


@dataclass
class _Session:
    workload: Workload
    expires_at: datetime
    request_id: str
    allowed: dict[str, bool] = field(default_factory=dict)


class WatchFlow:
    def __init__(
        self,
        core: Core,
        *,
        callers: Callers,
        sealer: CredentialSealer,
        hub: EventHub,
        rates: LeaseCallRates,
        streams: WatchStreamCaps,
        recheck: timedelta,
        events_heard: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._callers = callers
        self._gate = core.gate
        self._audit = core.audit
        self._leases = core.store.leases
        self._sealer = sealer
        self._hub = hub
        self._engine = core.engine
        self._rates = rates
        self._streams = streams
        self._recheck = recheck
        self._clock = core.clock
        self._events_heard = events_heard  # the relay's listener (replicas on PostgreSQL)

    async def watch(
        self, token: str, acks: AsyncIterator[AckMessage], request_id: str
    ) -> AsyncIterator[WatchEvent]:
        """The stream's events; raises TokenExpired at the token's end, StreamOverflowed
        when the caller fell behind, and the authentication errors of Issue at open."""
        workload, expires_at = await self._callers.authenticate_until(
            token, refused=self._audit.refusal(AuditAction.WATCH, request_id)
        )
        session = _Session(workload, expires_at, request_id)
        with (
            self._streams.hold(workload),
            self._hub.subscribe(workload.pod_key) as subscription,
        ):
            if self._events_heard is not None:
                await self._events_heard()  # other replicas' changes after the snapshot reach it
            snapshot = await self._snapshot(session)
            acking = asyncio.create_task(self._consume(session, acks))
            log.info(
                "watch opened", pod=workload.pod, pod_uid=workload.pod_uid, leases=len(snapshot)
            )
            try:
                for current in snapshot:
                    with tracing.span("watch push", _event_attributes(current), kind="producer"):
                        stamped = _stamped(current)
                    yield stamped
                async for event in self._live(session, subscription, acking):
                    yield event
            finally:
                acking.cancel()
                # An Ack's error that ended the stream is already on its way out.
                with contextlib.suppress(asyncio.CancelledError, KeyferryError):
                    await acking
                log.info("watch closed", pod=workload.pod, pod_uid=workload.pod_uid)

    async def _live(
        self, session: _Session, subscription: Subscription, acking: asyncio.Task[None]
    ) -> AsyncIterator[WatchEvent]:
        """Live events until the token's end, the pod's, an overflow or a fatal Ack."""
        overflowed = asyncio.ensure_future(subscription.overflowed.wait())
        getting: asyncio.Future[WatchEvent] | None = None
        waiting: set[asyncio.Future[Any]] = {overflowed, acking}
        share = random.uniform(*FIRST_RECHECK)  # noqa: S311 (spreading load, not a secret)
        recheck_at = self._clock() + self._recheck * share
        try:
            while True:
                now = self._clock()
                if now >= session.expires_at:
                    raise TokenExpired(session.expires_at)
                if now >= recheck_at:
                    await self._recheck_pod(session)
                    recheck_at = now + self._recheck
                if getting is None:
                    getting = asyncio.ensure_future(subscription.queue.get())
                    waiting.add(getting)
                wake = min(session.expires_at, recheck_at)
                await asyncio.wait(
                    waiting,
                    timeout=max((wake - now).total_seconds(), 0.0),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if overflowed.done():
                    raise StreamOverflowed(subscription.pod)
                if acking.done():
                    acking.result()  # a fatal Ack ends the stream with its error
                    waiting.discard(acking)  # the caller closed its side: events go on
                if not getting.done():
                    continue
                waiting.discard(getting)
                event, getting = getting.result(), None
                pushed = await self._pushed(session, event)
                if pushed is not None:
                    yield pushed
        finally:
            overflowed.cancel()
            if getting is not None:
                getting.cancel()

    async def _pushed(self, session: _Session, event: WatchEvent) -> WatchEvent | None:
        """The event as it is sent, stamped with its push span (the child of the span that
        published it: a rotation's, a renewal's), or None when Cedar does not let the pod
        watch its lease."""
        with tracing.span(
            "watch push", _event_attributes(event), parent=event.trace or None, kind="producer"
        ):
            if isinstance(event, LeaseRotated) and not await self._may_watch(
                session, event.lease, event.vault_lease
            ):
                return None
            return _stamped(event)

    async def _recheck_pod(self, session: _Session) -> None:
        """PodGone when the stream's pod no longer exists with its UID. A terminating pod
        keeps its stream (its agent may still need its credentials while it shuts down),
        and a member API server that does not answer ends nothing: the next re-check asks
        again."""
        workload = session.workload
        client = self._callers.client(workload.cluster)
        if client is None:
            raise PodGone(
                f"cluster {workload.cluster!r} is no longer registered; its pods' streams end"
            )
        try:
            await client.ensure_pod_bound(workload, allow_terminating=True)
        except Unauthenticated as error:
            raise PodGone(error.message) from error
        except TemporaryError as error:
            log.warning(
                "watch could not re-check its pod", pod_uid=workload.pod_uid, error=error.message
            )

    async def _snapshot(self, session: _Session) -> list[WatchEvent]:
        """One LeaseRotated per active lease of the pod that Cedar lets it watch."""
        workload = session.workload
        selector = Selector(
            cluster=workload.cluster,
            namespace=workload.namespace,
            pod_name=workload.pod,
            states=frozenset({LeaseState.ACTIVE}),
        )
        leases = await self._leases.list_by_selector(selector)
        mine = sorted(
            (lease for lease in leases if lease.pod_uid == workload.pod_uid),
            key=lambda lease: (lease.credential, lease.generation),
        )
        events: list[WatchEvent] = []
        for lease in mine:
            handle = await self._leases.handle(lease.id)
            if handle.vault_lease is None or handle.sealed_credential is None:
                continue
            vault_lease = VaultLease.model_validate(handle.vault_lease)
            if not await self._may_watch(session, lease, vault_lease):
                continue
            credential = self._sealer.unseal_lease(lease, handle.sealed_credential)
            events.append(LeaseRotated(lease, credential, vault_lease))
        if mine and not events and session.allowed and not any(session.allowed.values()):
            raise PermissionDenied(
                f"no policy permits {workload.namespace}/{workload.service_account} in cluster "
                f"{workload.cluster!r} to watch its leases"
            )
        return events

    async def _may_watch(
        self, session: _Session, lease: LeaseRecord, vault_lease: VaultLease
    ) -> bool:
        if lease.id in session.allowed:
            return session.allowed[lease.id]
        decision = await self._gate.decide(
            session.workload,
            Action.WATCH,
            lease_resource(lease, vault_lease),
            lambda decision: self._audit.decision(
                session.workload,
                AuditAction.WATCH,
                decision,
                session.request_id,
                role=lease.role,
                credential=lease.credential,
                lease_id=lease.id,
            ),
        )
        session.allowed[lease.id] = decision.allowed
        return decision.allowed

    async def _consume(self, session: _Session, acks: AsyncIterator[AckMessage]) -> None:
        """Apply each Ack. A malformed lease id or one Ack too many (the pod's rate limit)
        raises, which ends the stream; any other refusal is logged and the stream goes on."""
        async for ack in acks:
            attributes: dict[str, tracing.Attribute | None] = {
                "keyferry.lease_id": ack.lease_id[:64],
                "keyferry.generation": ack.generation,
            }
            with tracing.span("watch ack", attributes, parent=ack.trace or None, kind="consumer"):
                try:
                    await self.ack(session, ack)
                except (InvalidRequest, LimitExceeded):
                    raise
                except KeyferryError as error:
                    log.warning("ack not applied", lease_id=ack.lease_id, error=error.message)

    async def ack(self, session: _Session, ack: AckMessage) -> None:
        """The agent has the new generation in place: revoke the older ones now."""
        workload = session.workload
        self._rates.check(workload, "Ack")
        lease_id = check_lease_id(ack.lease_id, "ack.lease_id")
        restarted = check_restarted(ack.restarted)
        lease = await self._leases.get(lease_id)
        mine = lease.pod_uid == workload.pod_uid and lease.cluster == workload.cluster
        if not mine:
            # The audit trail records it (with the lease's owner); the log needs no line.
            await self._audit.not_yours(
                workload, AuditAction.ACK, lease, "NOT_FOUND", session.request_id
            )
            return
        if lease.generation != ack.generation or lease.state != LeaseState.ACTIVE:
            log.info(
                "ack ignored",
                lease_id=lease_id,
                generation=ack.generation,
                pod_uid=workload.pod_uid,
            )
            return
        await self._audit.lease(workload, AuditAction.LEASE_ACKED, lease, session.request_id)
        for container in restarted:
            await self._audit.lease(
                workload,
                AuditAction.POD_RESTARTED,
                lease,
                session.request_id,
                reason=RESTARTED_FOR,
                target=container,
            )
        selector = Selector(
            cluster=lease.cluster,
            namespace=lease.namespace,
            pod_name=lease.pod_name,
            states=frozenset({LeaseState.REVOKING}),
        )
        older = [
            old
            for old in await self._leases.list_by_selector(selector)
            if old.pod_uid == lease.pod_uid
            and old.credential == lease.credential
            and old.generation < lease.generation
        ]
        for old in older:
            await self._engine.revoke_now(old, principal_of(workload), session.request_id)


def _event_attributes(event: WatchEvent) -> dict[str, str | int | None]:
    """What a push span says of its event: its kind, lease and generation (no credential)."""
    if isinstance(event, LeaseRotated):
        return {
            "keyferry.event": "rotated",
            "keyferry.lease_id": event.lease.id,
            "keyferry.generation": event.lease.generation,
        }
    return {
        "keyferry.event": type(event).__name__.removeprefix("Lease").lower(),
        "keyferry.lease_id": event.lease_id,
    }


def _stamped(event: WatchEvent) -> WatchEvent:
    """The event carrying the current (push) span to the agent; unchanged when untraced."""
    here = tracing.traceparent()
    return replace(event, trace=here) if here else event
