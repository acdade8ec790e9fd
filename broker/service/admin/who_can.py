"""`who-can` and `why`: answered by the same Cedar policies and entities the broker decides
with, through the same gate (no second policy engine), over who there is to ask about.

Workloads: every live pod of every cluster the broker knows, from the pod watch's live set
while it is trusted (else one list of the API server), each asked as the Workload its token
would make it (cluster, namespace, service account, pod) for `issue` on the role. Cedar
sees no more than that at Issue (plus the credential name, given here as `credential`,
and the broker's checks outside Cedar: the token, the pod's existence, the rate limits).

Operators cannot be listed (an operator is whoever holds a certificate of the admin CA),
so the candidates are those the policies name: each group a policy mentions, as a member
of only that group; each operator a policy names, in no group; and an operator no policy
names, in no group (for permits that name nobody). Each is asked for `issue` and
`request_access` on the role (request_access for the shortest grant, one minute).

The hypothetical decisions are not audited one by one (they change nothing); the call
itself is decided as `explain` on the Broker and audited as `policy.explain`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import cedarpy
import structlog

from broker.audit import AuditAction
from broker.clusters.config import NAME as DNS_LABEL
from broker.errors import InvalidRequest, KeyferryError
from broker.policy import (
    Action,
    BrokerResource,
    ClusterAccessResource,
    Operator,
    RoleResource,
    Workload,
)
from broker.policy import Decision as PolicyDecision

from ..common.callers import Callers
from ..common.role_catalog import RoleCatalog
from ..core import Core

log = structlog.get_logger("keyferry.who_can")
MAX_PODS = 20_000  # pods asked about per call; beyond this the answer says it is cut short
ANY_OPERATOR = "(an operator no policy names)"
MEMBER_OF = "(a member of {group})"
PLACEHOLDER_POD = "(any pod)"
MIN_GRANT_SECONDS = 60
OPERATOR_ACTIONS = (Action.ISSUE, Action.REQUEST_ACCESS)


@dataclass
class WorkloadAnswer:
    """One (cluster, namespace, service account) with a pod Cedar lets issue the role."""

    cluster: str
    namespace: str
    service_account: str
    pods: list[str] = field(default_factory=list)
    policy_ids: set[str] = field(default_factory=set)
    refused_pods: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class OperatorAnswer:
    name: str
    group: str | None
    action: Action
    policy_ids: tuple[str, ...]
    namespaces: tuple[str, ...] = ()  # for a ClusterRole: where ("*": cluster-wide)


@dataclass(frozen=True)
class WhoCanAnswer:
    role: str
    workloads: list[WorkloadAnswer]
    operators: list[OperatorAnswer]
    inventory: dict[str, str]  # cluster → "watch", "listed", or why it was not asked
    truncated: bool


@dataclass(frozen=True)
class WhyAnswer:
    allowed: bool
    policy_ids: tuple[str, ...]
    errors: tuple[str, ...]
    principal: str
    action: str
    resource: str
    notes: tuple[str, ...]


class WhoCanFlow:
    def __init__(
        self,
        core: Core,
        *,
        catalog: RoleCatalog,
        callers: Callers,
        policy_text: str,
        cluster_roles: tuple[str, ...] = (),
    ) -> None:
        self._gate = core.gate
        self._audit = core.audit
        self._catalog = catalog
        self._callers = callers
        self._cluster_roles = cluster_roles
        self._groups, self._operators = mentioned(policy_text)
        self._labels = named_labels(policy_text)

    async def who_can_kube(
        self, operator: Operator, cluster: str, kube_role: str, request_id: str
    ) -> WhoCanAnswer:
        """Who may request ClusterRole `kube_role` in `cluster`, and in which namespaces:
        those with live pods there and those the policies name, and "*" (cluster-wide)."""
        await self._allow(operator, f"kube:{cluster}/{kube_role}", request_id)
        if kube_role not in self._cluster_roles:
            raise InvalidRequest(
                "kube_role",
                f"{kube_role!r} is not one of the broker's access.cluster_roles "
                f"({', '.join(self._cluster_roles)})",
            )
        client = self._callers.client(cluster)
        if client is None:
            raise InvalidRequest(
                "cluster",
                f"{cluster!r} is not a cluster the broker knows (`keyferry clusters list`)",
            )
        inventory: dict[str, str] = {}
        namespaces = set(self._labels)
        try:
            pods, inventory[cluster] = await client.pods_now()
            namespaces.update(namespace for namespace, _, _ in pods)
        except KeyferryError as error:
            inventory[cluster] = f"not asked: {error.message}"
        context = {"duration_seconds": MIN_GRANT_SECONDS}
        operators = []
        for candidate, group in self._candidates():
            allowed: list[str] = []
            ids: set[str] = set()
            for namespace in sorted(namespaces):
                resource = ClusterAccessResource(
                    cluster=cluster, namespace=namespace, cluster_role=kube_role
                )
                decision = await self._gate.decide(
                    candidate, Action.REQUEST_CLUSTER_ACCESS, resource, None, context
                )
                if decision.allowed:
                    allowed.append(namespace)
                    ids.update(decision.policy_ids)
            if allowed:
                operators.append(
                    OperatorAnswer(
                        candidate.name,
                        group,
                        Action.REQUEST_CLUSTER_ACCESS,
                        tuple(sorted(ids)),
                        tuple(allowed),
                    )
                )
            everywhere = ClusterAccessResource(cluster=cluster, cluster_role=kube_role)
            decision = await self._gate.decide(
                candidate, Action.REQUEST_CLUSTER_WIDE_ACCESS, everywhere, None, context
            )
            if decision.allowed:
                operators.append(
                    OperatorAnswer(
                        candidate.name,
                        group,
                        Action.REQUEST_CLUSTER_WIDE_ACCESS,
                        decision.policy_ids,
                        ("*",),
                    )
                )
        return WhoCanAnswer(f"kube:{cluster}/{kube_role}", [], operators, inventory, False)

    async def who_can(
        self, operator: Operator, role_name: str, credential: str, request_id: str
    ) -> WhoCanAnswer:
        await self._allow(operator, role_name, request_id)
        role = await self._role(role_name)
        context = {"credential_name": credential}
        workloads: dict[tuple[str, str, str], WorkloadAnswer] = {}
        inventory: dict[str, str] = {}
        asked = 0
        truncated = False
        for client in sorted(self._callers.clients(), key=lambda c: c.config.name):
            name = client.config.name
            try:
                pods, source = await client.pods_now()
            except KeyferryError as error:
                inventory[name] = f"not asked: {error.message}"
                continue
            inventory[name] = source
            for namespace, pod_name, pod in sorted(pods, key=lambda p: (p[0], p[1])):
                if pod.ending:
                    continue
                if asked >= MAX_PODS:
                    truncated = True
                    break
                asked += 1
                workload = Workload(
                    cluster=name,
                    namespace=namespace,
                    service_account=pod.service_account or "default",
                    pod=pod_name,
                    pod_uid=pod.uid,
                )
                decision = await self._gate.decide(workload, Action.ISSUE, role, None, context)
                key = (name, namespace, workload.service_account)
                if decision.allowed:
                    answer = workloads.setdefault(key, WorkloadAnswer(*key))
                    answer.pods.append(pod_name)
                    answer.policy_ids.update(decision.policy_ids)
                elif decision.policy_ids:  # a forbid refused it
                    answer = workloads.setdefault(key, WorkloadAnswer(*key))
                    answer.refused_pods[pod_name] = decision.policy_ids
        found = [w for w in workloads.values() if w.pods]
        operators = []
        for candidate, group in self._candidates():
            for action in OPERATOR_ACTIONS:
                asked_context = (
                    context if action == Action.ISSUE else {"duration_seconds": MIN_GRANT_SECONDS}
                )
                decision = await self._gate.decide(candidate, action, role, None, asked_context)
                if decision.allowed:
                    operators.append(
                        OperatorAnswer(candidate.name, group, action, decision.policy_ids)
                    )
        return WhoCanAnswer(role_name, found, operators, inventory, truncated)

    async def why_workload(
        self,
        operator: Operator,
        *,
        role_name: str,
        cluster: str,
        namespace: str,
        service_account: str,
        pod: str,
        credential: str,
        request_id: str,
    ) -> WhyAnswer:
        await self._allow(operator, role_name, request_id)
        role = await self._role(role_name)
        if self._callers.client(cluster) is None:
            raise InvalidRequest(
                "cluster",
                f"{cluster!r} is not a cluster the broker knows (`keyferry clusters list`)",
            )
        for name, value in (("namespace", namespace), ("service_account", service_account)):
            if not value or len(value) > 253:
                raise InvalidRequest(name, "is required: at most 253 characters")
        notes = []
        if not pod:
            notes.append(
                f"no --pod given: asked for a pod named {PLACEHOLDER_POD!r}; a policy on pod "
                "names may answer otherwise for a real pod"
            )
        workload = Workload(
            cluster=cluster,
            namespace=namespace,
            service_account=service_account,
            pod=pod or PLACEHOLDER_POD,
            pod_uid="why",
        )
        context = {"credential_name": credential}
        decision = await self._gate.decide(workload, Action.ISSUE, role, None, context)
        notes.append(
            "at Issue the broker also requires a valid token of that pod, the pod alive "
            "with the token's UID, and the rate limits"
        )
        return _why(decision, workload.ident, Action.ISSUE, role, notes)

    async def why_operator(
        self,
        operator: Operator,
        *,
        role_name: str,
        name: str,
        groups: Iterable[str],
        action: Action,
        credential: str,
        request_id: str,
    ) -> WhyAnswer:
        await self._allow(operator, role_name, request_id)
        role = await self._role(role_name)
        if action not in OPERATOR_ACTIONS:
            raise InvalidRequest("action", "is issue or request_access")
        if not name or len(name) > 253:
            raise InvalidRequest("operator", "is required: an operator's name")
        candidate = Operator(name=name, groups=tuple(groups))
        context: dict[str, Any] = (
            {"credential_name": credential}
            if action == Action.ISSUE
            else {"duration_seconds": MIN_GRANT_SECONDS}
        )
        decision = await self._gate.decide(candidate, action, role, None, context)
        notes = (
            "the operator's groups are as given: the broker reads them from the "
            "operator's certificate (O=) at each call",
        )
        return _why(decision, f"Operator::{name}", action, role, list(notes))

    def _candidates(self) -> list[tuple[Operator, str | None]]:
        named = [(Operator(name=n), None) for n in sorted(self._operators)]
        grouped = [
            (Operator(name=MEMBER_OF.format(group=g), groups=(g,)), g) for g in sorted(self._groups)
        ]
        return [*grouped, *named, (Operator(name=ANY_OPERATOR), None)]

    async def _role(self, name: str) -> RoleResource:
        if not name or len(name) > 253:
            raise InvalidRequest(
                "role", "is required: a role of the catalog (`keyferry roles list`)"
            )
        stored = await self._catalog.get(name)
        return RoleResource(name=stored.spec.name, backend=stored.spec.kind)

    async def _allow(self, operator: Operator, role: str, request_id: str) -> None:
        await self._gate.require(
            operator,
            Action.EXPLAIN,
            BrokerResource(),
            lambda decision: self._audit.operator_decision(
                operator, AuditAction.POLICY_EXPLAIN, decision, request_id, role=role or None
            ),
            f"no policy permits operator {operator.name!r} to ask who can get a role "
            "(Cedar action 'explain' on the Broker); ask for a Cedar permit",
        )


def _why(
    decision: PolicyDecision, principal: str, action: Action, role: RoleResource, notes: list[str]
) -> WhyAnswer:
    return WhyAnswer(
        allowed=decision.allowed,
        policy_ids=decision.policy_ids,
        errors=decision.errors,
        principal=principal,
        action=action.value,
        resource=f"Role::{role.name} (backend {role.backend})",
        notes=tuple(notes),
    )


def mentioned(policy_text: str) -> tuple[set[str], set[str]]:
    """The groups and the operators the policies name anywhere (scope or condition)."""
    parsed = json.loads(cedarpy.policies_to_json_str(policy_text))
    groups: set[str] = set()
    operators: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            kind, ident = node.get("type"), node.get("id")
            if isinstance(kind, str) and isinstance(ident, str):
                if kind == "Group":
                    groups.add(ident)
                elif kind == "Operator":
                    operators.add(ident)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(parsed)
    return groups, operators


def named_labels(policy_text: str) -> set[str]:
    """The string literals of the policies that could be namespace names (DNS labels)."""
    parsed = json.loads(cedarpy.policies_to_json_str(policy_text))
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            value = node.get("Value")
            if isinstance(value, str) and DNS_LABEL.fullmatch(value):
                found.add(value)
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(parsed)
    return found
