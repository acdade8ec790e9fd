"""Cedar policy: default deny; every decision names the policies that made it."""

from .engine import Decision, PolicyEngine, PolicyInvalid
from .entities import (
    Action,
    BrokerResource,
    ClusterAccessResource,
    ClusterRef,
    ConnectionResource,
    GrantResource,
    LeaseResource,
    Operator,
    RoleResource,
    Workload,
)

__all__ = [
    "Action",
    "BrokerResource",
    "ClusterAccessResource",
    "ClusterRef",
    "ConnectionResource",
    "Decision",
    "GrantResource",
    "LeaseResource",
    "Operator",
    "PolicyEngine",
    "PolicyInvalid",
    "RoleResource",
    "Workload",
]
