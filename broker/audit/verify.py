"""Checks a log against its own chain and against its signed checkpoints.

What each damage looks like, and how it is named (the first one found is reported, by
record index; `index` is the first record at which verification fails):

- a line that is not a record in canonical form: MALFORMED
- a record whose content no longer matches its hash: EDITED
- a record whose `seq` is ahead of its position: DROPPED (the missing ones were here)
- a record out of order (`seq` behind, or swapped with the next): REORDERED
- a record whose `prev` is not the previous record's hash (one of the two was replaced
  with a freshly hashed record): CHAIN_BROKEN
- fewer records than a signed checkpoint counts: TRUNCATED, at the first missing index
- a self-consistent chain whose record at a signed count is not the signed head (the tail
  was rewritten and rehashed): REWRITTEN, at that record
- a checkpoint whose signature Vault does not confirm: FORGED_CHECKPOINT (no record index)

Records appended after the newest checkpoint are vouched for by the chain alone: cutting
them off is only detectable once a later checkpoint exists. Checkpoint often.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, ValidationError

from .checkpoints import SignedCheckpoint, Signer
from .records import GENESIS, AuditRecord, parse_line


class DamageKind(StrEnum):
    MALFORMED = "malformed"
    EDITED = "edited"
    DROPPED = "dropped"
    REORDERED = "reordered"
    CHAIN_BROKEN = "chain_broken"
    TRUNCATED = "truncated"
    REWRITTEN = "rewritten"
    FORGED_CHECKPOINT = "forged_checkpoint"


class Damage(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: DamageKind
    index: int | None  # the first bad record; None for damage to a checkpoint alone
    detail: str
    checkpoint: int | None = None  # position of the checkpoint involved, if any


class VerifyReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    records: int
    checkpoints_verified: int
    head: str
    damage: Damage | None

    @property
    def ok(self) -> bool:
        return self.damage is None


def verify(
    lines: Iterable[str], checkpoints: Iterable[SignedCheckpoint], signer: Signer
) -> VerifyReport:
    """Verify log lines (without newlines) against the chain's signed checkpoints."""
    records = [_parse(line) for line in lines]
    found: list[Damage] = []
    chain_damage = _walk(records)
    if chain_damage is not None:
        found.append(chain_damage)
    signed = list(checkpoints)
    genuine = [(k, cp) for k, cp in enumerate(signed) if cp.verify(signer)]
    genuine_positions = {k for k, _ in genuine}
    found.extend(
        Damage(
            kind=DamageKind.FORGED_CHECKPOINT,
            index=None,
            checkpoint=k,
            detail=f"checkpoint {k} (count {cp.checkpoint.count}) is not signed by the transit key",
        )
        for k, cp in enumerate(signed)
        if k not in genuine_positions
    )
    checkpoint_damage = _against_checkpoints(records, genuine)
    if checkpoint_damage is not None:
        found.append(checkpoint_damage)
    first = min(found, key=_position, default=None)
    last = records[-1] if records else None
    return VerifyReport(
        records=len(records),
        checkpoints_verified=len(genuine),
        head=GENESIS if last is None else last.hash,
        damage=first,
    )


def _parse(line: str) -> AuditRecord | None:
    try:
        return parse_line(line)
    except (ValueError, ValidationError):
        return None


def _walk(records: Sequence[AuditRecord | None]) -> Damage | None:
    prev = GENESIS
    for i, record in enumerate(records):
        if record is None:
            return Damage(
                kind=DamageKind.MALFORMED, index=i, detail=f"line {i} is not a canonical record"
            )
        if record.computed_hash() != record.hash:
            return Damage(
                kind=DamageKind.EDITED, index=i, detail=f"record {i} does not match its hash"
            )
        if record.seq != i:
            return _out_of_sequence(records, i, record)
        if record.prev != prev:
            return Damage(
                kind=DamageKind.CHAIN_BROKEN,
                index=i,
                detail=f"record {i} does not follow record {i - 1}: one of them was replaced",
            )
        prev = record.hash
    return None


def _out_of_sequence(records: Sequence[AuditRecord | None], i: int, record: AuditRecord) -> Damage:
    following = records[i + 1] if i + 1 < len(records) else None
    if record.seq > i and (following is None or following.seq != i):
        return Damage(
            kind=DamageKind.DROPPED,
            index=i,
            detail=f"records {i} to {record.seq - 1} are missing before this one",
        )
    return Damage(
        kind=DamageKind.REORDERED,
        index=i,
        detail=f"position {i} holds record {record.seq}",
    )


def _against_checkpoints(
    records: Sequence[AuditRecord | None], genuine: Sequence[tuple[int, SignedCheckpoint]]
) -> Damage | None:
    vouched = 0  # records [0, vouched) match a signed head
    for k, signed in sorted(genuine, key=lambda pair: pair[1].checkpoint.count):
        cp = signed.checkpoint
        if cp.count > len(records):
            return Damage(
                kind=DamageKind.TRUNCATED,
                index=len(records),
                checkpoint=k,
                detail=f"a checkpoint signed at {cp.time.isoformat()} counts {cp.count} "
                f"records; the log has {len(records)}",
            )
        at_count = records[cp.count - 1] if cp.count else None
        head = GENESIS if cp.count == 0 else (at_count.hash if at_count else None)
        if head != cp.head:
            return Damage(
                kind=DamageKind.REWRITTEN,
                index=cp.count - 1,
                checkpoint=k,
                detail=f"record {cp.count - 1} is not the head signed at "
                f"{cp.time.isoformat()}; the log changed between records {vouched} "
                f"and {cp.count - 1}",
            )
        vouched = cp.count
    return None


def _position(damage: Damage) -> tuple[float, int]:
    index = float("inf") if damage.index is None else damage.index
    order = list(DamageKind).index(damage.kind)
    return index, order
