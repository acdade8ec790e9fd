"""RotationService on the admin listener: rotate leases on an operator's demand; the
operator is the one its client certificate names."""

from __future__ import annotations

import uuid
from typing import Any

import grpc

from broker.api.v1 import rotation_pb2, rotation_pb2_grpc
from broker.errors import KeyferryError
from broker.service import BrokerRuntime

from . import convert, handlers
from .metrics import BrokerMetrics
from .operators import operator_of

Context = grpc.aio.ServicerContext[Any, Any]


class RotationServicer(rotation_pb2_grpc.RotationServiceServicer):
    def __init__(self, runtime: BrokerRuntime, metrics: BrokerMetrics) -> None:
        self._runtime = runtime
        self._metrics = metrics

    @handlers.unary
    async def RotateLeases(
        self, request: rotation_pb2.RotateLeasesRequest, context: Context
    ) -> rotation_pb2.RotateLeasesResponse:
        outcome = "rotated"
        try:
            rotations = await self._runtime.flows.rotation.rotate(
                operator_of(context),
                list(request.lease_ids),
                convert.rotation_grace(request),
                uuid.uuid4().hex,
            )
        except KeyferryError as error:
            outcome = error.reason.lower()
            raise
        finally:
            self._metrics.count("rotate", outcome, 0.0)
        return convert.rotate_response(rotations)
