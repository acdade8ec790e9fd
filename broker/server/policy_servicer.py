"""PolicyService on the admin listener: who can get a role, and why one request would be
decided as it would (service/admin/who_can.py)."""

from __future__ import annotations

from typing import Any

import grpc

from broker.api.v1 import policy_pb2, policy_pb2_grpc
from broker.errors import InvalidRequest
from broker.policy import Action
from broker.service import WhoCanFlow, WhyAnswer

from .interceptors import current_call
from .operators import operator_of

Context = grpc.aio.ServicerContext[Any, Any]
DEFAULT_CREDENTIAL = "who-can"
MAX_GROUPS = 64


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, who_can: WhoCanFlow) -> None:
        self._flow = who_can

    async def WhoCan(
        self, request: policy_pb2.WhoCanRequest, context: Context
    ) -> policy_pb2.WhoCanResponse:
        if request.kube_role or request.cluster:
            if request.role:
                raise InvalidRequest("role", "give a role, or kube_role and cluster, not both")
            answer = await self._flow.who_can_kube(
                operator_of(context), request.cluster, request.kube_role, current_call().request_id
            )
        else:
            answer = await self._flow.who_can(
                operator_of(context),
                request.role,
                _credential(request.credential_name),
                current_call().request_id,
            )
        return policy_pb2.WhoCanResponse(
            role=answer.role,
            workloads=[
                policy_pb2.WorkloadsWhoCan(
                    cluster=w.cluster,
                    namespace=w.namespace,
                    service_account=w.service_account,
                    pods=w.pods,
                    policy_ids=sorted(w.policy_ids),
                    refused_pods=[
                        f"{pod}: {', '.join(ids)}" for pod, ids in sorted(w.refused_pods.items())
                    ],
                )
                for w in answer.workloads
            ],
            operators=[
                policy_pb2.OperatorWhoCan(
                    operator=o.name,
                    group=o.group or "",
                    action=o.action.value,
                    policy_ids=list(o.policy_ids),
                    namespaces=list(o.namespaces),
                )
                for o in answer.operators
            ],
            inventory=answer.inventory,
            truncated=answer.truncated,
        )

    async def Why(self, request: policy_pb2.WhyRequest, context: Context) -> policy_pb2.WhyResponse:
        operator, request_id = operator_of(context), current_call().request_id
        credential = _credential(request.credential_name)
        answer: WhyAnswer
        if request.operator:
            if request.cluster or request.namespace or request.service_account or request.pod:
                raise InvalidRequest(
                    "operator", "give an operator or a workload (cluster, namespace, ...), not both"
                )
            if len(request.groups) > MAX_GROUPS:
                raise InvalidRequest("groups", f"at most {MAX_GROUPS}")
            names = {
                "": Action.ISSUE,
                "issue": Action.ISSUE,
                "request_access": Action.REQUEST_ACCESS,
            }
            if request.action not in names:
                raise InvalidRequest("action", "is issue or request_access")
            answer = await self._flow.why_operator(
                operator,
                role_name=request.role,
                name=request.operator,
                groups=list(request.groups),
                action=names[request.action],
                credential=credential,
                request_id=request_id,
            )
        else:
            answer = await self._flow.why_workload(
                operator,
                role_name=request.role,
                cluster=request.cluster,
                namespace=request.namespace,
                service_account=request.service_account,
                pod=request.pod,
                credential=credential,
                request_id=request_id,
            )
        return policy_pb2.WhyResponse(
            allowed=answer.allowed,
            policy_ids=list(answer.policy_ids),
            errors=list(answer.errors),
            principal=answer.principal,
            action=answer.action,
            resource=answer.resource,
            notes=list(answer.notes),
        )


def _credential(name: str) -> str:
    if len(name) > 253:
        raise InvalidRequest("credential_name", "at most 253 characters")
    return name or DEFAULT_CREDENTIAL
