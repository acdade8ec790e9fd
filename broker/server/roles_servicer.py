"""RolesService on the admin listener: the role catalog for ops, each call decided by Cedar
for the operator its client certificate names (broker.service.admin.roles)."""

from __future__ import annotations

from typing import Any

import grpc

from broker.api.v1 import roles_pb2, roles_pb2_grpc
from broker.errors import InvalidRequest
from broker.service import RoleAdmin

from . import convert
from .interceptors import current_call
from .operators import operator_of

Context = grpc.aio.ServicerContext[Any, Any]


class RolesServicer(roles_pb2_grpc.RolesServiceServicer):
    def __init__(self, roles: RoleAdmin) -> None:
        self._roles = roles

    async def ApplyRoles(
        self, request: roles_pb2.ApplyRolesRequest, context: Context
    ) -> roles_pb2.ApplyRolesResponse:
        if not request.roles:
            raise InvalidRequest("roles", "give at least one role")
        specs = convert.role_specs(list(request.roles))
        saved = await self._roles.apply(operator_of(context), specs, current_call().request_id)
        return roles_pb2.ApplyRolesResponse(roles=[convert.role_message(r) for r in saved])

    async def GetRole(
        self, request: roles_pb2.GetRoleRequest, context: Context
    ) -> roles_pb2.GetRoleResponse:
        if not request.name:
            raise InvalidRequest("name", "is required: the role's name")
        stored = await self._roles.get(
            operator_of(context), request.name, current_call().request_id
        )
        return roles_pb2.GetRoleResponse(role=convert.role_message(stored))

    async def ListRoles(
        self, request: roles_pb2.ListRolesRequest, context: Context
    ) -> roles_pb2.ListRolesResponse:
        roles = await self._roles.list_all(operator_of(context), current_call().request_id)
        return roles_pb2.ListRolesResponse(roles=[convert.role_message(r) for r in roles])

    async def DeleteRole(
        self, request: roles_pb2.DeleteRoleRequest, context: Context
    ) -> roles_pb2.DeleteRoleResponse:
        if not request.name:
            raise InvalidRequest("name", "is required: the role's name")
        await self._roles.delete(operator_of(context), request.name, current_call().request_id)
        return roles_pb2.DeleteRoleResponse()
