"""Order statistics of latency samples, and the pairs the report prints."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Summary:
    """Milliseconds; `rate` is samples per second of wall time when the run had a wall time."""

    n: int
    p50: float
    p95: float
    p99: float
    rate: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(seconds: list[float], wall: float | None = None) -> Summary:
    if not seconds:
        raise ValueError("no samples")
    ms = sorted(s * 1000 for s in seconds)
    one = len(ms) == 1
    cuts = [ms[0]] * 99 if one else statistics.quantiles(ms, n=100, method="inclusive")
    rate = len(ms) / wall if wall else None
    return Summary(len(ms), statistics.median(ms), cuts[94], cuts[98], rate)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs
