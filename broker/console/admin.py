"""The admin API as the console's pages call it: one mutual-TLS channel to the broker's
admin listener with the operator's certificate, opened on the server's event loop on first
use. A call the broker refuses raises `Refused` with the broker's own sentence and reason
(a Cedar denial, a self-approval, an invalid field), which the page shows as it is."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from broker.api.v1 import (
    access_pb2,
    access_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    clusters_pb2,
    clusters_pb2_grpc,
    leases_pb2,
    leases_pb2_grpc,
    rotation_pb2,
    rotation_pb2_grpc,
)

TIMEOUT = 30.0


class Refused(Exception):
    """The broker refused a call, or did not answer."""

    def __init__(self, message: str, reason: str | None, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class Target:
    """Where the admin listener is and how to reach it: the CLI context's address, the
    channel credentials built from its CA and the operator's certificate, and the name to
    check on the broker's certificate when set."""

    address: str
    credentials: grpc.ChannelCredentials
    server_name: str | None = None


def refused(error: grpc.RpcError) -> Refused:
    code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
    details = error.details() if isinstance(error, grpc.aio.AioRpcError) else str(error)
    reason = _reason(error)
    name = code.name if code is not None else "UNKNOWN"
    if code == grpc.StatusCode.UNAVAILABLE and reason is None:
        details = f"the broker did not answer: {details}"
    return Refused(details or name, reason, name)


def _reason(error: grpc.RpcError) -> str | None:
    try:
        status = rpc_status.from_call(error)
    except (ValueError, AttributeError):
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return None


class AdminClient:
    def __init__(self, target: Target) -> None:
        self._target = target
        self._channel: grpc.aio.Channel | None = None

    def _open(self) -> grpc.aio.Channel:
        if self._channel is None:
            options = []
            if self._target.server_name:
                options.append(("grpc.ssl_target_name_override", self._target.server_name))
            self._channel = grpc.aio.secure_channel(
                self._target.address, self._target.credentials, options
            )
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _unary(self, stub_type: Any, method: str, request: Any) -> Any:
        stub = stub_type(self._open())
        try:
            return await getattr(stub, method)(request, timeout=TIMEOUT)
        except grpc.RpcError as error:
            raise refused(error) from None

    async def clusters(self) -> list[clusters_pb2.Cluster]:
        reply = await self._unary(
            clusters_pb2_grpc.ClustersServiceStub,
            "ListClusters",
            clusters_pb2.ListClustersRequest(),
        )
        return list(reply.clusters)

    async def count_leases(
        self,
        selector: rotation_pb2.LeaseSelector,
        *,
        states: Sequence[str] = (),
        group_by: Sequence[str] = (),
    ) -> leases_pb2.CountLeasesResponse:
        request = leases_pb2.CountLeasesRequest(
            selector=selector, states=list(states), group_by=list(group_by)
        )
        reply: leases_pb2.CountLeasesResponse = await self._unary(
            leases_pb2_grpc.LeasesServiceStub, "CountLeases", request
        )
        return reply

    async def list_leases(
        self, selector: rotation_pb2.LeaseSelector, states: Sequence[str], page_token: str
    ) -> leases_pb2.ListLeasesResponse:
        request = leases_pb2.ListLeasesRequest(
            selector=selector, states=list(states), page_size=100, page_token=page_token
        )
        reply: leases_pb2.ListLeasesResponse = await self._unary(
            leases_pb2_grpc.LeasesServiceStub, "ListLeases", request
        )
        return reply

    async def activity(self, hours: int) -> audit_pb2.AuditActivityResponse:
        reply: audit_pb2.AuditActivityResponse = await self._unary(
            audit_pb2_grpc.AuditServiceStub,
            "AuditActivity",
            audit_pb2.AuditActivityRequest(hours=hours),
        )
        return reply

    async def audit_records(
        self, request: audit_pb2.ListAuditRecordsRequest
    ) -> audit_pb2.ListAuditRecordsResponse:
        reply: audit_pb2.ListAuditRecordsResponse = await self._unary(
            audit_pb2_grpc.AuditServiceStub, "ListAuditRecords", request
        )
        return reply

    async def verify(self) -> audit_pb2.VerifyAuditResponse:
        reply: audit_pb2.VerifyAuditResponse = await self._unary(
            audit_pb2_grpc.AuditServiceStub, "VerifyAudit", audit_pb2.VerifyAuditRequest()
        )
        return reply

    async def grants(self) -> list[access_pb2.Grant]:
        reply = await self._unary(
            access_pb2_grpc.AccessServiceStub, "ListGrants", access_pb2.ListGrantsRequest()
        )
        return list(reply.grants)

    async def decide_grant(self, verb: str, grant_id: str) -> access_pb2.Grant:
        """Approve, deny or revoke a grant."""
        method, request = {
            "approve": ("ApproveGrant", access_pb2.ApproveGrantRequest(grant_id=grant_id)),
            "deny": ("DenyGrant", access_pb2.DenyGrantRequest(grant_id=grant_id)),
            "revoke": ("RevokeGrant", access_pb2.RevokeGrantRequest(grant_id=grant_id)),
        }[verb]
        reply = await self._unary(access_pb2_grpc.AccessServiceStub, method, request)
        grant: access_pb2.Grant = reply.grant
        return grant

    async def selected(
        self, verb: str, selector: rotation_pb2.LeaseSelector, *, dry_run: bool
    ) -> AsyncIterator[Any]:
        """The events of RotateSelected or RevokeSelected (`verb` rotate or revoke)."""
        stub = rotation_pb2_grpc.RotationServiceStub(self._open())
        call: Any
        if verb == "rotate":
            call = stub.RotateSelected(
                rotation_pb2.RotateSelectedRequest(selector=selector, dry_run=dry_run)
            )
        else:
            call = stub.RevokeSelected(
                rotation_pb2.RevokeSelectedRequest(selector=selector, dry_run=dry_run)
            )
        try:
            async for event in call:
                yield event
        except grpc.RpcError as error:
            raise refused(error) from None
