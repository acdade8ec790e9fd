"""Controlled clocks for the broker's notion of now (`create_server(settings, clock=...)`):
a test moves a token's end, a renewal window or a rate limit's refill by moving the clock,
never by waiting."""

from __future__ import annotations

from datetime import datetime, timedelta

from broker.clock import utcnow


class ShiftedClock:
    """The broker's now: the real time plus `offset`, which a test moves."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset


class ManualClock:
    """The broker's now: real time until `freeze()`, then only what the test says."""

    def __init__(self) -> None:
        self.frozen: datetime | None = None

    def __call__(self) -> datetime:
        return self.frozen or utcnow()

    def freeze(self) -> None:
        self.frozen = utcnow()

    def advance(self, seconds: float) -> None:
        assert self.frozen is not None
        self.frozen += timedelta(seconds=seconds)
