"""Cross-replica event notifications (issue 18): only a replica holding the key is heard,
and what it says is checked against the store before any stream sees it.

The relay's receiving side runs here on the lease bench's in-memory store; no PostgreSQL
connection is opened (the bed test tests/security/test_event_forgery.py sends the notes
through a real database login).
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from broker.models import PodKey
from broker.service.common.sealing import derive_key
from broker.service.events.hub import LeaseRenewed, LeaseRevoked
from broker.service.events.relay import EventRelay
from broker.service.events.signed import EventRefused, EventSigner, Refusal
from broker.store import AsyncStore, LeaseRecord, LeaseState
from tests.unit.lease_bench import WHO, Bench, issued

SEALING_KEY = b"s" * 32


def relay_of(bench: Bench, key: bytes = SEALING_KEY) -> EventRelay:
    return EventRelay(
        "postgresql://unused",
        hub=bench.hub,
        store=AsyncStore(bench.store, bench.runner),
        sealer=bench.sealer,
        signer=EventSigner(derive_key(key, "events")),
        timeout=1.0,
    )


def note(lease: LeaseRecord, kind: str, **more: str) -> dict[str, str]:
    return {
        "origin": "another-replica",
        "cluster": lease.cluster,
        "pod_uid": lease.pod_uid,
        "kind": kind,
        "lease_id": lease.id,
        **more,
    }


def signed(payload: dict[str, str], key: bytes = SEALING_KEY) -> str:
    return EventSigner(derive_key(key, "events")).wrap(payload)


async def test_a_note_without_a_mac_is_dropped_and_counted(bench: Bench) -> None:
    lease = await issued(bench)
    relay = relay_of(bench)
    with bench.hub.subscribe(lease.pod_key) as stream:
        forged = {**note(lease, "revoked", reason="revoked")}
        await relay._receive(json.dumps(forged))  # the format before issue 18
        await relay._receive(signed(forged, key=b"x" * 32))  # another key
        assert stream.queue.empty()
    assert relay.refusals.counts == {Refusal.UNAUTHENTICATED: 2}


async def test_a_signed_note_about_another_pods_lease_is_refused(bench: Bench) -> None:
    lease = await issued(bench)
    relay = relay_of(bench)
    elsewhere = PodKey("b", lease.pod_uid)  # the same UID in another cluster
    with bench.hub.subscribe(elsewhere) as stream:
        await relay._receive(signed({**note(lease, "revoked", reason="x"), "cluster": "b"}))
        assert stream.queue.empty()
    assert relay.refusals.counts == {Refusal.NOT_OWNER: 1}


async def test_a_signed_note_the_store_does_not_show_is_stale(bench: Bench) -> None:
    lease = await issued(bench)
    relay = relay_of(bench)
    with bench.hub.subscribe(lease.pod_key) as stream:
        await relay._receive(signed(note(lease, "revoked", reason="revoked")))  # still active
        assert stream.queue.empty()
    assert relay.refusals.counts == {Refusal.STALE: 1}


async def test_an_authentic_note_is_delivered_as_the_store_has_it(bench: Bench) -> None:
    lease = await issued(bench)
    relay = relay_of(bench)
    with bench.hub.subscribe(lease.pod_key) as stream:
        claimed = (lease.created_at + timedelta(days=999)).isoformat()
        await relay._receive(signed(note(lease, "renewed", expires_at=claimed)))
        renewed = stream.queue.get_nowait()
        assert lease.expires_at is not None
        assert renewed == LeaseRenewed(lease.id, lease.expires_at)  # the store's, not 999 days
        ended = await bench.engine.end(lease, WHO, "REVOKED", "r-end")
        assert bench.state(ended.id) is LeaseState.REVOKED
        await relay._receive(signed(note(lease, "revoked", reason="revoked")))
        assert stream.queue.get_nowait() == LeaseRevoked(lease.id, "revoked")
    assert relay.refusals.counts == {}


def test_the_signer_refuses_oversized_and_odd_payloads() -> None:
    signer = EventSigner(derive_key(SEALING_KEY, "events"))
    for payload in ("x" * 8000, "[]", '{"v": 1, "body": 3, "mac": "00"}', "not json"):
        with pytest.raises(EventRefused):
            signer.unwrap(payload)
    assert derive_key(SEALING_KEY, "events") != derive_key(SEALING_KEY, "rows")
    assert derive_key(SEALING_KEY, "events") != SEALING_KEY
