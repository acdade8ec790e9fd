"""The audit trail on real servers: checkpoints signed and verified by the bed's Vault transit,
kept in a real lease store; every kind of tampering found; writes fail closed."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
from pydantic import SecretStr
from sqlalchemy import text

from broker.audit import (
    AuditAction,
    AuditEvent,
    AuditLog,
    Checkpoint,
    DamageKind,
    Decision,
    Fingerprinter,
    JsonLinesSink,
    Principal,
    PrincipalKind,
    SignedCheckpoint,
    StoreChainLog,
    StoreCheckpointSink,
    canonical_json,
    read_log,
    record_hash,
    verify,
)
from broker.backends.transit import TransitSigner
from broker.errors import AuditUnavailable, StoreUnavailable, Unauthenticated, VaultUnavailable
from broker.service import CALLER_PEER
from broker.service.common.audit_trail import AuditTrail
from broker.store import (
    LeaseRecord,
    LeaseRequest,
    LeaseState,
    PendingLease,
    Recorded,
    Store,
    StoreSettings,
)
from tests.bed.ports import free_port
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.scene.engines import enable
from tests.scene.stores import TickingClock, postgres_database, sqlite_url

MOUNT = "kf-audit-transit"
KEY = "audit-checkpoints"
POLICY = f"""
path "{MOUNT}/sign/{KEY}" {{ capabilities = ["update"] }}
path "{MOUNT}/verify/{KEY}" {{ capabilities = ["update"] }}
"""
CHAIN = "broker-0"
WORKLOAD = Principal(kind=PrincipalKind.WORKLOAD, name="prod-a/orders/api")
FINGERPRINTS = Fingerprinter(SecretStr("audit-hmac-key-for-tests-0123456789abcdef"))


@pytest.fixture(scope="module")
def signer_client(vault: VaultServer) -> hvac.Client:
    """A transit key, and a client whose token may only sign and verify with it: the
    broker's policy."""
    root = vault.client()
    enable(root, "transit", MOUNT)
    root.secrets.transit.create_key(name=KEY, key_type="ed25519", mount_point=MOUNT)
    root.sys.create_or_update_policy(name="kf-audit-signer", policy=POLICY)
    token = root.auth.token.create(policies=["kf-audit-signer"], ttl="1h")["auth"]["client_token"]
    return vault.client(token)


@pytest.fixture(scope="module")
def transit(signer_client: hvac.Client) -> TransitSigner:
    return TransitSigner(signer_client, KEY, MOUNT)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    the_store = Store.open(StoreSettings(url=SecretStr(sqlite_url(tmp_path))))
    yield the_store
    the_store.close()


@pytest.fixture
def checkpoints(store: Store) -> StoreCheckpointSink:
    return StoreCheckpointSink(store.checkpoints)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


def events(count: int, password: str = "") -> Iterator[AuditEvent]:
    """Decisions and state changes as the broker records them."""
    for i in range(count):
        lease = f"lease-{i // 3}"
        if i % 3 == 0:
            yield AuditEvent(
                who=WORKLOAD,
                action="issue",
                decision=Decision.DENY if i % 2 else Decision.ALLOW,
                policy_ids=("permit-orders", "forbid-prod-admin"),
                cluster="prod-a",
                namespace="orders",
                pod="api-7f9",
                pod_uid="5f1c-uid",
                role="orders-db-ro",
                credential="db",
                request_id=f"req-{i}",
            )
        elif i % 3 == 1:
            yield AuditEvent(who=WORKLOAD, action="lease.pending", lease_id=lease, generation=1)
        else:
            yield AuditEvent(
                who=WORKLOAD,
                action="lease.active",
                lease_id=lease,
                vault_request_id=f"vault-req-{i}",
                fingerprints={"password": FINGERPRINTS.fingerprint(password or f"pw-{i}")},
            )


def write_log(path: Path, count: int, clock: TickingClock | None = None) -> AuditLog:
    log = AuditLog(JsonLinesSink(path), chain=CHAIN, clock=clock or TickingClock())
    for event in events(count):
        log.append(event)
    return log


