"""Caps on live leases and open Watch streams, and rate limits on Issue (per pod and per
cluster) and on a pod's calls about its own leases (Ack, Renew, Release): a runaway agent
(or a cluster full of them) can neither drain Vault nor keep the broker busy."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from broker.clock import Clock
from broker.errors import LimitExceeded
from broker.models import PodKey
from broker.policy import Workload
from broker.settings import LimitsSettings
from broker.store import CapReached


def cap_refusal(workload: Workload, reached: CapReached, per_pod: int) -> LimitExceeded:
    """The refusal of an Issue whose pod or cluster holds as many live leases as allowed
    (counted in the transaction that would have written the pending row)."""
    if reached.held >= per_pod:
        return LimitExceeded(
            f"pod {workload.namespace}/{workload.pod} holds {reached.held} live leases, the "
            "per-pod limit; release one (Broker.Release) or raise limits.per_pod"
        )
    return LimitExceeded(
        f"cluster {workload.cluster!r} holds {reached.in_cluster} live leases, the "
        "per-cluster limit; raise limits.per_cluster or release leases"
    )


@dataclass
class _Bucket:
    tokens: float
    at: datetime


class TokenBuckets:
    """One token bucket per key (a pod's PodKey, a cluster): `burst` calls at once, refilled at
    `rate` per second, timed by the broker's clock (tests move it). In memory, per
    replica: a limit of N per second is N per second per replica."""

    def __init__(self, rate: float, burst: int, clock: Clock, *, keep: int = 10_000) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._keep = keep
        self._buckets: dict[Hashable, _Bucket] = {}

    def take(self, key: Hashable) -> float | None:
        """Take one call from `key`'s bucket: None when allowed, else the seconds until
        one call is available again (nothing is taken then)."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._keep:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(self._burst, now)
        elapsed = max((now - bucket.at).total_seconds(), 0.0)
        bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self._rate

    def give_back(self, key: Hashable) -> None:
        """Return a call taken by `take` (another limit refused the call after all)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(self._burst, bucket.tokens + 1.0)

    def _forget_full(self, now: datetime) -> None:
        """Drop the buckets that have refilled: forgetting them changes nothing."""
        for key, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.at).total_seconds() * self._rate >= self._burst:
                del self._buckets[key]


class IssueRates:
    """Rate limits on Issue calls, per pod and per cluster (limits.*_issue_rate/burst)."""

    def __init__(self, settings: LimitsSettings, clock: Clock) -> None:
        self._pods = TokenBuckets(settings.pod_issue_rate, settings.pod_issue_burst, clock)
        self._clusters = TokenBuckets(
            settings.cluster_issue_rate, settings.cluster_issue_burst, clock
        )

    def check(self, workload: Workload) -> None:
        """LimitExceeded (with a retry delay) when the pod or its cluster calls too often."""
        wait = self._pods.take(workload.pod_key)
        if wait is not None:
            raise LimitExceeded(
                f"pod {workload.namespace}/{workload.pod} calls Issue too often; retry in "
                f"{wait:.1f}s (limits.pod_issue_rate, limits.pod_issue_burst)",
                retry_after=wait,
            )
        wait = self._clusters.take(workload.cluster)
        if wait is not None:
            self._pods.give_back(workload.pod_key)
            raise LimitExceeded(
                f"cluster {workload.cluster!r} calls Issue too often; retry in {wait:.1f}s "
                "(limits.cluster_issue_rate, limits.cluster_issue_burst)",
                retry_after=wait,
            )


class LeaseCallRates:
    """Rate limit on a pod's Ack, Renew and Release calls: one bucket per pod for the three
    (limits.pod_lease_call_rate/burst). An agent makes a few per rotation; a flood of them
    costs store lookups, audit records and log lines."""

    def __init__(self, settings: LimitsSettings, clock: Clock) -> None:
        self._pods = TokenBuckets(
            settings.pod_lease_call_rate, settings.pod_lease_call_burst, clock
        )

    def check(self, workload: Workload, method: str) -> None:
        """LimitExceeded (with a retry delay) when the pod calls too often."""
        wait = self._pods.take(workload.pod_key)
        if wait is not None:
            raise LimitExceeded(
                f"pod {workload.namespace}/{workload.pod} calls {method} (with Ack, Renew and "
                f"Release) too often; retry in {wait:.1f}s (limits.pod_lease_call_rate, "
                "limits.pod_lease_call_burst)",
                retry_after=wait,
            )


class WatchStreamCaps:
    """How many Watch streams each pod, and this replica in all, holds open; `hold` refuses
    one past limits.pod_watch_streams or limits.replica_watch_streams. Counted here because
    gRPC's max_concurrent_streams bounds one connection, not a pod or the process."""

    RETRY_AFTER = 5.0  # seconds; another replica (or this one, once streams end) may take it

    def __init__(self, settings: LimitsSettings) -> None:
        self._per_pod = settings.pod_watch_streams
        self._per_replica = settings.replica_watch_streams
        self._open: Counter[PodKey] = Counter()
        self._total = 0

    @contextmanager
    def hold(self, workload: Workload) -> Iterator[None]:
        """Count one open stream of the pod for the block; LimitExceeded past a cap."""
        pod = workload.pod_key
        held = self._open[pod]
        if held >= self._per_pod:
            raise LimitExceeded(
                f"pod {workload.namespace}/{workload.pod} already holds {held} Watch streams "
                "on this replica, the per-pod limit (limits.pod_watch_streams); an agent "
                "needs one: close the others"
            )
        if self._total >= self._per_replica:
            raise LimitExceeded(
                f"this replica serves {self._total} Watch streams, its limit "
                f"(limits.replica_watch_streams); retry in {self.RETRY_AFTER:.0f}s",
                retry_after=self.RETRY_AFTER,
            )
        self._open[pod] += 1
        self._total += 1
        try:
            yield
        finally:
            self._total -= 1
            self._open[pod] -= 1
            if self._open[pod] <= 0:
                del self._open[pod]

    def count(self, pod: PodKey | None = None) -> int:
        """Streams open on this replica: of one pod, or in all."""
        return self._total if pod is None else self._open[pod]
