"""RolesService on the admin listener: the role catalog for ops."""

from __future__ import annotations

from typing import Any

import grpc

from broker.api.v1 import roles_pb2, roles_pb2_grpc
from broker.errors import InvalidRequest
from broker.service import RoleCatalog

from . import convert, handlers

Context = grpc.aio.ServicerContext[Any, Any]


class RolesServicer(roles_pb2_grpc.RolesServiceServicer):
    def __init__(self, catalog: RoleCatalog) -> None:
        self._catalog = catalog

    @handlers.unary
    async def ApplyRoles(
        self, request: roles_pb2.ApplyRolesRequest, context: Context
    ) -> roles_pb2.ApplyRolesResponse:
        if not request.roles:
            raise InvalidRequest("roles", "give at least one role")
        saved = await self._catalog.apply(convert.role_specs(list(request.roles)))
        return roles_pb2.ApplyRolesResponse(roles=[convert.role_message(r) for r in saved])

    @handlers.unary
    async def GetRole(
        self, request: roles_pb2.GetRoleRequest, context: Context
    ) -> roles_pb2.GetRoleResponse:
        if not request.name:
            raise InvalidRequest("name", "is required: the role's name")
        stored = await self._catalog.get(request.name)
        return roles_pb2.GetRoleResponse(role=convert.role_message(stored))

    @handlers.unary
    async def ListRoles(
        self, request: roles_pb2.ListRolesRequest, context: Context
    ) -> roles_pb2.ListRolesResponse:
        roles = await self._catalog.list_all()
        return roles_pb2.ListRolesResponse(roles=[convert.role_message(r) for r in roles])

    @handlers.unary
    async def DeleteRole(
        self, request: roles_pb2.DeleteRoleRequest, context: Context
    ) -> roles_pb2.DeleteRoleResponse:
        if not request.name:
            raise InvalidRequest("name", "is required: the role's name")
        await self._catalog.delete(request.name)
        return roles_pb2.DeleteRoleResponse()