# -- a clean log ---------------------------------------------------------------------------------


def test_a_clean_log_verifies_against_its_signed_checkpoints(
    log_path: Path, transit: TransitSigner, checkpoints: StoreCheckpointSink
) -> None:
    log = write_log(log_path, 6)
    log.checkpoint(transit, checkpoints)
    for event in events(3):
        log.append(event)
    log.checkpoint(transit, checkpoints)

    report = verify(read_log(log_path), checkpoints.list(CHAIN), transit)
    assert report.ok, report.damage
    assert report.records == 9
    assert report.checkpoints_verified == 2
    assert report.head == log.head().head


def test_a_reopened_log_continues_its_chain(
    log_path: Path, transit: TransitSigner, checkpoints: StoreCheckpointSink
) -> None:
    write_log(log_path, 4).checkpoint(transit, checkpoints)
    reopened = AuditLog(JsonLinesSink(log_path), chain=CHAIN, clock=TickingClock())
    assert reopened.head().count == 4
    assert reopened.append(next(events(1))).seq == 4
    reopened.checkpoint(transit, checkpoints)
    assert verify(read_log(log_path), checkpoints.list(CHAIN), transit).ok


def test_an_empty_log_verifies(log_path: Path, transit: TransitSigner) -> None:
    report = verify([], [], transit)
    assert report.ok
    assert report.records == 0


# -- tampering -------------------------------------------------------------------------------


def rehash_from(lines: list[str], start: int) -> list[str]:
    """What a careful forger does after a change: recompute every hash from `start` on."""
    out = lines[:start]
    prev = json.loads(out[-1])["hash"] if out else "0" * 64
    for line in lines[start:]:
        body = json.loads(line)
        body["prev"] = prev
        body.pop("hash")
        body["hash"] = prev = record_hash(body)
        out.append(canonical_json(body).decode())
    return out


def edit(lines: list[str], index: int, **fields: object) -> list[str]:
    body = json.loads(lines[index])
    body.update(fields)
    return [*lines[:index], canonical_json(body).decode(), *lines[index + 1 :]]


Tamper = Callable[[list[str]], list[str]]
TAMPERING: dict[str, tuple[Tamper, DamageKind, int]] = {
    # a denied request turned into an allowed one; its hash left as it was
    "edit": (lambda ls: edit(ls, 3, decision="allow"), DamageKind.EDITED, 3),
    "drop": (lambda ls: ls[:4] + ls[5:], DamageKind.DROPPED, 4),
    "reorder": (lambda ls: [*ls[:2], ls[3], ls[2], *ls[4:]], DamageKind.REORDERED, 2),
    "truncate tail": (lambda ls: ls[:7], DamageKind.TRUNCATED, 7),
    "edit, rehash one": (
        lambda ls: rehash_from(edit(ls, 3, decision="allow"), 3)[:4] + ls[4:],
        DamageKind.CHAIN_BROKEN,
        4,
    ),
    "edit, rehash the rest": (
        lambda ls: rehash_from(edit(ls, 3, decision="allow"), 3),
        DamageKind.REWRITTEN,
        5,  # the first checkpoint counts 6 records: record 5 is the head it signed
    ),
    "torn line": (lambda ls: [*ls[:6], ls[6][:40], *ls[7:]], DamageKind.MALFORMED, 6),
    "reformatted line": (
        lambda ls: [*ls[:1], json.dumps(json.loads(ls[1]), indent=1), *ls[2:]],
        DamageKind.MALFORMED,
        1,
    ),
}


