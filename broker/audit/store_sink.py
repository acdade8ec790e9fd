"""The lease store as the checkpoints' sink: a different medium from the log file, and on
PostgreSQL a different machine, so deleting the log's tail does not delete its witness."""

from __future__ import annotations

from broker.store import CheckpointRepository

from .checkpoints import SignedCheckpoint


class StoreCheckpointSink:
    def __init__(self, checkpoints: CheckpointRepository) -> None:
        self._checkpoints = checkpoints

    def append(self, signed: SignedCheckpoint) -> None:
        cp = signed.checkpoint
        self._checkpoints.add(cp.chain, cp.count, cp.head, signed.document())

    def list(self, chain: str) -> list[SignedCheckpoint]:
        """The chain's checkpoints as signed; the row's own columns are not trusted."""
        return [
            SignedCheckpoint.from_document(row.document) for row in self._checkpoints.list(chain)
        ]
