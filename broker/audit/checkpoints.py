"""Checkpoints: a chain's record count and head hash at one moment, signed outside the broker.

The signature is over the canonical JSON of the checkpoint (records.canonical_json), so the
count, the head and the chain's name are all covered; a checkpoint cannot be moved to
another count or another chain.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_serializer

from .records import Hash, Name, canonical_json, format_time


class Signer(Protocol):
    """Signs and verifies bytes with a key the broker never holds (Vault transit)."""

    def sign(self, data: bytes) -> str: ...

    def verify(self, data: bytes, signature: str) -> bool: ...


class Checkpoint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    chain: Name
    count: int = Field(ge=0)
    head: Hash
    time: AwareDatetime

    @field_serializer("time")
    def _time(self, value: datetime) -> str:
        return format_time(value)

    def payload(self) -> bytes:
        """The bytes that are signed."""
        return canonical_json(self.model_dump(mode="json"))


class SignedCheckpoint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    checkpoint: Checkpoint
    signature: str = Field(min_length=1, max_length=4096)

    def document(self) -> str:
        return canonical_json(self.model_dump(mode="json")).decode()

    @classmethod
    def from_document(cls, document: str) -> SignedCheckpoint:
        return cls.model_validate_json(document)

    def verify(self, signer: Signer) -> bool:
        return signer.verify(self.checkpoint.payload(), self.signature)


class CheckpointSink(Protocol):
    """Where signed checkpoints are kept, apart from the log they vouch for."""

    def append(self, signed: SignedCheckpoint) -> None: ...

    def list(self, chain: str) -> list[SignedCheckpoint]: ...


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer) -> SignedCheckpoint:
    return SignedCheckpoint(checkpoint=checkpoint, signature=signer.sign(checkpoint.payload()))