@pytest.mark.parametrize("name", list(TAMPERING))
def test_tampering_is_found_at_the_first_bad_record(
    name: str, log_path: Path, transit: TransitSigner, checkpoints: StoreCheckpointSink
) -> None:
    log = write_log(log_path, 6)
    log.checkpoint(transit, checkpoints)
    for event in events(4):
        log.append(event)
    log.checkpoint(transit, checkpoints)
    lines = read_log(log_path)
    assert len(lines) == 10
    tamper, kind, index = TAMPERING[name]

    report = verify(tamper(lines), checkpoints.list(CHAIN), transit)

    assert report.damage is not None, name
    assert (report.damage.kind, report.damage.index) == (kind, index), report.damage.detail


def test_a_truncated_file_on_disk_is_found(
    log_path: Path, transit: TransitSigner, checkpoints: StoreCheckpointSink
) -> None:
    write_log(log_path, 8).checkpoint(transit, checkpoints)
    data = log_path.read_bytes()
    cut = data.rstrip(b"\n").rsplit(b"\n", 2)[0] + b"\n"  # the last two records gone
    log_path.write_bytes(cut)

    report = verify(read_log(log_path), checkpoints.list(CHAIN), transit)
    assert report.damage is not None
    assert (report.damage.kind, report.damage.index) == (DamageKind.TRUNCATED, 6)


# -- checkpoints and Vault transit ---------------------------------------------------------------


def test_a_checkpoint_is_signed_by_vault_and_a_forged_one_is_refused(
    vault: VaultServer, log_path: Path, transit: TransitSigner, checkpoints: StoreCheckpointSink
) -> None:
    log = write_log(log_path, 5)
    signed = log.checkpoint(transit, checkpoints)
    assert signed.signature.startswith("vault:v1:")
    assert signed.verify(transit)
    assert checkpoints.list(CHAIN) == [signed]

    cp = signed.checkpoint
    more = cp.model_copy(update={"count": cp.count + 3})
    other_head = cp.model_copy(update={"head": "f" * 64})
    other_chain = cp.model_copy(update={"chain": "broker-1"})
    for moved in (more, other_head, other_chain):
        assert not SignedCheckpoint(checkpoint=moved, signature=signed.signature).verify(transit)

    root = vault.client()
    root.secrets.transit.create_key(name="impostor", key_type="ed25519", mount_point=MOUNT)
    impostor = TransitSigner(root, "impostor", MOUNT)
    by_impostor = SignedCheckpoint(checkpoint=more, signature=impostor.sign(more.payload()))
    assert by_impostor.verify(impostor)
    assert not by_impostor.verify(transit)
    garbage = SignedCheckpoint(checkpoint=cp, signature="vault:v1:" + "A" * 88)
    assert not garbage.verify(transit)
    assert not SignedCheckpoint(checkpoint=cp, signature="not-a-signature").verify(transit)


def test_a_forged_checkpoint_is_reported_and_cannot_fake_a_truncation(
    log_path: Path, transit: TransitSigner, checkpoints: StoreCheckpointSink
) -> None:
    log = write_log(log_path, 4)
    genuine = log.checkpoint(transit, checkpoints)
    claim = Checkpoint(chain=CHAIN, count=40, head="e" * 64, time=genuine.checkpoint.time)
    forged = SignedCheckpoint(checkpoint=claim, signature=genuine.signature)

    report = verify(read_log(log_path), [genuine, forged], transit)

    assert report.checkpoints_verified == 1
    assert report.damage is not None
    assert report.damage.kind is DamageKind.FORGED_CHECKPOINT
    assert report.damage.checkpoint == 1
    assert report.damage.index is None


def test_the_signing_key_never_leaves_vault(vault: VaultServer, signer_client: hvac.Client) -> None:
    with pytest.raises(hvac.exceptions.InvalidRequest):
        vault.client().secrets.transit.export_key(
            name=KEY, key_type="signing-key", mount_point=MOUNT
        )
    with pytest.raises(hvac.exceptions.Forbidden):  # the broker's token signs and verifies only
        signer_client.secrets.transit.read_key(name=KEY, mount_point=MOUNT)


