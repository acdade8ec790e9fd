"""RotationService on the admin listener: rotate and revoke leases on an operator's demand
(by id or by selector, streaming progress) and rotate a database connection's root; the
operator is the one its client certificate names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from broker.api.v1 import rotation_pb2, rotation_pb2_grpc
from broker.service import RevocationFlow, RootRotationFlow, RotationFlow

from . import convert
from .interceptors import current_call
from .operators import operator_of

Context = grpc.aio.ServicerContext[Any, Any]


class RotationServicer(rotation_pb2_grpc.RotationServiceServicer):
    def __init__(
        self, *, rotation: RotationFlow, revocation: RevocationFlow, root: RootRotationFlow
    ) -> None:
        self._rotation = rotation
        self._revocation = revocation
        self._root = root

    async def RotateLeases(
        self, request: rotation_pb2.RotateLeasesRequest, context: Context
    ) -> rotation_pb2.RotateLeasesResponse:
        call = current_call()
        rotations = await self._rotation.rotate(
            operator_of(context),
            list(request.lease_ids),
            convert.rotation_grace(request),
            call.request_id,
        )
        call.outcome = "rotated"
        return convert.rotate_response(rotations)

    async def RotateSelected(
        self, request: rotation_pb2.RotateSelectedRequest, context: Context
    ) -> AsyncIterator[rotation_pb2.RotateSelectedResponse]:
        operator = operator_of(context)
        events = self._rotation.rotate_selected(
            operator,
            convert.lease_selector(request.selector),
            grace=convert.selected_grace(request),
            concurrency=convert.concurrency(request.concurrency),
            dry_run=request.dry_run,
            request_id=current_call().request_id,
        )
        async for event in events:
            yield convert.rotate_selected_response(event)

    async def RevokeSelected(
        self, request: rotation_pb2.RevokeSelectedRequest, context: Context
    ) -> AsyncIterator[rotation_pb2.RevokeSelectedResponse]:
        operator = operator_of(context)
        events = self._revocation.revoke_selected(
            operator,
            convert.lease_selector(request.selector),
            concurrency=convert.concurrency(request.concurrency),
            dry_run=request.dry_run,
            request_id=current_call().request_id,
        )
        async for event in events:
            yield convert.revoke_selected_response(event)

    async def RotateRoot(
        self, request: rotation_pb2.RotateRootRequest, context: Context
    ) -> rotation_pb2.RotateRootResponse:
        rotated = await self._root.rotate_root(
            operator_of(context), convert.root_target(request), current_call().request_id
        )
        return convert.rotate_root_response(rotated)
