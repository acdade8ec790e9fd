"""A Watch stream's snapshot waits for the relay's listener (broker/service/events/relay.py):
a change another replica commits between the snapshot and the LISTEN would be lost."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from broker.errors import TemporaryError
from broker.service.events import relay as relay_module
from broker.service.events.hub import EventHub
from broker.service.events.relay import EventRelay


def _relay() -> EventRelay:
    fake: Any = SimpleNamespace(leases=None)
    return EventRelay(
        "host=unused", timeout=1.0, hub=EventHub(), store=fake, sealer=fake, signer=fake
    )


async def test_a_replica_not_yet_listening_refuses_the_watch_as_retryable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay_module, "LISTEN_WAIT", 0.05)
    with pytest.raises(TemporaryError, match="not yet listening") as refused:
        await _relay().until_listening()
    assert refused.value.reason == "UNAVAILABLE"


async def test_the_watch_goes_on_once_the_listener_hears_the_channel() -> None:
    relay = _relay()
    waiting = asyncio.create_task(relay.until_listening())
    await asyncio.sleep(0)
    assert not waiting.done()
    relay.listening.set()
    await asyncio.wait_for(waiting, 1.0)
