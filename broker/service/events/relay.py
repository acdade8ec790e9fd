"""Watch events across replicas: PostgreSQL NOTIFY out, LISTEN in, each replica's own hub.

A rotation made on one replica must reach the pod's Watch streams wherever they are. The
replica that made a change publishes the event to its hub (hub.py), which delivers it
to its own streams and hands it here: a NOTIFY on `keyferry_events` carrying only what
names the change (pod UID, kind, lease id, reason, expiry, and the sending replica's id),
never a credential. NOTIFY is sent after the store committed the change, so a replica that
hears it reads the change from the store: for a rotation it loads the new lease and
unseals its credential with the sealing key all replicas share.

Only replicas holding a stream of that pod do any work. When the LISTEN connection
breaks, events may have been missed: every stream of this replica is closed as
overflowed (the agent reconnects and its snapshot is current), and the listener
reconnects with backoff. SQLite means one replica: no fan-out, the hub alone.

Any database login can NOTIFY on the channel. So payloads are authenticated (signed.py:
an HMAC under a key the database does not hold), and a receiver trusts only that a replica
sent the note, not what it says: the lease is read from the store, must belong to the
named pod (cluster and pod UID), and must be in the state the event announces; the event
delivered is built from that row (its expiry, its credential). A note that fails any of
this is dropped and counted (`refusals`), never delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import psycopg
import structlog

from broker.errors import KeyferryError, TemporaryError
from broker.models import PodKey, VaultLease
from broker.store import AsyncStore, LeaseNotFound, LeaseRecord, LeaseState, StoreSettings
from broker.store.sessions import Session, open_session, postgres_conninfo

from ..common.sealing import CredentialSealer
from .hub import EventHub, LeaseExpiring, LeaseRenewed, LeaseRevoked, LeaseRotated, WatchEvent
from .signed import EventRefused, EventSigner, Refusal, RefusedEvents

log = structlog.get_logger("keyferry.notify")
CHANNEL = "keyferry_events"
BACKOFF_FIRST, BACKOFF_CAP = 0.5, 10.0
LISTEN_WAIT = 5.0  # seconds a Watch waits for the listener before it is refused, retryable


class EventRelay:
    """Sends this replica's events to the others and delivers theirs to this hub."""

    def __init__(
        self,
        conninfo: str,
        *,
        hub: EventHub,
        store: AsyncStore,
        sealer: CredentialSealer,
        signer: EventSigner,
        timeout: float,
    ) -> None:
        self.replica = uuid.uuid4().hex
        self._signer = signer
        self.refusals = RefusedEvents()
        self._conninfo = conninfo
        self._hub = hub
        self._leases = store.leases
        self._sealer = sealer
        self._timeout = timeout
        self._sender: Session | None = None
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    @classmethod
    def for_store(cls, settings: StoreSettings, **kwargs: Any) -> EventRelay | None:
        """A relay when the store is PostgreSQL; None (one replica, the hub alone) if not."""
        conninfo = postgres_conninfo(settings)
        if conninfo is None:
            return None
        return cls(conninfo, timeout=settings.timeout, **kwargs)

    async def until_listening(self) -> None:
        """Return once this replica hears the others' events; a Watch stream takes its
        snapshot only then, or a change another replica commits between the snapshot and
        the LISTEN (after a start, or during a listener gap) would never reach it."""
        try:
            await asyncio.wait_for(self.listening.wait(), LISTEN_WAIT)
        except TimeoutError:
            raise TemporaryError(
                "this replica is not yet listening for the other replicas' events "
                "(its PostgreSQL listener is connecting): retry the Watch",
                retry_after=1.0,
            ) from None

    def start(self) -> None:
        self._hub.fan_out(self._send_soon)
        self._listener = asyncio.create_task(self._listen(), name="keyferry-event-listener")

    async def stop(self) -> None:
        self._hub.fan_out(None)
        tasks = [*self._tasks, *([self._listener] if self._listener else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._listener = None
        sender, self._sender = self._sender, None
        if sender is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sender.close(), 2.0)

    # -- out -----------------------------------------------------------------------------

    def _send_soon(self, pod: PodKey, event: WatchEvent) -> None:
        """From the hub (on the loop, after the store commit): NOTIFY in order, off the call."""
        where = {"cluster": pod.cluster, "pod_uid": pod.pod_uid}
        payload = self._signer.wrap({"origin": self.replica, **where, **describe_event(event)})
        task = asyncio.create_task(self._send(payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, payload: str) -> None:
        async with self._send_lock:  # FIFO: events leave in the order they were published
            for attempt in range(2):
                try:
                    conn = await self._sender_connection()
                    await asyncio.wait_for(
                        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload)),
                        self._timeout,
                    )
                except (psycopg.Error, TimeoutError, OSError) as error:
                    self._sender = None
                    if attempt:
                        # the other replicas' agents catch up from their snapshot on reconnect
                        log.warning("event not sent to the other replicas", error=str(error)[:200])
                else:
                    return

    async def _sender_connection(self) -> Session:
        if self._sender is None or self._sender.closed:
            self._sender = await open_session(self._conninfo, "keyferry-events-out", self._timeout)
        return self._sender

    # -- in ------------------------------------------------------------------------------

    async def _listen(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            try:
                conn = await open_session(self._conninfo, "keyferry-events-in", self._timeout)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    backoff = BACKOFF_FIRST
                    async for note in conn.notifies():
                        await self._receive(note.payload)
            except (psycopg.Error, TimeoutError, OSError) as error:
                log.warning("event listener lost its connection", error=str(error)[:200])
            if self.listening.is_set():
                self.listening.clear()
                closed = self._hub.resync()
                log.info("streams closed to resync after a listener gap", streams=closed)
            await asyncio.sleep(backoff)
            backoff = min(BACKOFF_CAP, backoff * 2)

    async def _receive(self, payload: str) -> None:
        try:
            note = self._signer.unwrap(payload)
            if note.get("origin") == self.replica:
                return
            pod = PodKey(str(note["cluster"]), str(note["pod_uid"]))
            if pod not in self._hub.watched():
                return
            event = await self._event(pod, note)
        except EventRefused as refused:
            self.refusals.refused(refused)
            return
        except (ValueError, KeyError, TypeError) as error:
            self.refusals.refused(EventRefused(Refusal.UNREADABLE, str(error)[:200]))
            return
        except KeyferryError as error:
            log.warning("event from another replica not delivered", error=error.message)
            return
        if event is not None:
            self._hub.deliver(pod, event)

    async def _event(self, pod: PodKey, note: dict[str, Any]) -> WatchEvent | None:
        """The event as the store shows it: the lease must be the pod's and in the state
        the note announces."""
        kind, lease_id = str(note["kind"]), str(note["lease_id"])
        try:
            lease = await self._leases.get(lease_id)
        except LeaseNotFound:
            raise EventRefused(Refusal.NOT_OWNER, f"no lease {lease_id[:64]!r}") from None
        if lease.pod_key != pod:
            raise EventRefused(
                Refusal.NOT_OWNER, f"lease {lease.id} is not a lease of pod {pod}"[:200]
            )
        if kind == "revoked":
            _announced(lease, kind, lease.state == LeaseState.REVOKED)
            return LeaseRevoked(lease.id, str(note["reason"])[:64])
        if kind in ("expiring", "renewed"):
            _announced(lease, kind, lease.state == LeaseState.ACTIVE)
            assert lease.expires_at is not None  # noqa: S101 (_announced checked it)
            if kind == "expiring":
                return LeaseExpiring(lease.id, lease.expires_at)
            return LeaseRenewed(lease.id, lease.expires_at)
        if kind != "rotated":
            raise EventRefused(Refusal.UNREADABLE, f"unknown kind {kind[:32]!r}")
        handle = await self._leases.handle(lease_id)
        if lease.state != LeaseState.ACTIVE or handle.vault_lease is None:
            return None  # already replaced or ended: the next event says so
        if handle.sealed_credential is None:
            return None
        credential = self._sealer.unseal_lease(lease, handle.sealed_credential)
        return LeaseRotated(lease, credential, VaultLease.model_validate(handle.vault_lease))


def _announced(lease: LeaseRecord, kind: str, holds: bool) -> None:
    """The store shows what a `kind` note announces, or the note is refused as stale."""
    if not holds or (kind != "revoked" and lease.expires_at is None):
        raise EventRefused(
            Refusal.STALE, f"lease {lease.id} is {lease.state.value}; a {kind} note does not fit"
        )


def describe_event(event: WatchEvent) -> dict[str, str]:
    """What names the change, and nothing secret."""
    if isinstance(event, LeaseRotated):
        return {"kind": "rotated", "lease_id": event.lease.id}
    if isinstance(event, LeaseRevoked):
        return {"kind": "revoked", "lease_id": event.lease_id, "reason": event.reason}
    return {
        "kind": "renewed" if isinstance(event, LeaseRenewed) else "expiring",
        "lease_id": event.lease_id,
        "expires_at": event.expires_at.isoformat(),
    }
