"""Caps on live leases, per pod and per cluster: a runaway agent cannot drain Vault."""

from __future__ import annotations

from broker.errors import LimitExceeded
from broker.policy import Workload
from broker.store import LeaseRepository, StoreRunner


async def check_limits(
    leases: LeaseRepository, runner: StoreRunner, workload: Workload, per_pod: int, per_cluster: int
) -> None:
    """LimitExceeded when the pod or its cluster already holds as many live leases as allowed."""
    held = await runner.run(leases.count_live, pod_uid=workload.pod_uid)
    if held >= per_pod:
        raise LimitExceeded(
            f"pod {workload.namespace}/{workload.pod} holds {held} live leases, the per-pod "
            f"limit; release one (Broker.Release) or raise limits.per_pod"
        )
    in_cluster = await runner.run(leases.count_live, cluster=workload.cluster)
    if in_cluster >= per_cluster:
        raise LimitExceeded(
            f"cluster {workload.cluster!r} holds {in_cluster} live leases, the per-cluster "
            "limit; raise limits.per_cluster or release leases"
        )
