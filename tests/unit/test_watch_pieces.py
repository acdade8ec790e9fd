"""The Watch stream's pieces that need no server: the event hub and the wire form of events."""

from __future__ import annotations

from datetime import UTC

from broker.api.v1 import broker_pb2
from broker.models import PodKey
from broker.server import convert
from broker.service import AckMessage, LeaseExpiring, LeaseRevoked
from broker.service.events.hub import QUEUE_SIZE, EventHub

from .samples import NOW, rotated_event

UID_1, UID_2 = PodKey("a", "uid-1"), PodKey("a", "uid-2")


def test_the_hub_routes_by_cluster_and_pod_uid_and_forgets_closed_streams() -> None:
    hub = EventHub()
    rogue = PodKey("rogue", "uid-1")  # another cluster's API server minted UID_1's UID
    with hub.subscribe(UID_1) as one, hub.subscribe(UID_1) as two, hub.subscribe(UID_2):
        with hub.subscribe(rogue) as forged:
            assert hub.watched() == {UID_1, UID_2, rogue}
            assert hub.publish(UID_1, LeaseRevoked("lease-1", "rotated")) == 2
            assert forged.queue.empty()
        assert (
            one.queue.get_nowait() == two.queue.get_nowait() == LeaseRevoked("lease-1", "rotated")
        )
        assert hub.publish(PodKey("a", "uid-3"), LeaseRevoked("lease-9", "revoked")) == 0
    assert hub.watched() == frozenset()
    assert hub.stream_count() == 0


def test_a_stream_that_falls_behind_is_flagged_not_grown() -> None:
    hub = EventHub()
    with hub.subscribe(UID_1) as slow:
        for _ in range(QUEUE_SIZE + 1):
            hub.publish(UID_1, LeaseRevoked("lease-1", "revoked"))
        assert slow.queue.qsize() == QUEUE_SIZE
        assert slow.overflowed.is_set()


def test_events_on_the_wire() -> None:
    rotated = convert.watch_response(rotated_event()).rotated
    assert (rotated.lease.id, rotated.lease.generation, rotated.lease.renewable) == (
        "lease-2",
        2,
        True,
    )
    assert dict(rotated.credential.values) == {"username": "u", "password": "p"}
    revoked = convert.watch_response(LeaseRevoked("lease-1", "rotated")).revoked
    assert (revoked.lease_id, revoked.reason) == ("lease-1", "rotated")
    expiring = convert.watch_response(LeaseExpiring("lease-2", NOW)).expiring
    assert expiring.expires_at.ToDatetime(UTC) == NOW


def test_an_ack_is_read_and_an_empty_request_is_skipped() -> None:
    request = broker_pb2.WatchRequest(ack=broker_pb2.Ack(lease_id="lease-2", generation=2))
    assert convert.ack(request) == AckMessage("lease-2", 2)
    assert convert.ack(broker_pb2.WatchRequest()) is None
    restarted = broker_pb2.Ack(lease_id="lease-3", generation=3, restarted_containers=["app"])
    assert convert.ack(broker_pb2.WatchRequest(ack=restarted)) == AckMessage(
        "lease-3", 3, restarted=("app",)
    )
