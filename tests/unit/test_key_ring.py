"""The sealing key ring (issue 18): the first key seals credentials, MACs rows and signs
event notes; every key of the ring opens and verifies; `keyferry admin reseal` moves every
row to the current key; a ring that lost a key still in use is refused at start, naming
the rows. The bed test is tests/security/test_key_rotation.py."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, text
from sqlalchemy.pool import StaticPool

from broker.models import Credential
from broker.service.common.sealing import (
    VERSION,
    CredentialSealer,
    KeyRetired,
    SealBroken,
    SealingKeysMissing,
    StoreReseal,
    blob_key_id,
    check_ring,
)
from broker.service.events.signed import EventRefused, EventSigner
from broker.settings import SealingSettings
from broker.store import KeyRing, LeaseRequest, PendingLease, RowKeyMissing, RowSigner, Store
from broker.store.migrate import upgrade

K1, K2, K3 = os.urandom(32), os.urandom(32), os.urandom(32)
OLD, ROTATING, NEW = KeyRing.of([K1]), KeyRing.of([K2, K1]), KeyRing.of([K2])
CREDENTIAL = Credential(values={"username": SecretStr("u"), "password": SecretStr("p")})
SPEC = {"backend": "database", "mount": "db", "role": "ro", "ttl": 300}
JWKS = {"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]}
START = datetime(2030, 1, 1, tzinfo=UTC)
UID = "11111111-1111-1111-1111-111111111111"


def test_a_credential_sealed_under_the_old_key_opens_with_the_ring_and_names_its_key() -> None:
    blob = CredentialSealer(OLD).seal("cluster:east", CREDENTIAL)
    assert blob[:1] == VERSION
    assert blob_key_id(blob) == OLD.current.name
    assert CredentialSealer(ROTATING).unseal("cluster:east", blob).reveal() == CREDENTIAL.reveal()
    new = CredentialSealer(ROTATING).seal("cluster:east", CREDENTIAL)
    assert blob_key_id(new) == NEW.current.name
    assert CredentialSealer(KeyRing.of([K1, K2])).unseal("cluster:east", new).reveal()
    with pytest.raises(KeyRetired) as refused:
        CredentialSealer(NEW).unseal("cluster:east", blob)
    assert OLD.current.name in str(refused.value)
    assert "sealing.keys" in str(refused.value)


def test_a_blob_from_before_key_ids_opens_under_any_key_of_the_ring() -> None:
    sealed = CredentialSealer(OLD).seal("cluster:east", CREDENTIAL)
    legacy = b"\x02" + sealed[5:]  # version 0x02: nonce and ciphertext, no key id
    assert CredentialSealer(ROTATING).unseal("cluster:east", legacy).reveal()
    with pytest.raises(SealBroken):
        CredentialSealer(NEW).unseal("cluster:east", legacy)
    resealed = CredentialSealer(ROTATING).reseal("cluster:east", legacy)
    assert resealed is not None
    assert blob_key_id(resealed) == NEW.current.name
    assert CredentialSealer(ROTATING).reseal("cluster:east", resealed) is None


def test_row_macs_are_made_under_the_current_key_and_verified_under_any() -> None:
    old, rotating, new = (RowSigner(r.derive("rows")) for r in (OLD, ROTATING, NEW))
    mac = old.role("ro", SPEC)
    assert len(mac) == 64
    assert mac.startswith(OLD.current.name + ":")
    rotating.check_role("ro", SPEC, mac)
    RowSigner(KeyRing.of([K1, K2]).derive("rows")).check_role("ro", SPEC, rotating.role("ro", SPEC))
    with pytest.raises(RowKeyMissing) as refused:
        new.check_role("ro", SPEC, mac)
    assert "reseal" in str(refused.value)
    assert OLD.current.name in str(refused.value)


def test_a_row_mac_from_before_key_ids_verifies_under_any_key_of_the_ring() -> None:
    import hashlib  # noqa: PLC0415
    import hmac  # noqa: PLC0415

    body = json.dumps(["roles", "ro", SPEC], sort_keys=True, separators=(",", ":"))
    legacy = hmac.new(OLD.derive("rows").current.secret, body.encode(), hashlib.sha256)
    RowSigner(ROTATING.derive("rows")).check_role("ro", SPEC, legacy.hexdigest())


def test_event_notes_signed_under_either_order_of_the_ring_verify_on_the_other() -> None:
    note = {"lease": "l-1", "kind": "revoked"}
    forward, backward = (
        EventSigner(ROTATING.derive("events")),
        EventSigner(KeyRing.of([K1, K2]).derive("events")),
    )
    assert backward.unwrap(forward.wrap(note)) == note
    assert forward.unwrap(backward.wrap(note)) == note
    unkeyed = json.loads(EventSigner(OLD.derive("events")).wrap(note))
    del unkeyed["kid"]  # a replica from before key rings
    assert forward.unwrap(json.dumps(unkeyed)) == note
    with pytest.raises(EventRefused):
        EventSigner(NEW.derive("events")).unwrap(EventSigner(OLD.derive("events")).wrap(note))


def test_settings_take_a_list_or_the_old_single_key_or_a_comma_separated_ring() -> None:
    one, two = (base64.b64encode(k).decode() for k in (K1, K2))
    assert SealingSettings(key=SecretStr(one)).ring_bytes() == [K1]
    assert SealingSettings(key=SecretStr(f"{two}, {one}")).ring_bytes() == [K2, K1]
    listed = SealingSettings(keys=[SecretStr(two), SecretStr(one)])
    assert listed.ring().names == ROTATING.names
    assert listed.key_bytes() == K2
    with pytest.raises(ValueError, match="not both"):
        SealingSettings(key=SecretStr(one), keys=[SecretStr(two)])
    with pytest.raises(ValueError, match="listed twice"):
        SealingSettings(keys=[SecretStr(one), SecretStr(one)])
    with pytest.raises(ValueError, match="item 1: is not base64"):
        SealingSettings(keys=[SecretStr(one), SecretStr("no pe")])


@pytest.fixture
def engine_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


def open_store(url: str, ring: KeyRing) -> Store:
    engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    upgrade(engine)
    return Store(engine, rows=RowSigner(ring.derive("rows")))


@pytest.fixture
def filled(engine_url: str) -> str:
    """A store written under OLD: an active lease, a cluster, a role."""
    store = open_store(engine_url, OLD)
    sealer = CredentialSealer(OLD)
    request = LeaseRequest(
        cluster="a",
        namespace="ns",
        service_account="sa",
        pod_name="p",
        pod_uid=UID,
        credential="db",
        role="ro",
    )
    pending = store.leases.begin_issue(request)
    assert isinstance(pending, PendingLease)
    sealed = sealer.seal_lease(pending.lease, CREDENTIAL)
    store.leases.complete_issue(
        pending.lease.id, "v-1", START + timedelta(hours=1), sealed_credential=sealed
    )
    store.clusters.add(
        name="east",
        server="https://east.example:6443",
        ca_pem="CA",
        issuer="https://east.example",
        sealed_credential=sealer.seal("cluster:east", CREDENTIAL),
        jwks=JWKS,
    )
    store.roles.put("ro", SPEC)
    store.close()
    return engine_url


def test_reseal_moves_every_row_to_the_current_key_then_the_old_key_can_go(filled: str) -> None:
    with pytest.raises(SealingKeysMissing) as refused:
        check_ring(open_store(filled, NEW), CredentialSealer(NEW), NEW)
    message = str(refused.value)
    assert "1 in leases" in message
    assert "2 in clusters" in message
    assert "1 in roles" in message
    assert "keyferry admin reseal" in message
    assert OLD.current.name in message

    store = open_store(filled, ROTATING)
    check_ring(store, CredentialSealer(ROTATING), ROTATING)
    reports = {r.table: r for r in store.rekey(StoreReseal(CredentialSealer(ROTATING))).run()}
    assert [reports[t].resealed for t in ("leases", "clusters", "roles")] == [1, 1, 1]
    assert all(r.refused == 0 for r in reports.values())
    again = store.rekey(StoreReseal(CredentialSealer(ROTATING))).run()
    assert [r.resealed for r in again] == [0, 0, 0, 0]
    store.close()

    store = open_store(filled, NEW)
    check_ring(store, CredentialSealer(NEW), NEW)
    lease = store.leases.find_live("a", UID, "db")
    assert lease is not None
    blob = store.leases.handle(lease.id).sealed_credential
    assert blob is not None
    assert CredentialSealer(NEW).unseal_lease(lease, blob).reveal() == CREDENTIAL.reveal()
    assert store.roles.get("ro").spec == SPEC
    cluster = store.clusters.get("east")
    assert CredentialSealer(NEW).unseal("cluster:east", cluster.sealed_credential).reveal()
    store.close()


def test_reseal_refuses_an_edited_row_and_leaves_it(filled: str) -> None:
    store = open_store(filled, ROTATING)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE clusters SET server = 'https://evil.example'"))
    reports = {r.table: r for r in store.rekey(StoreReseal(CredentialSealer(ROTATING))).run()}
    assert reports["clusters"].refused == 1
    assert reports["clusters"].resealed == 0
    assert "east" in reports["clusters"].named[0]
    assert reports["leases"].resealed == 1
    store.close()
