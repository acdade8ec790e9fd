"""The bounds on what one pod may cost the broker: lease ids checked before any lookup, Watch
streams counted per pod and per replica, and the rate limit on Ack, Renew and Release."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from broker.api.v1 import broker_pb2
from broker.errors import InvalidRequest, LimitExceeded
from broker.models import PodKey
from broker.policy import Workload
from broker.service.workload.limits import LeaseCallRates, WatchStreamCaps
from broker.service.workload.names import MAX_LENGTH as MAX_NAME
from broker.service.workload.names import MAX_RESTARTED, check_lease_id, check_restarted
from broker.settings import DEFAULT_MAX_MESSAGE_BYTES, LimitsSettings

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def pod(name: str, cluster: str = "a") -> Workload:
    return Workload(
        cluster=cluster, namespace="orders", service_account="app", pod=name, pod_uid=name
    )


def key(name: str) -> PodKey:
    return pod(name).pod_key


def test_a_lease_id_is_a_uuid_in_the_stores_form() -> None:
    lease_id = str(uuid.uuid4())
    assert check_lease_id(lease_id) == lease_id
    assert check_lease_id(lease_id.upper()) == lease_id


@pytest.mark.parametrize(
    "value", ["", "lease-1", "x" * 36, "x" * 100_000, "{" + "0" * 32 + "}", "a\x00" * 18]
)
def test_anything_else_is_refused_naming_the_field_without_echoing_it(value: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_lease_id(value, "ack.lease_id")
    assert refused.value.field == "ack.lease_id"
    assert refused.value.message.startswith("ack.lease_id: ")
    assert "lease.id" in refused.value.message  # says what to send instead
    if value:
        assert value not in refused.value.message


def test_an_acks_restarted_containers_are_container_names_each_once() -> None:
    assert check_restarted(("app", "worker", "app")) == ("app", "worker")
    assert check_restarted(()) == ()


@pytest.mark.parametrize(
    "names",
    [
        tuple(f"c{i}" for i in range(MAX_RESTARTED + 1)),
        ("App",),
        ("a" * 64,),
        ("app\nforged",),
        ("",),
    ],
)
def test_an_ack_naming_too_many_or_non_container_names_is_refused(names: tuple[str, ...]) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_restarted(names)
    assert refused.value.field == "ack.restarted_containers"
    assert not any(name and name in refused.value.message for name in names)


def test_watch_streams_are_capped_per_pod_and_per_replica() -> None:
    caps = WatchStreamCaps(LimitsSettings(pod_watch_streams=2, replica_watch_streams=3))
    with caps.hold(pod("a")), caps.hold(pod("a")):
        with pytest.raises(LimitExceeded) as per_pod, caps.hold(pod("a")):
            pass
        assert "already holds 2 Watch streams" in per_pod.value.message
        assert "limits.pod_watch_streams" in per_pod.value.message
        assert per_pod.value.retry_after is None  # frees up only when a stream ends
        with caps.hold(pod("b")):
            assert (caps.count(), caps.count(key("a")), caps.count(key("b"))) == (3, 2, 1)
            with pytest.raises(LimitExceeded) as per_replica, caps.hold(pod("c")):
                pass
            assert "limits.replica_watch_streams" in per_replica.value.message
            assert per_replica.value.retry_after is not None
        with caps.hold(pod("c")):  # b's stream ended: room again
            assert caps.count() == 3
    assert (caps.count(), caps.count(key("a"))) == (0, 0)


def test_a_refused_stream_is_not_counted() -> None:
    caps = WatchStreamCaps(LimitsSettings(pod_watch_streams=1))
    with caps.hold(pod("a")):
        for _ in range(5):
            with pytest.raises(LimitExceeded), caps.hold(pod("a")):
                pass
        assert caps.count(key("a")) == 1


def test_ack_renew_and_release_share_one_bucket_per_pod() -> None:
    now = [T0]
    rates = LeaseCallRates(
        LimitsSettings(pod_lease_call_rate=1.0, pod_lease_call_burst=3), lambda: now[0]
    )
    for method in ("Ack", "Renew", "Release"):
        rates.check(pod("a"), method)
    with pytest.raises(LimitExceeded) as refused:
        rates.check(pod("a"), "Ack")
    assert "limits.pod_lease_call_rate" in refused.value.message
    assert refused.value.retry_after == pytest.approx(1.0)
    rates.check(pod("b"), "Ack")  # another pod has its own bucket
    now[0] = T0 + timedelta(seconds=1)
    rates.check(pod("a"), "Release")


def test_the_recheck_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="longer than zero"):
        LimitsSettings(watch_recheck=timedelta(0))


def test_the_receive_limit_is_far_above_any_real_request() -> None:
    """workload.max_message_bytes is fitted to the largest requests an agent can send: an
    Issue with the longest names allowed, an Ack and a Release of a lease id."""
    largest = [
        broker_pb2.IssueRequest(credential_name="c" * MAX_NAME, role="r" * 253),
        broker_pb2.WatchRequest(ack=broker_pb2.Ack(lease_id=str(uuid.uuid4()), generation=2**62)),
        broker_pb2.ReleaseRequest(lease_id=str(uuid.uuid4())),
        broker_pb2.RenewRequest(lease_id=str(uuid.uuid4())),
    ]
    sizes = [message.ByteSize() for message in largest]
    print(f"largest workload requests: {sizes} bytes; limit {DEFAULT_MAX_MESSAGE_BYTES}")
    assert max(sizes) < 1024
    assert max(sizes) * 16 <= DEFAULT_MAX_MESSAGE_BYTES
