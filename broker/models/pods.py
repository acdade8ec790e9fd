"""What names one pod across the broker's clusters."""

from __future__ import annotations

from typing import NamedTuple


class PodKey(NamedTuple):
    """A pod: its cluster and its UID. The UID alone names no pod across clusters: a member
    cluster's API server can mint a token with any UID, so state kept per pod (leases,
    Watch streams, rate buckets) is keyed by both."""

    cluster: str
    pod_uid: str

    def __str__(self) -> str:
        return f"{self.cluster}/{self.pod_uid}"
