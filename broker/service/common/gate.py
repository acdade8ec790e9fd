"""Authorize and audit, written once: Cedar decides, the decision is recorded, a deny is
refused.

Every flow that asks the policy engine asks through `PolicyGate`, so none can forget the
record or put it after the effect: the record is on disk before `decide` returns (a record
that cannot be written raises AuditUnavailable and the call is refused), and `require`
raises PermissionDenied with the flow's own sentence on a deny. What the record holds
differs by who asks about what (a workload about its lease, an operator about a role, a
grant), so the flow passes it as `record`, one of AuditTrail's decision methods; the order
does not differ. tests/unit/test_gate.py checks that no other module calls `decide`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from broker import tracing
from broker.errors import PermissionDenied
from broker.policy import Action, PolicyEngine
from broker.policy import Decision as PolicyDecision
from broker.policy.entities import Principal as PolicyPrincipal
from broker.policy.entities import Resource

Record = Callable[[PolicyDecision], Awaitable[None]]


class PolicyGate:
    def __init__(self, policy: PolicyEngine) -> None:
        self._policy = policy

    async def decide(
        self,
        principal: PolicyPrincipal,
        action: Action,
        resource: Resource,
        record: Record | None,
        context: Mapping[str, Any] | None = None,
    ) -> PolicyDecision:
        """Cedar's decision, recorded by `record` (None only for a dry run, whose plan is
        recorded instead, and which changes nothing)."""
        with tracing.span("policy", {"keyferry.action": action.value}) as step:
            decision = self._policy.decide(principal, action, resource, context)
            step.set("keyferry.allowed", decision.allowed)
            if record is not None:
                await record(decision)
        return decision

    async def require(
        self,
        principal: PolicyPrincipal,
        action: Action,
        resource: Resource,
        record: Record,
        denied: str,
        *,
        context: Mapping[str, Any] | None = None,
    ) -> PolicyDecision:
        """As `decide`, then PermissionDenied(`denied`) unless allowed."""
        decision = await self.decide(principal, action, resource, record, context)
        if not decision.allowed:
            raise PermissionDenied(denied)
        return decision
