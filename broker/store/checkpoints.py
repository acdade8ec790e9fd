"""Signed audit checkpoints, kept in the store as the audit trail's second sink.

The store only keeps the documents; broker.audit signs, parses and verifies them.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.clock import Clock, utcnow

from .failures import store_errors
from .records import CheckpointRecord
from .schema import CheckpointRow


class CheckpointRepository:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock = utcnow) -> None:
        self._sessions = sessions
        self._clock = clock

    def add(self, chain: str, record_count: int, head_hash: str, document: str) -> CheckpointRecord:
        with store_errors("saving an audit checkpoint"), self._sessions.begin() as session:
            row = CheckpointRow(
                chain=chain,
                record_count=record_count,
                head_hash=head_hash,
                document=document,
                created_at=self._clock(),
            )
            session.add(row)
            session.flush()
            return CheckpointRecord.model_validate(row)

    def list(self, chain: str) -> list[CheckpointRecord]:
        """Every checkpoint of one audit chain, oldest first."""
        with store_errors("listing audit checkpoints"), self._sessions() as session:
            rows = session.scalars(
                select(CheckpointRow).where(CheckpointRow.chain == chain).order_by(CheckpointRow.id)
            )
            return [CheckpointRecord.model_validate(row) for row in rows]
