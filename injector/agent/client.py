"""The broker's workload API as the agent uses it: TLS, a bearer token read fresh from the
projected token file on every call and every (re)connect, and gRPC failures mapped once,
through `_mapped`, into the agent's error tree by status code and ErrorInfo reason.

With tracing on (broker.tracing) Issue and Release are client spans whose traceparent goes
in the call's metadata; a Watch event carries the broker's push span (`trace`), and an Ack
carries the span of the agent's handling of its event, so a rotation is one trace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pydantic import BaseModel, ConfigDict, SecretStr

from broker import tracing
from broker.api.v1 import broker_pb2, broker_pb2_grpc
from injector.contract import BACKOFF_CAP_SECONDS

from .errors import BrokerLimited, BrokerRefused, BrokerUnavailable, WatchUnsupported
from .token import read_token

if TYPE_CHECKING:
    from broker.api.v1.broker_pb2_grpc import BrokerServiceAsyncStub


class Ack(NamedTuple):
    """What the agent sends up the Watch stream: the generation in place, and the app
    containers it restarted to put it in use (empty unless `on-rotate: restart`)."""

    lease_id: str
    generation: int
    restarted: tuple[str, ...] = ()
    trace: str = ""
    """The traceparent of the agent's span that handled the event ("": untraced)."""


CALL_TIMEOUT = 20.0
"""Seconds for Issue and Release; the broker itself waits up to 15 s for a pending lease."""
RECONNECT_CAP = BACKOFF_CAP_SECONDS
"""The channel's own reconnect backoff ceiling, in seconds: the agent passes its own backoff
cap (the spec's `backoff_cap_seconds`, default 30 s). gRPC's default is 120 s: after a long
broker outage the channel could sit out two minutes more before even trying, whatever the
agent's own backoff says."""
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)


class Issued(BaseModel):
    """A lease the agent holds and the credential's values (hidden from repr and logs)."""

    model_config = ConfigDict(frozen=True)

    lease_id: str
    credential_name: str
    generation: int
    expires_at: datetime | None
    values: dict[str, SecretStr]

    def reveal(self) -> dict[str, str]:
        return {key: value.get_secret_value() for key, value in self.values.items()}


class Rotated(BaseModel):
    model_config = ConfigDict(frozen=True)
    issued: Issued
    trace: str = ""
    """The broker's push span as a W3C traceparent ("": untraced); on every event."""


class Revoked(BaseModel):
    model_config = ConfigDict(frozen=True)
    lease_id: str
    reason: str
    trace: str = ""


class Expiring(BaseModel):
    model_config = ConfigDict(frozen=True)
    lease_id: str
    expires_at: datetime | None
    trace: str = ""


class Renewed(BaseModel):
    """The broker extended the lease: it now ends at `expires_at`."""

    model_config = ConfigDict(frozen=True)
    lease_id: str
    expires_at: datetime
    trace: str = ""


WatchEvent = Rotated | Revoked | Expiring | Renewed


