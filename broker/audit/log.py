"""The audit log: seals events into the chain and writes each before returning it."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

from pydantic import ValidationError

from broker.clock import Clock, utcnow
from broker.errors import AuditUnavailable

from .checkpoints import Checkpoint, CheckpointSink, SignedCheckpoint, Signer, sign_checkpoint
from .records import GENESIS, AuditEvent, AuditRecord, parse_line, seal


class RecordSink(Protocol):
    def write(self, line: bytes) -> None: ...

    def last_line(self) -> bytes | None: ...


class AuditChain(Protocol):
    """What the broker writes to: one chain, in a file (AuditLog) or in the store
    (shared.StoreChainLog, several replicas)."""

    chain: str

    def append(self, event: AuditEvent) -> AuditRecord: ...

    def append_all(self, events: Sequence[AuditEvent]) -> list[AuditRecord]: ...

    def head(self) -> Checkpoint: ...

    def checkpoint(self, signer: Signer, sink: CheckpointSink) -> SignedCheckpoint: ...


class AuditLog:
    """One chain. Appends are serialised by a lock and block on fsync: call from a thread.

    A log reopened on an existing file continues its chain from the file's last record.
    """

    def __init__(self, sink: RecordSink, *, chain: str = "broker", clock: Clock = utcnow) -> None:
        self.chain = chain
        self._sink = sink
        self._clock = clock
        self._lock = threading.Lock()
        self._count, self._head = _resume(sink)

    def append(self, event: AuditEvent) -> AuditRecord:
        """Seal and write the record; AuditUnavailable (refuse the request) if it is not written."""
        with self._lock:
            record = seal(event, self._count, self._head, self._clock())
            self._sink.write(record.line())
            self._count += 1
            self._head = record.hash
            return record

    def append_all(self, events: Sequence[AuditEvent]) -> list[AuditRecord]:
        """Seal the events in order and write them with one write and one fsync (a group
        commit); all or none are written, AuditUnavailable if none is."""
        with self._lock:
            records: list[AuditRecord] = []
            count, head = self._count, self._head
            for event in events:
                record = seal(event, count, head, self._clock())
                records.append(record)
                count, head = count + 1, record.hash
            self._sink.write(b"".join(record.line() for record in records))
            self._count, self._head = count, head
            return records

    def head(self) -> Checkpoint:
        """The chain as it stands: record count and the last record's hash."""
        with self._lock:
            return Checkpoint(
                chain=self.chain, count=self._count, head=self._head, time=self._clock()
            )

    def checkpoint(self, signer: Signer, sink: CheckpointSink) -> SignedCheckpoint:
        """Sign the current head and keep it in the checkpoint sink."""
        signed = sign_checkpoint(self.head(), signer)
        sink.append(signed)
        return signed


def _resume(sink: RecordSink) -> tuple[int, str]:
    last = sink.last_line()
    if last is None:
        return 0, GENESIS
    try:
        record = parse_line(last)
    except (ValueError, ValidationError) as exc:
        raise AuditUnavailable(
            "the audit log's last line is not a record; the chain cannot continue from it. "
            "Run `keyferry audit verify` on the file"
        ) from exc
    return record.seq + 1, record.hash
