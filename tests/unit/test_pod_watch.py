"""The pod watch's event handling, with the kubernetes client's Watch replaced by a script, and
the cluster health it records, as a ListClusters message carries it."""

from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from kubernetes.client.exceptions import ApiException

from broker.api.v1 import clusters_pb2
from broker.clusters.health import MAX_ERROR, ClusterHealth, HealthRecorder, WatchState
from broker.clusters.live_pods import LivePod, LivePods
from broker.clusters.pods import EndedPod, PodWatch
from broker.server import convert
from broker.service.admin.clusters import ClusterView


def _pod(name: str, version: str, phase: str = "Running", deleting: bool = False) -> Any:
    meta = SimpleNamespace(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        resource_version=version,
        deletion_timestamp="2026-01-01T00:00:00Z" if deleting else None,
    )
    return SimpleNamespace(metadata=meta, status=SimpleNamespace(phase=phase))


class ScriptedWatch:
    events: ClassVar[list[dict[str, Any]]] = []

    def stream(self, *_: Any, **__: Any) -> Any:
        return iter(self.events)

    def stop(self) -> None:
        pass


def test_a_bookmark_moves_the_version_and_reports_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The client leaves a BOOKMARK's object as a dict (it is not a whole pod).
    bookmark = {"metadata": {"resourceVersion": "42"}}
    ScriptedWatch.events = [
        {"type": "BOOKMARK", "object": bookmark, "raw_object": bookmark},
        {"type": "DELETED", "object": _pod("web", "43"), "raw_object": {}},
        {"type": "MODIFIED", "object": _pod("job", "44", "Succeeded"), "raw_object": {}},
        {"type": "MODIFIED", "object": _pod("api", "45"), "raw_object": {}},
    ]
    monkeypatch.setattr("broker.clusters.pods.k8s_watch.Watch", ScriptedWatch)
    ended: list[EndedPod] = []
    watch = PodWatch("a", api=None, on_ended=ended.append)
    watch.resource_version = "41"
    watch._watch()
    assert [p.name for p in ended] == ["web", "job"]
    assert watch.resource_version == "45"


def test_the_watch_keeps_the_live_pods_and_a_failure_makes_them_untrusted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    live = LivePods(stale_after=60)
    live.replace([("ns", "web", LivePod("uid-web", ending=False))])
    ScriptedWatch.events = [
        {"type": "ADDED", "object": _pod("api", "2"), "raw_object": {}},
        {"type": "MODIFIED", "object": _pod("web", "3", deleting=True), "raw_object": {}},
        {"type": "ADDED", "object": _pod("job", "4"), "raw_object": {}},
        {"type": "DELETED", "object": _pod("job", "5"), "raw_object": {}},
    ]
    monkeypatch.setattr("broker.clusters.pods.k8s_watch.Watch", ScriptedWatch)
    watch = PodWatch("a", api=None, on_ended=lambda _: None, live=live)
    watch.resource_version = "1"
    watch._watch()
    assert live.vouches("ns", "api", "uid-api", allow_ending=False)
    assert not live.vouches("ns", "web", "uid-web", allow_ending=False)  # terminating
    assert live.vouches("ns", "web", "uid-web", allow_ending=True)
    assert not live.vouches("ns", "job", "uid-job", allow_ending=True)  # deleted

    monkeypatch.setattr("broker.clusters.pods.RETRY_SECONDS", 0.0)
    calls = lists = 0

    def failing() -> None:  # the API server answers 500 to the watch, then the watch stops
        nonlocal calls
        calls += 1
        assert live.vouches("ns", "api", "uid-api", allow_ending=True) == (calls == 1)
        if calls > 1:
            assert health.read().watch is WatchState.RECONNECTING
            assert health.read().watch_error == "HTTP 500 boom"
            watch._stop.set()
        raise ApiException(status=500, reason="boom")

    def listing() -> None:  # a failure relists before watching again
        nonlocal lists
        lists += 1
        watch.resource_version = "9"

    health = HealthRecorder()
    watch._health = health
    monkeypatch.setattr(watch, "_watch", failing)
    monkeypatch.setattr(watch, "_list", listing)
    watch._run()
    assert (calls, lists) == (2, 1)
    assert not live.vouches("ns", "api", "uid-api", allow_ending=True)
    assert health.read().watch is WatchState.NOT_STARTED  # the watch stopped


