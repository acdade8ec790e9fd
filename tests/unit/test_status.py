"""Errors cross a real gRPC connection as codes with ErrorInfo reasons and retry hints (the
call interceptor maps them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from broker import errors
from broker.api.v1 import broker_pb2, broker_pb2_grpc
from broker.server.interceptors import CallInterceptor
from broker.server.metrics import BrokerMetrics
from broker.server.status import reason_of

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    from broker.api.v1.broker_pb2_grpc import BrokerServiceAsyncStub as Stub

RAISES: dict[str, errors.KeyferryError] = {
    "bad-field": errors.InvalidRequest("credential_name", "must be a file name; drop the '/'"),
    "denied": errors.PermissionDenied("no policy permits issue of role 'x'"),
    "vault-down": errors.VaultUnavailable("Vault did not answer", retry_after=2.5),
}


class FailingBroker(broker_pb2_grpc.BrokerServiceServicer):
    async def Issue(
        self, request: broker_pb2.IssueRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> broker_pb2.IssueResponse:
        raise RAISES[request.role]

    async def Watch(
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[broker_pb2.WatchResponse]:
        yield broker_pb2.WatchResponse(revoked=broker_pb2.Revoked(lease_id="l1", reason="test"))
        raise errors.Unauthenticated("the token expired; reconnect with a fresh one")

    async def Release(self, request: Any, context: Any) -> broker_pb2.ReleaseResponse:
        raise errors.NotFound(f"lease {request.lease_id!r} does not exist")

    async def Renew(self, request: Any, context: Any) -> broker_pb2.RenewResponse:
        raise errors.NotFound(f"lease {request.lease_id!r} does not exist")


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    server = grpc.aio.server(interceptors=[CallInterceptor(BrokerMetrics(lambda: 0.0))])
    broker_pb2_grpc.add_BrokerServiceServicer_to_server(FailingBroker(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub: Stub = broker_pb2_grpc.BrokerServiceStub(channel)
            yield stub
    finally:
        await server.stop(None)


@pytest.mark.parametrize(
    ("role", "code", "reason"),
    [
        ("bad-field", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD"),
        ("denied", grpc.StatusCode.PERMISSION_DENIED, "POLICY_DENIED"),
        ("vault-down", grpc.StatusCode.UNAVAILABLE, "VAULT_UNAVAILABLE"),
    ],
)
async def test_unary_errors_map_to_codes_and_reasons(
    stub: Stub, role: str, code: grpc.StatusCode, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Issue(broker_pb2.IssueRequest(credential_name="db", role=role))
    assert failed.value.code() == code
    assert failed.value.details() == RAISES[role].message
    assert reason_of(failed.value) == reason


async def test_a_temporary_error_carries_its_retry_delay(
    stub: Stub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Issue(broker_pb2.IssueRequest(credential_name="db", role="vault-down"))
    status = rpc_status.from_call(failed.value)
    assert status is not None
    retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    info = error_details_pb2.RetryInfo()
    retry[0].Unpack(info)
    assert info.retry_delay.ToMilliseconds() == 2500


async def test_a_stream_ends_with_the_mapped_status(
    stub: Stub,
) -> None:
    call = stub.Watch(iter([]))
    first = await call.read()
    assert isinstance(first, broker_pb2.WatchResponse)
    assert first.revoked.lease_id == "l1"
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call.read()
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(failed.value) == "TOKEN_INVALID"
