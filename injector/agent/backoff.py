"""Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
Jitter"): sleep a uniform random time in [0, min(cap, base * 2**attempt)], so agents of many
pods that lost the broker together do not come back in lockstep. Base and cap come from the
spec (`backoff_base_seconds`, `backoff_cap_seconds`: the webhook's `agent.backoff_*`)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from injector.terms import BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS

from .spec import AgentSpec


@dataclass
class Backoff:
    base: float = BACKOFF_BASE_SECONDS
    cap: float = BACKOFF_CAP_SECONDS
    uniform: Callable[[float, float], float] = field(default=random.uniform)
    attempt: int = 0

    @classmethod
    def for_spec(
        cls, spec: AgentSpec, uniform: Callable[[float, float], float] = random.uniform
    ) -> Backoff:
        """The backoff the spec asks for (validated there: cap >= base > 0)."""
        return cls(base=spec.backoff_base_seconds, cap=spec.backoff_cap_seconds, uniform=uniform)

    def next_delay(self) -> float:
        """The next wait, in seconds; each call doubles the ceiling up to the cap."""
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self.uniform(0.0, ceiling)

    def reset(self) -> None:
        """After a success: start again from `base`."""
        self.attempt = 0
