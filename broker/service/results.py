"""What the broker's flows return to the server, which converts them for the wire."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from broker.models import Credential
from broker.store import LeaseRecord


class IssuedLease(BaseModel):
    """A live lease and its credential; `replayed` when an earlier Issue created it."""

    model_config = ConfigDict(frozen=True)

    lease: LeaseRecord
    credential: Credential
    renewable: bool
    replayed: bool
