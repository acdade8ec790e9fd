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
    """Latencies in seconds, summarised in milliseconds."""
    summary = describe([s * 1000 for s in seconds])
    rate = len(seconds) / wall if wall else None
    return Summary(summary.n, summary.p50, summary.p95, summary.p99, rate)


def describe(values: list[float]) -> Summary:
    """Any figures (MiB, percent), in their own unit."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    one = len(ordered) == 1
    cuts = [ordered[0]] * 99 if one else statistics.quantiles(ordered, n=100, method="inclusive")
    return Summary(len(ordered), statistics.median(ordered), cuts[94], cuts[98])


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs
