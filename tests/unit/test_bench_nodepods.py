"""The real-pod benchmark's split of an injected pod's start, from the agent's own log."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from tests.bench.nodepods import agent_phases
from tests.scene.nodepods import NodePod


class _Logged:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def logs(self, container: str = "app") -> str:
        assert container == "keyferry-agent"
        return "\n".join(self.lines)


def _line(event: str, at: float, **fields: Any) -> str:
    stamp = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"event": event, "timestamp": stamp, "level": "info", **fields})


def test_the_start_splits_at_the_agents_start_and_ready_lines() -> None:
    created = 1_800_000_000.0
    pod = _Logged(
        [
            "a line that is not the agent's JSON",
            _line("agent.start", created + 1.25, cluster="a"),
            _line("agent.ready", created + 1.75, credentials=1),
        ]
    )
    phases = agent_phases(cast(NodePod, pod), created, 2.5)
    assert phases == pytest.approx((1.25, 0.5, 0.75))
