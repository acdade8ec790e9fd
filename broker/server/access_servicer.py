"""AccessService on the admin listener: just-in-time grants for operators, the caller being
the one its client certificate names."""

from __future__ import annotations

from typing import Any

import grpc

from broker.api.v1 import access_pb2, access_pb2_grpc
from broker.service import AccessFlow

from . import convert
from .interceptors import current_call
from .operators import operator_of

Context = grpc.aio.ServicerContext[Any, Any]


class AccessServicer(access_pb2_grpc.AccessServiceServicer):
    def __init__(self, access: AccessFlow) -> None:
        self._access = access

    async def RequestGrant(
        self, request: access_pb2.RequestGrantRequest, context: Context
    ) -> access_pb2.RequestGrantResponse:
        grant = await self._access.request(
            operator_of(context),
            request.role,
            convert.grant_duration(request),
            request.reason,
            current_call().request_id,
        )
        return access_pb2.RequestGrantResponse(grant=convert.grant_message(grant))

    async def ApproveGrant(
        self, request: access_pb2.ApproveGrantRequest, context: Context
    ) -> access_pb2.ApproveGrantResponse:
        grant = await self._access.approve(
            operator_of(context), request.grant_id, current_call().request_id
        )
        return access_pb2.ApproveGrantResponse(grant=convert.grant_message(grant))

    async def DenyGrant(
        self, request: access_pb2.DenyGrantRequest, context: Context
    ) -> access_pb2.DenyGrantResponse:
        grant = await self._access.deny(
            operator_of(context), request.grant_id, current_call().request_id
        )
        return access_pb2.DenyGrantResponse(grant=convert.grant_message(grant))

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
        return convert.revoke_grant_response(ended)

    async def ListGrants(
        self, request: access_pb2.ListGrantsRequest, context: Context
    ) -> access_pb2.ListGrantsResponse:
        grants = await self._access.list_grants(
            operator_of(context),
            current_call().request_id,
            states=convert.grant_states(request),
            requester=request.requester or None,
        )
        return access_pb2.ListGrantsResponse(grants=[convert.grant_message(g) for g in grants])

    async def GetGrant(
        self, request: access_pb2.GetGrantRequest, context: Context
    ) -> access_pb2.GetGrantResponse:
        grant = await self._access.get(
            operator_of(context), request.grant_id, current_call().request_id
        )
        return access_pb2.GetGrantResponse(grant=convert.grant_message(grant))
