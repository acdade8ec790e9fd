"""AccessService on the admin listener: just-in-time grants for operators, the caller being
the one its client certificate names."""

from __future__ import annotations

from typing import Any

import grpc

from broker.api.v1 import access_pb2, access_pb2_grpc
from broker.errors import InvalidRequest
from broker.service import AccessFlow, ClusterAccessFlow
from broker.store import GrantRecord

from . import convert
from .interceptors import current_call
from .operators import operator_of

Context = grpc.aio.ServicerContext[Any, Any]


class AccessServicer(access_pb2_grpc.AccessServiceServicer):
    def __init__(self, access: AccessFlow, cluster_access: ClusterAccessFlow) -> None:
        self._access = access
        self._cluster = cluster_access

    async def _messages(self, grants: list[GrantRecord]) -> list[access_pb2.Grant]:
        """The grants' messages, a cluster grant's with what it gives in its cluster."""
        details = await self._cluster.details([g.id for g in grants])
        return [
            convert.with_cluster_access(convert.grant_message(g), details.get(g.id)) for g in grants
        ]

    async def _message(self, grant: GrantRecord) -> access_pb2.Grant:
        return (await self._messages([grant]))[0]

    async def RequestGrant(
        self, request: access_pb2.RequestGrantRequest, context: Context
    ) -> access_pb2.RequestGrantResponse:
        if request.HasField("cluster_access"):
            if request.role:
                raise InvalidRequest("role", "leave it empty when asking for cluster_access")
            wanted = request.cluster_access
            grant = await self._cluster.request(
                operator_of(context),
                cluster=wanted.cluster,
                namespace=wanted.namespace,
                all_namespaces=wanted.all_namespaces,
                cluster_role=wanted.kube_role,
                duration=convert.grant_duration(request),
                reason=request.reason,
                request_id=current_call().request_id,
            )
        else:
            grant = await self._access.request(
                operator_of(context),
                request.role,
                convert.grant_duration(request),
                request.reason,
                current_call().request_id,
            )
        return access_pb2.RequestGrantResponse(grant=await self._message(grant))

    async def ApproveGrant(
        self, request: access_pb2.ApproveGrantRequest, context: Context
    ) -> access_pb2.ApproveGrantResponse:
        grant = await self._access.approve(
            operator_of(context), request.grant_id, current_call().request_id
        )
        return access_pb2.ApproveGrantResponse(grant=await self._message(grant))

    async def DenyGrant(
        self, request: access_pb2.DenyGrantRequest, context: Context
    ) -> access_pb2.DenyGrantResponse:
        grant = await self._access.deny(
            operator_of(context), request.grant_id, current_call().request_id
        )
        return access_pb2.DenyGrantResponse(grant=await self._message(grant))

    async def IssueForGrant(
        self, request: access_pb2.IssueForGrantRequest, context: Context
    ) -> access_pb2.IssueForGrantResponse:
        issued = await self._access.issue(
            operator_of(context), request.grant_id, current_call().request_id
        )
        return convert.grant_credential_response(issued)

    async def RevokeGrant(
        self, request: access_pb2.RevokeGrantRequest, context: Context
    ) -> access_pb2.RevokeGrantResponse:
        ended = await self._access.revoke(
            operator_of(context), request.grant_id, current_call().request_id
        )
        reply = convert.revoke_grant_response(ended)
        reply.grant.CopyFrom(await self._message(ended.grant))
        return reply

    async def ListGrants(
        self, request: access_pb2.ListGrantsRequest, context: Context
    ) -> access_pb2.ListGrantsResponse:
        grants = await self._access.list_grants(
            operator_of(context),
            current_call().request_id,
            states=convert.grant_states(request),
            requester=request.requester or None,
        )
        return access_pb2.ListGrantsResponse(grants=await self._messages(grants))

    async def GetGrant(
        self, request: access_pb2.GetGrantRequest, context: Context
    ) -> access_pb2.GetGrantResponse:
        grant = await self._access.get(
            operator_of(context), request.grant_id, current_call().request_id
        )
        return access_pb2.GetGrantResponse(grant=await self._message(grant))

    async def IssueClusterAccess(
        self, request: access_pb2.IssueClusterAccessRequest, context: Context
    ) -> access_pb2.IssueClusterAccessResponse:
        issued = await self._cluster.issue(
            operator_of(context), request.grant_id, current_call().request_id
        )
        return convert.cluster_credential_response(issued)