def test_an_unreachable_vault_is_vault_unavailable() -> None:
    signer = TransitSigner(hvac.Client(url=f"http://127.0.0.1:{free_port()}", timeout=2), KEY)
    with pytest.raises(VaultUnavailable):
        signer.sign(b"checkpoint")
    with pytest.raises(VaultUnavailable):
        signer.verify(b"checkpoint", "vault:v1:AAAA")


# -- fail-closed -------------------------------------------------------------------------------


def test_an_unwritable_log_refuses_the_append(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    log = AuditLog(JsonLinesSink(folder / "audit.jsonl"), chain=CHAIN)
    folder.rmdir()
    folder.write_text("a file where the log's folder should be")
    with pytest.raises(AuditUnavailable) as refused:
        log.append(next(events(1)))
    assert refused.value.reason == "AUDIT_UNAVAILABLE"
    assert isinstance(refused.value.__cause__, OSError)
    assert log.head().count == 0


def test_an_unreadable_log_stops_the_broker_from_starting(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log's folder should be")
    with pytest.raises(AuditUnavailable):
        AuditLog(JsonLinesSink(blocker / "audit.jsonl"), chain=CHAIN)


def test_a_full_disk_refuses_the_append_and_the_chain_does_not_advance() -> None:
    log = AuditLog(JsonLinesSink(Path("/dev/full")), chain=CHAIN)
    with pytest.raises(AuditUnavailable):
        log.append(next(events(1)))
    with pytest.raises(AuditUnavailable):
        log.append(next(events(1)))
    assert log.head().count == 0


def test_after_a_failed_append_the_chain_continues_cleanly(
    tmp_path: Path, transit: TransitSigner, checkpoints: StoreCheckpointSink
) -> None:
    folder = tmp_path / "later"
    path = folder / "audit.jsonl"
    log = AuditLog(JsonLinesSink(path), chain=CHAIN, clock=TickingClock())
    with pytest.raises(AuditUnavailable):
        log.append(next(events(1)))
    folder.mkdir()  # the volume is back
    for event in events(3):
        log.append(event)
    log.checkpoint(transit, checkpoints)
    report = verify(read_log(path), checkpoints.list(CHAIN), transit)
    assert report.ok, report.damage
    assert report.records == 3


def test_a_log_ending_in_a_partial_record_does_not_resume(log_path: Path) -> None:
    write_log(log_path, 3)
    with log_path.open("ab") as handle:
        handle.write(b'{"action":"iss')
    with pytest.raises(AuditUnavailable):
        AuditLog(JsonLinesSink(log_path), chain=CHAIN)


def test_the_log_holds_fingerprints_never_the_secret(log_path: Path) -> None:
    password = secrets.token_urlsafe(24)
    log = AuditLog(JsonLinesSink(log_path), chain=CHAIN)
    for event in events(3, password=password):
        log.append(event)
    data = log_path.read_text()
    assert password not in data
    assert FINGERPRINTS.fingerprint(password) in data
    assert oct(log_path.stat().st_mode & 0o777) == oct(0o600)


# -- one chain in the store, for several replicas ----------------------------------------------


def test_two_writers_on_postgresql_make_one_chain_that_verifies(
    postgres: PostgresServer, tmp_path: Path, transit: TransitSigner
) -> None:
    """Two stores (two replicas' engines) append at once; the records form one chain, each
    writer's copy file holds exactly what it wrote, and tampering in the store is found."""
    with postgres_database(postgres) as dsn:
        stores = [Store.open(StoreSettings(url=SecretStr(dsn))) for _ in range(2)]
        try:
            logs = [
                StoreChainLog(
                    store.audit_chain, chain=CHAIN, copy=JsonLinesSink(tmp_path / f"copy-{i}")
                )
                for i, store in enumerate(stores)
            ]
            per_writer = 40

            def write(log: StoreChainLog) -> list[int]:
                return [log.append(event).seq for event in events(per_writer)]

            with ThreadPoolExecutor(8) as pool:
                written = list(pool.map(write, [logs[0], logs[1], logs[0], logs[1]]))
            seqs = sorted(seq for batch in written for seq in batch)
            assert seqs == list(range(4 * per_writer))  # no sequence number sealed twice
            sink = StoreCheckpointSink(stores[1].checkpoints)
            signed = logs[1].checkpoint(transit, sink)
            assert signed.checkpoint.count == 4 * per_writer
            lines = logs[0].lines()
            report = verify(lines, sink.list(CHAIN), transit)
            assert report.ok, report.damage
            assert (report.records, report.checkpoints_verified) == (4 * per_writer, 1)
            copies = sorted(line for i in range(2) for line in read_log(tmp_path / f"copy-{i}"))
            assert copies == sorted(lines)

            with stores[0].engine.begin() as conn:
                conn.execute(
                    text("DELETE FROM audit_records WHERE chain = :c AND seq = 7"), {"c": CHAIN}
                )
            damaged = verify(logs[0].lines(), sink.list(CHAIN), transit)
            assert damaged.damage is not None
            assert damaged.damage.kind == DamageKind.DROPPED
            assert damaged.damage.index == 7
        finally:
            for store in stores:
                store.close()


def test_the_store_chain_refuses_the_append_when_the_store_is_gone(tmp_path: Path) -> None:
    store = Store.open(StoreSettings(url=SecretStr(sqlite_url(tmp_path))))
    log = StoreChainLog(store.audit_chain, chain=CHAIN)
    log.append(next(events(1)))
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE audit_heads"))
    try:
        with pytest.raises(AuditUnavailable, match="audit chain in the store"):
            log.append(next(events(1)))
    finally:
        store.close()


# -- group commit (the broker's AuditTrail) -----------------------------------------------------


class CountingSink(JsonLinesSink):
    """The real file sink, counting its writes (each one write and one fsync)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes = 0

    def write(self, line: bytes) -> None:
        self.writes += 1
        super().write(line)


def test_append_all_writes_the_records_in_order_as_one_write(
    log_path: Path, transit: TransitSigner, checkpoints: StoreCheckpointSink
) -> None:
    sink = CountingSink(log_path)
    log = AuditLog(sink, chain=CHAIN, clock=TickingClock())
    log.append(next(events(1)))
    records = log.append_all(list(events(5)))
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert sink.writes == 2
    assert log.head().count == 6
    log.checkpoint(transit, checkpoints)
    report = verify(read_log(log_path), checkpoints.list(CHAIN), transit)
    assert report.ok, report.damage
    assert report.head == records[-1].hash


async def test_concurrent_records_are_group_committed_and_each_waits_for_its_own(
    log_path: Path, transit: TransitSigner, checkpoints: StoreCheckpointSink
) -> None:
    sink = CountingSink(log_path)
    trail = AuditTrail(AuditLog(sink, chain=CHAIN, clock=TickingClock()), FINGERPRINTS)
    try:
        batch = list(events(30))
        await asyncio.gather(*(trail.record(event) for event in batch))
        # Every record is on disk when its call returns, in the order the calls came.
        lines = read_log(log_path)
        written = [json.loads(line) for line in lines]
        assert [(w["action"], w["lease_id"], w["request_id"]) for w in written] == [
            (e.action, e.lease_id, e.request_id) for e in batch
        ]
        assert sink.writes < len(batch)
        await trail.record(next(events(1)))
        assert len(read_log(log_path)) == len(batch) + 1
    finally:
        trail.close()
    trail.log.checkpoint(transit, checkpoints)
    report = verify(read_log(log_path), checkpoints.list(CHAIN), transit)
    assert report.ok, report.damage


async def test_a_failed_group_write_refuses_every_caller_of_its_batch(tmp_path: Path) -> None:
    folder = tmp_path / "later"
    path = folder / "audit.jsonl"
    trail = AuditTrail(
        AuditLog(JsonLinesSink(path), chain=CHAIN, clock=TickingClock()), FINGERPRINTS
    )
    try:
        outcomes = await asyncio.gather(
            *(trail.record(event) for event in events(5)), return_exceptions=True
        )
        assert all(isinstance(o, AuditUnavailable) for o in outcomes), outcomes
        assert trail.log.head().count == 0
        folder.mkdir()  # the volume is back: the next batch starts a clean chain
        await asyncio.gather(*(trail.record(event) for event in events(3)))
    finally:
        trail.close()
    assert [json.loads(line)["seq"] for line in read_log(path)] == [0, 1, 2]


# -- refusals: the first of a kind at once, the rest counted into one summary ---------------------


async def test_a_flood_of_refusals_is_one_record_at_once_and_one_summary_per_kind(
    log_path: Path, transit: TransitSigner, checkpoints: StoreCheckpointSink
) -> None:
    sink = CountingSink(log_path)
    trail = AuditTrail(AuditLog(sink, chain=CHAIN, clock=TickingClock()), FINGERPRINTS)
    junk = Unauthenticated("token key id 'x' is not a key of cluster 'a'")
    try:
        CALLER_PEER.set("ipv4:10.1.2.3:40001")
        for n in range(200):
            await trail.refusal(AuditAction.ISSUE, f"request-{n}")(junk, None)
        assert len(read_log(log_path)) == 1  # only the first, with its request id
        CALLER_PEER.set("ipv6:[fd00::7]:5000")
        await trail.refusal(AuditAction.ISSUE, "request-other")(junk, None)
        await trail.refusal(AuditAction.ISSUE, "request-other-2")(junk, None)
        assert len(read_log(log_path)) == 2  # another peer is another kind
        await trail.flush_refusals()
        for n in range(5):  # the flood goes on: counted, and written by close()
            await trail.refusal(AuditAction.ISSUE, f"later-{n}")(junk, None)
    finally:
        trail.close()
    written = [json.loads(line) for line in read_log(log_path)]
    shape = [
        (w["peer"], w.get("count"), w["request_id"], w["reason"], w["decision"]) for w in written
    ]
    assert shape == [
        ("ipv4:10.1.2.3", None, "request-0", "TOKEN_INVALID", "deny"),
        ("ipv6:[fd00::7]", None, "request-other", "TOKEN_INVALID", "deny"),
        ("ipv4:10.1.2.3", 199, None, "TOKEN_INVALID", "deny"),
        ("ipv6:[fd00::7]", 1, None, "TOKEN_INVALID", "deny"),
        ("ipv6:[fd00::7]", 5, None, "TOKEN_INVALID", "deny"),
    ]
    assert all(w["who"] == {"kind": "workload", "name": "unauthenticated"} for w in written)
    trail.log.checkpoint(transit, checkpoints)
    report = verify(read_log(log_path), checkpoints.list(CHAIN), transit)
    assert report.ok, report.damage


async def test_counted_refusals_are_summarised_after_the_interval(log_path: Path) -> None:
    trail = AuditTrail(
        AuditLog(JsonLinesSink(log_path), chain=CHAIN, clock=TickingClock()),
        FINGERPRINTS,
        refusal_summary=timedelta(seconds=0.2),
    )
    gone = Unauthenticated("pod orders/app-1 in cluster 'a' no longer exists")
    try:
        for n in range(3):
            await trail.refusal(AuditAction.RENEW, f"r{n}")(gone, None)
        for _ in range(100):
            if len(read_log(log_path)) == 2:
                break
            await asyncio.sleep(0.05)
    finally:
        trail.close()
    assert [json.loads(line).get("count") for line in read_log(log_path)] == [None, 2]


# -- a lease's change and its record in one transaction (audit.sink: store) ------------------


def lease_event(lease: LeaseRecord, action: AuditAction) -> AuditEvent:
    return AuditEvent(
        who=WORKLOAD, action=action, lease_id=lease.id, role=lease.role, pod_uid=lease.pod_uid
    )


def test_on_postgresql_a_lease_change_and_its_record_commit_together(
    postgres: PostgresServer, tmp_path: Path, transit: TransitSigner
) -> None:
    """Replicas complete issues with their `lease.active` records appended inside the
    lifecycle step's transaction while other appends go on: one chain that verifies, one
    record per active lease. Then every append fails (a trigger, as a replica killed
    between the two would): an issue's completion, a revocation mark and a settle are
    rolled back with their records, so the change and its record are both there or neither."""
    with postgres_database(postgres) as dsn:
        stores = [Store.open(StoreSettings(url=SecretStr(dsn), pool_size=4)) for _ in range(2)]
        try:
            logs = [StoreChainLog(store.audit_chain, chain=CHAIN) for store in stores]

            def recorded(log: StoreChainLog, action: AuditAction) -> Recorded:
                return lambda conn, lease: log.append_on(conn, [lease_event(lease, action)])

            def issue(n: int) -> LeaseRecord:
                store, log = stores[n % 2], logs[n % 2]
                pending = store.leases.begin_issue(
                    LeaseRequest(
                        cluster="a",
                        namespace="ns",
                        service_account="sa",
                        pod_name=f"p{n}",
                        pod_uid=f"00000000-0000-0000-0000-{n:012d}",
                        credential="db",
                        role="ro",
                    )
                )
                assert isinstance(pending, PendingLease)
                if n % 3 == 0:  # an append of its own, racing the others for the head
                    log.append(next(events(1)))
                return store.leases.complete_issue(
                    pending.lease.id,
                    f"v-{n}",
                    None,
                    recorded=recorded(log, AuditAction.LEASE_ACTIVE),
                )

            with ThreadPoolExecutor(8) as pool:
                active = list(pool.map(issue, range(24)))
            lines = logs[0].lines()
            sink = StoreCheckpointSink(stores[0].checkpoints)
            logs[0].checkpoint(transit, sink)
            report = verify(lines, sink.list(CHAIN), transit)
            assert report.ok, report.damage
            assert report.records == 24 + 8
            recorded_ids = [json.loads(line).get("lease_id") for line in lines]
            assert sorted(i for i in recorded_ids if i) == sorted(lease.id for lease in active)

            leases = stores[0].leases
            pending = leases.begin_issue(
                LeaseRequest(
                    cluster="a",
                    namespace="ns",
                    service_account="sa",
                    pod_name="late",
                    pod_uid="00000000-0000-0000-0000-999999999999",
                    credential="db",
                    role="ro",
                )
            )
            assert isinstance(pending, PendingLease)
            leases.mark_revoking(active[1].id)
            with stores[0].engine.begin() as conn:
                conn.execute(
                    text(
                        "CREATE FUNCTION kf_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                        "$$ BEGIN RAISE EXCEPTION 'replica killed'; END $$"
                    )
                )
                conn.execute(
                    text(
                        "CREATE TRIGGER kf_refuse BEFORE INSERT ON audit_records "
                        "FOR EACH ROW EXECUTE FUNCTION kf_refuse()"
                    )
                )
            log = logs[0]
            with pytest.raises(StoreUnavailable):
                leases.complete_issue(
                    pending.lease.id,
                    "v-late",
                    None,
                    recorded=recorded(log, AuditAction.LEASE_ACTIVE),
                )
            with pytest.raises(StoreUnavailable):
                leases.mark_revoking(
                    active[0].id, recorded=recorded(log, AuditAction.LEASE_REVOKING)
                )
            with pytest.raises(StoreUnavailable):
                leases.settle_revoked(
                    active[1].id,
                    lambda conn, lease, _: log.append_on(
                        conn, [lease_event(lease, AuditAction.LEASE_REVOKED)]
                    ),
                )
            assert [
                leases.get(i).state for i in (pending.lease.id, active[0].id, active[1].id)
            ] == [
                LeaseState.PENDING,
                LeaseState.ACTIVE,
                LeaseState.REVOKING,
            ]
            assert log.lines() == lines  # nothing half-written
        finally:
            for store in stores:
                store.close()
