"""One audit chain for several replicas: the chain lives in the lease store (PostgreSQL).

Each replica's file would be a chain of its own, and two chains cannot vouch for one
history. With `audit.sink: store`, a record is sealed on the head the store holds, under
that head row's lock, and kept in the store in the same transaction
(broker.store.audit_chain), so the records of every replica form one chain whose order
is the order of the appends. The replica then writes the record to its own file as well
(`audit.log`: a local copy for log shipping, not a chain on its own). Both are
fail-closed: a record that cannot be kept refuses the request.

Checkpoints work as with the file: the head read from the store, signed by Vault transit.
`keyferry audit verify` reads the chain's records from the store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import Connection

from broker.clock import Clock, utcnow
from broker.errors import AuditUnavailable, StoreUnavailable
from broker.store import AuditChainRepository

from .checkpoints import Checkpoint, CheckpointSink, SignedCheckpoint, Signer, sign_checkpoint
from .log import RecordSink
from .records import GENESIS, AuditEvent, AuditRecord, seal


class StoreChainLog:
    """An AuditLog whose chain is kept in the store; call from a thread (blocking)."""

    def __init__(
        self,
        repository: AuditChainRepository,
        *,
        chain: str = "broker",
        copy: RecordSink | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.chain = chain
        self._repository = repository
        self._copy = copy
        self._clock = clock

    def append(self, event: AuditEvent) -> AuditRecord:
        """Seal on the store's head and keep the record; AuditUnavailable if not kept."""
        return self.append_all([event])[0]

    def append_all(self, events: Sequence[AuditEvent]) -> list[AuditRecord]:
        """Seal the events in order on the store's head and keep them in one transaction."""
        now = self._clock()

        def sealer(event: AuditEvent) -> Callable[[int, str], AuditRecord]:
            return lambda count, head: seal(event, count, head, now)

        try:
            records = self._repository.append_all(
                self.chain, GENESIS, [sealer(event) for event in events]
            )
        except StoreUnavailable as exc:
            raise AuditUnavailable(
                f"the audit chain in the store did not take the record: {exc.message}"
            ) from exc
        if self._copy is not None:
            self._copy.write(b"".join(record.line() for record in records))
        return records

    def append_on(self, connection: Connection, events: Sequence[AuditEvent]) -> list[AuditRecord]:
        """Seal and keep the events inside a store transaction the caller holds (a lease's
        lifecycle step): the change and its records commit together or not at all. The
        local copy is written before that commit, so a commit that then fails leaves a
        line in the copy that the chain does not have (the copy is not a chain)."""
        now = self._clock()

        def sealer(event: AuditEvent) -> Callable[[int, str], AuditRecord]:
            return lambda count, head: seal(event, count, head, now)

        records = self._repository.append_on(
            connection, self.chain, GENESIS, [sealer(event) for event in events]
        )
        if self._copy is not None:
            self._copy.write(b"".join(record.line() for record in records))
        return records

    def head(self) -> Checkpoint:
        try:
            found = self._repository.head(self.chain)
        except StoreUnavailable as exc:
            raise AuditUnavailable(f"the audit chain's head is unreadable: {exc.message}") from exc
        count, head = found if found is not None else (0, GENESIS)
        return Checkpoint(chain=self.chain, count=count, head=head, time=self._clock())

    def checkpoint(self, signer: Signer, sink: CheckpointSink) -> SignedCheckpoint:
        signed = sign_checkpoint(self.head(), signer)
        sink.append(signed)
        return signed

    def lines(self) -> list[str]:
        """The chain's records as log lines, for verify."""
        return self._repository.lines(self.chain)
