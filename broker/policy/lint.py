"""Which permits let workloads of any cluster in (`keyferry policy check`, and the broker at
start, as a warning).

Registering a cluster lets its API server speak for every pod a policy permits "in any
cluster": a permit that can match a Workload and never reads `principal.cluster` is open
to the pods of a cluster registered tomorrow. Such a permit is reported; constrain it
(`principal.cluster == Cluster::"prod-eu"`, or `principal.cluster in [Cluster::"a",
Cluster::"b"]`), or tie it to the principal's own cluster as `workloads-own-leases` does
(`resource.cluster == principal.cluster`). Any read of `principal.cluster` in a condition
counts: the check says which permits never look, not whether a condition is right.

The check reads Cedar's JSON form of each static policy: effect, principal and action
scopes, and every attribute read in its conditions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cedarpy

WORKLOAD = "Keyferry::Workload"
WORKLOAD_ACTIONS = frozenset({"issue", "watch", "release", "renew"})


@dataclass(frozen=True)
class OpenPermit:
    """A permit that may match a workload of any cluster."""

    policy: str  # its @id, or Cedar's positional id
    actions: tuple[str, ...]

    def describe(self) -> str:
        what = ", ".join(self.actions) if self.actions else "any action"
        return (
            f"permit {self.policy!r} ({what}) matches workloads of every cluster, including "
            "any cluster registered later: constrain principal.cluster (for example "
            '`principal.cluster == Cluster::"prod"`)'
        )


def open_permits(text: str) -> list[OpenPermit]:
    """The permits of a policy text that do not constrain the workload's cluster."""
    parsed = json.loads(cedarpy.policies_to_json_str(text))
    found = []
    for pid, policy in parsed.get("staticPolicies", {}).items():
        if policy.get("effect") != "permit" or not _may_be_workload(policy.get("principal", {})):
            continue
        actions = _workload_actions(policy.get("action", {}))
        if actions is None:
            continue
        if any(_reads_principal_cluster(c.get("body")) for c in policy.get("conditions", [])):
            continue
        name = (policy.get("annotations") or {}).get("id", pid)
        found.append(OpenPermit(policy=name, actions=actions))
    return found


def _may_be_workload(scope: dict[str, Any]) -> bool:
    op = scope.get("op")
    if op == "All":
        return True
    if op == "is":
        return str(scope.get("entity_type", "")).endswith("Workload")
    entity = scope.get("entity") or {}
    return str(entity.get("type", "")).endswith("Workload")


def _workload_actions(scope: dict[str, Any]) -> tuple[str, ...] | None:
    """The workload actions the scope lets through; () for all; None for none."""
    op = scope.get("op")
    if op == "All":
        return ()
    entities = scope.get("entities") or ([scope["entity"]] if "entity" in scope else [])
    names = {str(e.get("id")) for e in entities}
    matched = tuple(sorted(names & WORKLOAD_ACTIONS))
    return matched or None


def _reads_principal_cluster(node: Any) -> bool:
    return any(_is_principal_cluster(n) for n in _nodes(node))


def _is_principal_cluster(node: dict[str, Any]) -> bool:
    access = node.get(".")
    if not isinstance(access, dict) or access.get("attr") != "cluster":
        return False
    return access.get("left") == {"Var": "principal"}


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _nodes(value)