def test_the_health_follows_the_watch_from_list_to_failure_and_back() -> None:
    stamps = iter(datetime(2026, 1, 1, 0, 0, s, tzinfo=UTC) for s in range(60))
    health = HealthRecorder(lambda: next(stamps))
    assert health.read() == ClusterHealth()  # nothing yet: not started, no contact
    health.jwks_fetched()  # 00:00
    health.watching()  # 01: the list answered
    health.event()  # 02
    first = health.read()
    assert first.watch is WatchState.WATCHING
    assert (first.jwks_fetched_at, first.watch_since, first.last_event, first.last_contact) == (
        stamp(0),
        stamp(1),
        stamp(2),
        stamp(2),
    )
    health.failed("MaxRetryError: connection refused " + "x" * 1000)  # 03
    health.failed("MaxRetryError: connection refused")  # 04: still reconnecting since 03
    down = health.read()
    assert down.watch is WatchState.RECONNECTING
    assert down.watch_error == "MaxRetryError: connection refused"
    assert (down.watch_since, down.last_contact) == (stamp(3), stamp(2))
    health.failed("x" * 1000)
    assert len(health.read().watch_error) == MAX_ERROR
    health.watching()  # 06
    back = health.read()
    assert (back.watch, back.watch_error, back.watch_since) == (WatchState.WATCHING, "", stamp(6))


def stamp(second: int) -> datetime:
    return datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_live_pods_vouch_only_while_whole_and_fresh_and_only_for_the_same_uid() -> None:
    clock = Clock()
    live = LivePods(stale_after=35, clock=clock)
    pod = LivePod("uid-1", ending=False)
    live.put("ns", "web", pod)
    assert not live.vouches("ns", "web", "uid-1", allow_ending=False)  # no full list yet
    live.replace([("ns", "web", pod)])
    assert live.vouches("ns", "web", "uid-1", allow_ending=False)
    assert not live.vouches("ns", "web", "uid-2", allow_ending=False)  # a replaced pod's token
    assert not live.vouches("ns", "other", "uid-1", allow_ending=False)  # not seen: ask

    clock.now += 36  # nothing heard from the watch for longer than the bound
    assert not live.vouches("ns", "web", "uid-1", allow_ending=False)
    live.heard()
    assert live.vouches("ns", "web", "uid-1", allow_ending=False)

    live.remove("ns", "web", "uid-other")  # a deletion of another pod of that name
    assert live.vouches("ns", "web", "uid-1", allow_ending=False)
    live.remove("ns", "web", "uid-1")
    assert not live.vouches("ns", "web", "uid-1", allow_ending=True)

    live.put("ns", "web", pod)
    live.lost()
    assert not live.vouches("ns", "web", "uid-1", allow_ending=True)
    assert len(live) == 0


def test_a_cluster_message_carries_the_watch_state_its_error_and_times() -> None:
    view = ClusterView(
        name="a",
        server="https://10.0.0.1:6443",
        issuer="https://issuer.example",
        registered=False,
        key_ids=("k1",),
        jwks_fetched_at=stamp(0),
        last_contact=stamp(5),
        registered_at=None,
        active_leases=2,
        health=ClusterHealth(
            last_contact=stamp(5),
            jwks_fetched_at=stamp(0),
            watch=WatchState.RECONNECTING,
            watch_error="MaxRetryError: connection refused",
            watch_since=stamp(4),
            last_event=stamp(3),
        ),
    )
    message = convert.cluster_message(view)
    assert message.server == "https://10.0.0.1:6443"
    assert message.pod_watch.state == clusters_pb2.WATCH_STATE_RECONNECTING
    assert message.pod_watch.last_error == "MaxRetryError: connection refused"
    assert message.pod_watch.since.ToDatetime(tzinfo=UTC) == stamp(4)
    assert message.pod_watch.last_event.ToDatetime(tzinfo=UTC) == stamp(3)
    quiet = convert.cluster_message(replace(view, health=ClusterHealth()))
    assert quiet.pod_watch.state == clusters_pb2.WATCH_STATE_NOT_STARTED
    assert not quiet.pod_watch.HasField("last_event")
