"""Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
Jitter"): sleep a uniform random time in [0, min(cap, base * 2**attempt)], so agents of many
pods that lost the broker together do not come back in lockstep."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_BASE = 0.5
DEFAULT_CAP = 30.0


@dataclass
class Backoff:
    base: float = DEFAULT_BASE
    cap: float = DEFAULT_CAP
    uniform: Callable[[float, float], float] = field(default=random.uniform)
    attempt: int = 0

    def next_delay(self) -> float:
        """The next wait, in seconds; each call doubles the ceiling up to the cap."""
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self.uniform(0.0, ceiling)

    def reset(self) -> None:
        """After a success: start again from `base`."""
        self.attempt = 0