class BrokerClient:
    """One channel to the broker's workload listener."""

    def __init__(
        self,
        address: str,
        ca_pem: str | None,
        token_path: Path,
        *,
        reconnect_cap: float = RECONNECT_CAP,
    ) -> None:
        self.reconnect_cap = reconnect_cap
        root = ca_pem.encode() if ca_pem else None
        options = [
            ("grpc.initial_reconnect_backoff_ms", int(min(1.0, reconnect_cap) * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(reconnect_cap * 1000)),
        ]
        self._channel = grpc.aio.secure_channel(
            address, grpc.ssl_channel_credentials(root_certificates=root), options=options
        )
        self._stub: BrokerServiceAsyncStub = broker_pb2_grpc.BrokerServiceStub(self._channel)
        self._token_path = token_path

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        """The bearer token, and the current span's traceparent when tracing is on."""
        return (("authorization", f"Bearer {read_token(self._token_path)}"), *tracing.metadata())

    async def issue(self, credential_name: str, role: str) -> Issued:
        request = broker_pb2.IssueRequest(credential_name=credential_name, role=role)
        attributes = {"keyferry.credential": credential_name, "keyferry.role": role}
        with (
            tracing.span("BrokerService/Issue", attributes, kind="client") as span,
            _mapped("Issue", credential_name),
        ):
            reply = await self._stub.Issue(request, metadata=self._metadata(), timeout=CALL_TIMEOUT)
            span.set("keyferry.lease_id", reply.lease.id)
            span.set("keyferry.generation", reply.lease.generation)
        return _issued(reply.lease, reply.credential)

    async def release(self, lease_id: str) -> None:
        request = broker_pb2.ReleaseRequest(lease_id=lease_id)
        with (
            tracing.span("BrokerService/Release", {"keyferry.lease_id": lease_id}, kind="client"),
            _mapped("Release", lease_id),
        ):
            await self._stub.Release(request, metadata=self._metadata(), timeout=CALL_TIMEOUT)

    async def watch(self, acks: asyncio.Queue[Ack]) -> AsyncIterator[WatchEvent]:
        """The Watch stream's events; every Ack put on `acks` is sent up."""
        call: Any = self._stub.Watch(_ack_requests(acks), metadata=self._metadata())
        try:
            while True:
                with _mapped("Watch", "stream"):
                    response = await call.read()
                if response is grpc.aio.EOF:
                    return
                event = _event(response)
                if event is not None:
                    yield event
        finally:
            call.cancel()

    async def close(self) -> None:
        await self._channel.close()


async def _ack_requests(
    acks: asyncio.Queue[Ack],
) -> AsyncIterator[broker_pb2.WatchRequest]:
    while True:
        ack = await acks.get()
        message = broker_pb2.Ack(
            lease_id=ack.lease_id,
            generation=ack.generation,
            restarted_containers=ack.restarted,
            traceparent=ack.trace,
        )
        yield broker_pb2.WatchRequest(ack=message)


def _issued(lease: broker_pb2.Lease, credential: broker_pb2.Credential) -> Issued:
    return Issued(
        lease_id=lease.id,
        credential_name=lease.credential_name,
        generation=lease.generation,
        expires_at=lease.expires_at.ToDatetime() if lease.HasField("expires_at") else None,
        values={key: SecretStr(value) for key, value in credential.values.items()},
    )


def _event(response: broker_pb2.WatchResponse) -> WatchEvent | None:
    kind = response.WhichOneof("event")
    trace = tracing.received(response.traceparent)
    if kind == "rotated":
        issued = _issued(response.rotated.lease, response.rotated.credential)
        return Rotated(issued=issued, trace=trace)
    if kind == "revoked":
        revoked = response.revoked
        return Revoked(lease_id=revoked.lease_id, reason=revoked.reason, trace=trace)
    if kind == "renewed":
        return Renewed(
            lease_id=response.renewed.lease_id,
            expires_at=response.renewed.expires_at.ToDatetime(),
            trace=trace,
        )
    if kind != "expiring":
        return None  # an event a newer broker sends: skipped, as docs/api.md asks
    expires = response.expiring.expires_at
    return Expiring(
        lease_id=response.expiring.lease_id,
        expires_at=expires.ToDatetime() if response.expiring.HasField("expires_at") else None,
        trace=trace,
    )


def _details(error: grpc.aio.AioRpcError) -> tuple[str, float | None]:
    """The ErrorInfo reason ("" when none) and the RetryInfo delay in seconds (None)."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        return "", None
    reason, retry_after = "", None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = str(info.reason)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    return reason, retry_after


@contextmanager
def _mapped(method: str, subject: str) -> Iterator[None]:
    """gRPC errors as the agent's typed errors, by status code (never by message text)."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        message = f"Broker.{method} ({subject}): {code.name}: {exc.details() or ''}"
        reason, retry_after = _details(exc)
        args = (message, code.name, reason)
        if code == grpc.StatusCode.UNIMPLEMENTED and method == "Watch":
            raise WatchUnsupported(*args) from exc
        if code in RETRYABLE:
            raise BrokerUnavailable(*args, retry_after=retry_after) from exc
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise BrokerLimited(*args, retry_after=retry_after) from exc
        raise BrokerRefused(*args) from exc
