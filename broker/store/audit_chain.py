"""The audit chain kept in the store, for several replicas writing one chain.

An append locks the chain's head row (SELECT ... FOR UPDATE on PostgreSQL; SQLite's
BEGIN IMMEDIATE serialises writers anyway), seals the record on the count and hash it
read, inserts the record and moves the head, all in one transaction: two replicas can
never seal two records on the same head. broker.audit builds and checks the records; the
store only keeps their lines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from sqlalchemy import Connection, Executable, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .failures import store_errors
from .schema import AuditHeadRow, AuditRecordRow

PAGE = 1000
ATTEMPTS = 3


class Sealed(Protocol):
    @property
    def hash(self) -> str: ...

    def line(self) -> bytes: ...


S = TypeVar("S", bound=Sealed)


class AuditChainRepository:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def append(self, chain: str, genesis: str, seal: Callable[[int, str], S]) -> S:
        """Seal the next record on the chain's current count and head, and keep it."""
        return self.append_all(chain, genesis, [seal])[0]

    def append_all(
        self, chain: str, genesis: str, seals: Sequence[Callable[[int, str], S]]
    ) -> list[S]:
        """Seal records in order on the chain's head and keep them in one transaction."""
        for _ in range(ATTEMPTS):
            with store_errors("appending an audit record"):
                try:
                    with self._sessions.begin() as session:
                        head = session.get(AuditHeadRow, chain, with_for_update=True)
                        if head is None:  # the chain's first record; a racing insert retries
                            head = AuditHeadRow(chain=chain, record_count=0, head_hash=genesis)
                            session.add(head)
                            session.flush()
                        sealed_all = []
                        for seal in seals:
                            sealed = seal(head.record_count, head.head_hash)
                            line = sealed.line().decode().removesuffix("\n")
                            session.add(
                                AuditRecordRow(chain=chain, seq=head.record_count, line=line)
                            )
                            head.record_count += 1
                            head.head_hash = sealed.hash
                            sealed_all.append(sealed)
                except IntegrityError:
                    continue
                return sealed_all
        raise IntegrityError("audit append", None, Exception("the chain's head kept moving"))

    @staticmethod
    def append_on(
        connection: Connection,
        chain: str,
        genesis: str,
        seals: Sequence[Callable[[int, str], S]],
    ) -> list[S]:
        """`append_all` inside a transaction the caller holds (a lease's lifecycle step, so
        the change and its records commit together or not at all). The head row's lock is
        taken last, after the caller's own locks, as every append takes it (a chain's first
        record makes the head row first, waiting for a racing maker); an error rolls the
        caller's change back."""
        locked = (
            select(AuditHeadRow.record_count, AuditHeadRow.head_hash)
            .where(AuditHeadRow.chain == chain)
            .with_for_update()
        )
        found = connection.execute(locked).first()
        if found is None:
            # The chain's first record: make its head row, or wait for the transaction that
            # is making it (no retry can happen here: the caller's change would go with it).
            connection.execute(_insert_head_if_missing(connection, chain, genesis))
            found = connection.execute(locked).one()
        count, head = found[0], found[1]
        sealed_all = []
        for seal in seals:
            sealed = seal(count, head)
            line = sealed.line().decode().removesuffix("\n")
            connection.execute(insert(AuditRecordRow).values(chain=chain, seq=count, line=line))
            count, head = count + 1, sealed.hash
            sealed_all.append(sealed)
        connection.execute(
            update(AuditHeadRow)
            .where(AuditHeadRow.chain == chain)
            .values(record_count=count, head_hash=head)
        )
        return sealed_all

    def head(self, chain: str) -> tuple[int, str] | None:
        """The chain's record count and last hash; None before its first record."""
        with store_errors("reading the audit chain's head"), self._sessions() as session:
            head = session.get(AuditHeadRow, chain)
            return None if head is None else (head.record_count, head.head_hash)

    def lines(self, chain: str) -> list[str]:
        """Every record's line, in sequence order (what `keyferry audit verify` reads)."""
        found: list[str] = []
        after = -1
        with store_errors("reading the audit chain"), self._sessions() as session:
            while True:
                page = session.execute(
                    select(AuditRecordRow.seq, AuditRecordRow.line)
                    .where(AuditRecordRow.chain == chain, AuditRecordRow.seq > after)
                    .order_by(AuditRecordRow.seq)
                    .limit(PAGE)
                ).all()
                found.extend(line for _seq, line in page)
                if len(page) < PAGE:
                    return found
                after = page[-1][0]

    def newest_first(self, chain: str, before: int | None, limit: int) -> list[tuple[int, str]]:
        """Up to `limit` records below sequence number `before` (all when None), newest
        first, as (seq, line): a page of what the admin API's audit reading returns."""
        statement = select(AuditRecordRow.seq, AuditRecordRow.line).where(
            AuditRecordRow.chain == chain
        )
        if before is not None:
            statement = statement.where(AuditRecordRow.seq < before)
        statement = statement.order_by(AuditRecordRow.seq.desc()).limit(limit)
        with store_errors("reading the audit chain"), self._sessions() as session:
            return [(seq, line) for seq, line in session.execute(statement)]


def _insert_head_if_missing(connection: Connection, chain: str, genesis: str) -> Executable:
    """An empty head row for `chain` unless one exists; on PostgreSQL an insert racing
    another transaction's waits for it, then does nothing."""
    dialect_insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
    return (
        dialect_insert(AuditHeadRow)
        .values(chain=chain, record_count=0, head_hash=genesis)
        .on_conflict_do_nothing(index_elements=[AuditHeadRow.chain])
    )
