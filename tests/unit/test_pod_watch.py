"""The pod watch's event handling, with the kubernetes client's Watch replaced by a script."""

from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from broker.clusters.pods import EndedPod, PodWatch


def _pod(name: str, version: str, phase: str = "Running") -> Any:
    meta = SimpleNamespace(namespace="ns", name=name, uid=f"uid-{name}", resource_version=version)
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
