"""An in-memory lease store, a fake backend and the shared services around them, for unit
tests of the lease engine and the flows (pending row → Vault → complete → undo): the
fixtures `clock`, `store` and `bench` (exposed to every unit test by conftest.py).

The fake backend stands in for Vault only in unit tests; the bed's integration tests run
the same flows against a real Vault (tests/integration/test_issue.py, test_access.py, ...).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool

from broker.audit import AuditChain, AuditLog, Fingerprinter, JsonLinesSink, StoreChainLog
from broker.backends import Backends
from broker.errors import KeyferryError
from broker.models import (
    BackendKind,
    Credential,
    Ending,
    IssueContext,
    IssuedSecret,
    Lifecycle,
    RoleSpec,
    VaultLease,
    load_roles,
)
from broker.policy import PolicyEngine
from broker.service.common.audit_trail import AuditTrail, system_principal
from broker.service.common.gate import PolicyGate
from broker.service.common.sealing import CredentialSealer
from broker.service.core import Core
from broker.service.engine.lease_engine import IssueOrder, LeaseEngine
from broker.service.engine.revoker import Revoker
from broker.service.events.hub import EventHub
from broker.store import (
    AsyncStore,
    LeaseRecord,
    LeaseRequest,
    LeaseState,
    PendingLease,
    Store,
    StoreRunner,
    upgrade,
)

ROOT = Path(__file__).parents[2]
ROLES = {role.kind: role for role in load_roles(ROOT / "docs" / "examples" / "roles.yaml")}
POLICIES = ROOT / "docs" / "examples" / "policies.cedar"
WHO = system_principal("unit-test")
START = datetime(2030, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class FakeBackend:
    """Issues numbered credentials; remembers what lives "at Vault"; fails on demand."""

    kind: BackendKind
    revocable: bool
    alive: set[str] = field(default_factory=set)
    revoked: list[str] = field(default_factory=list)
    fail_issue: KeyferryError | None = None
    fail_revoke: KeyferryError | None = None
    fail_renew: KeyferryError | None = None
    during_issue: Callable[[IssueContext], None] | None = None
    revoke_gate: asyncio.Event | None = None  # a revoke waits for it (a Vault call in flight)
    reads: int = 0  # issue calls that reached "Vault"

    @property
    def revokes_at_vault(self) -> bool:
        return self.revocable

    def lifecycle(self, role: RoleSpec) -> Lifecycle:
        ends = Ending.REVOKED if self.revocable else Ending.SUPERSEDED
        return Lifecycle(
            renewable=self.revocable, revocable=self.revocable, ends=ends, shared=self.kind == "kv"
        )

    async def issue(self, role: RoleSpec, context: IssueContext) -> IssuedSecret:
        self.reads += 1
        if self.fail_issue is not None:
            raise self.fail_issue
        if self.during_issue is not None:
            self.during_issue(context)
        lease_id = f"keyferry/{self.kind}/creds/{uuid.uuid4().hex}" if self.revocable else ""
        self.alive.add(lease_id)
        lease = VaultLease(
            role=role.name,
            kind=self.kind,
            mount=f"keyferry/{self.kind}",
            lease_id=lease_id,
            renewable=self.revocable,
            ttl=timedelta(minutes=5),
            issued_at=START,
            expires_at=START + timedelta(minutes=5) if self.revocable else None,
        )
        credential = Credential(values={"password": SecretStr(uuid.uuid4().hex)})
        return IssuedSecret(credential=credential, lease=lease)

    async def renew(self, lease: VaultLease, increment: timedelta | None = None) -> VaultLease:
        if self.fail_renew is not None:
            raise self.fail_renew
        return lease.renewed(increment or lease.ttl, START)

    async def revoke(self, lease: VaultLease) -> None:
        if self.revoke_gate is not None:
            await self.revoke_gate.wait()
        if self.fail_revoke is not None:
            raise self.fail_revoke
        self.alive.discard(lease.lease_id)
        self.revoked.append(lease.lease_id)


class FakeBackends:
    def __init__(self) -> None:
        self.database = FakeBackend("database", revocable=True)
        self.kv = FakeBackend("kv", revocable=False)

    def for_role(self, role: RoleSpec) -> FakeBackend:
        return self.database if role.kind == "database" else self.kv

    def for_lease(self, lease: VaultLease) -> FakeBackend:
        return self.database if lease.kind == "database" else self.kv


class FailingOnce:
    """Stands in for one store step: raises `error` once, then calls the real step."""

    def __init__(self, step: Callable[..., Any], error: KeyferryError) -> None:
        self._step, self._error, self.calls = step, error, 0
        self.__name__ = getattr(step, "__name__", "step")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise self._error
        return self._step(*args, **kwargs)


@dataclass
class Bench:
    store: Store
    backends: FakeBackends
    engine: LeaseEngine
    revoker: Revoker
    hub: EventHub
    runner: StoreRunner
    audit: AuditTrail
    audit_path: Path
    clock: Clock
    sealer: CredentialSealer
    core: Core

    def records(self, action: str | None = None) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []  # nothing audited yet
        lines = self.audit_path.read_text().splitlines()
        records = [json.loads(line) for line in lines]
        return [r for r in records if action is None or r["action"] == action]

    def state(self, lease_id: str) -> LeaseState:
        return self.store.leases.get(lease_id).state


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> Iterator[Store]:
    with memory_store(clock) as store:
        yield store


@pytest.fixture
async def bench(store: Store, clock: Clock, tmp_path: Path) -> AsyncIterator[Bench]:
    async with open_bench(store, clock, tmp_path) as bench:
        yield bench


@contextmanager
def memory_store(clock: Clock) -> Iterator[Store]:
    """A migrated in-memory SQLite database: one connection, so one store thread."""
    engine = create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    upgrade(engine)
    store = Store(engine, clock)
    try:
        yield store
    finally:
        store.close()


@asynccontextmanager
async def open_bench(
    store: Store, clock: Clock, tmp_path: Path, *, chain_in_store: bool = False
) -> AsyncIterator[Bench]:
    """The engine, its Revoker and the Core on `store`, as runtime.py builds them;
    `chain_in_store`: the audit chain kept in the store (`audit.sink: store`), the file
    its local copy."""
    runner = StoreRunner(1)
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesSink(path)
    chain: AuditChain = (
        StoreChainLog(store.audit_chain, chain="broker", copy=sink)
        if chain_in_store
        else AuditLog(sink, chain="broker")
    )
    audit = AuditTrail(chain, Fingerprinter(b"k" * 32))
    backends = FakeBackends()
    hub = EventHub()
    sealer = CredentialSealer(b"s" * 32)
    stores = AsyncStore(store, runner)
    revoker = Revoker(
        store=stores,
        backends=cast("Backends", backends),
        audit=audit,
        hub=hub,
        clock=clock,
    )
    engine = LeaseEngine(
        store=stores,
        backends=cast("Backends", backends),
        sealer=sealer,
        audit=audit,
        revoker=revoker,
        clock=clock,
    )
    gate = PolicyGate(PolicyEngine.from_files([POLICIES]))
    core = Core(stores, audit, clock, gate, engine)
    try:
        yield Bench(store, backends, engine, revoker, hub, runner, audit, path, clock, sealer, core)
    finally:
        audit.close()
        sink.close()
        runner.close()


def request(credential: str = "orders-db", role: RoleSpec = ROLES["database"]) -> LeaseRequest:
    return LeaseRequest(
        cluster="a",
        namespace="orders",
        service_account="api",
        pod_name="api-0",
        pod_uid="uid-0",
        credential=credential,
        role=role.name,
    )


async def begun(bench: Bench, role: RoleSpec = ROLES["database"]) -> LeaseRecord:
    result = await bench.engine.begin(request(role=role))
    assert isinstance(result, PendingLease)
    return result.lease


async def issued(bench: Bench, role: RoleSpec = ROLES["database"]) -> LeaseRecord:
    pending = await begun(bench, role)
    return (await bench.engine.issue(IssueOrder(pending, role, WHO, "r-issue"))).lease
