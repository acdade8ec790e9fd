"""The audit trail: one hash-chained JSON record per decision and state change.

- Records (records.py) carry who, what, where, the decision and its policy ids, and only
  HMAC-SHA256 fingerprints of secret values (fingerprint.py), never the values.
- Each record's hash covers the canonical JSON of the record, which includes the previous
  record's hash and the record's sequence number, so an edit, a drop or a reorder breaks
  the chain where it happened.
- A truncated tail leaves a valid chain; only an outside witness can tell. Checkpoints
  (count + head hash) are signed by Vault transit, whose key never leaves Vault
  (broker/backends/transit.py), and kept in a second sink, the lease store
  (store_sink.py); verify.py compares the log with them.
- Several replicas share one chain kept in the store (shared.py, `audit.sink: store`):
  each append seals on the store's head under that row's lock.
- Fail-closed: AuditLog.append returns only once the record is on disk (fsync); any
  failure raises broker.errors.AuditUnavailable and the request is refused.
"""

from __future__ import annotations

from .actions import AuditAction
from .checkpoints import Checkpoint, CheckpointSink, SignedCheckpoint, Signer, sign_checkpoint
from .fingerprint import Fingerprinter
from .log import AuditChain, AuditLog
from .reading import (
    Activity,
    Counts,
    FileRecords,
    RecordFilter,
    RecordPage,
    RecordSource,
    StoreRecords,
    activity,
    read_page,
)
from .records import (
    GENESIS,
    AuditEvent,
    AuditRecord,
    Decision,
    Principal,
    PrincipalKind,
    canonical_json,
    record_hash,
)
from .shared import StoreChainLog
from .sink import JsonLinesSink, read_log
from .store_sink import StoreCheckpointSink
from .verify import Damage, DamageKind, VerifyReport, verify

__all__ = [
    "GENESIS",
    "Activity",
    "AuditAction",
    "AuditChain",
    "AuditEvent",
    "AuditLog",
    "AuditRecord",
    "Checkpoint",
    "CheckpointSink",
    "Counts",
    "Damage",
    "DamageKind",
    "Decision",
    "FileRecords",
    "Fingerprinter",
    "JsonLinesSink",
    "Principal",
    "PrincipalKind",
    "RecordFilter",
    "RecordPage",
    "RecordSource",
    "SignedCheckpoint",
    "Signer",
    "StoreChainLog",
    "StoreCheckpointSink",
    "StoreRecords",
    "VerifyReport",
    "activity",
    "canonical_json",
    "read_log",
    "read_page",
    "record_hash",
    "sign_checkpoint",
    "verify",
]
