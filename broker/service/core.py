"""The services every flow shares, built once in runtime.py in dependency order (the store
and its runner, the audit trail, the clock, the policy gate, then the lease engine on
them) and handed to each flow whole, so a flow's constructor names only what is its own."""

from __future__ import annotations

from dataclasses import dataclass

from broker.clock import Clock
from broker.store import AsyncStore

from .common.audit_trail import AuditTrail
from .common.gate import PolicyGate
from .engine.lease_engine import LeaseEngine


@dataclass(frozen=True)
class Core:
    store: AsyncStore
    audit: AuditTrail
    clock: Clock
    gate: PolicyGate
    engine: LeaseEngine
