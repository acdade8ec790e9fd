"""The broker's workload API as the agent uses it: TLS, a bearer token read fresh from the
projected token file on every call and every (re)connect, and gRPC failures mapped once,
through `_mapped`, into the agent's error tree by status code and ErrorInfo reason."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from broker.api.v1 import broker_pb2, broker_pb2_grpc
from injector.terms import BACKOFF_CAP_SECONDS

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


@dataclass(frozen=True)
class Issued:
    """A lease the agent holds and the credential's values (left out of repr, so out of any
    log line or traceback that shows the object)."""

    lease_id: str
    credential_name: str
    generation: int
    expires_at: datetime | None
    values: Mapping[str, str] = field(repr=False)

    def reveal(self) -> dict[str, str]:
        return dict(self.values)


@dataclass(frozen=True)
class Rotated:
    issued: Issued


@dataclass(frozen=True)
class Revoked:
    lease_id: str
    reason: str


@dataclass(frozen=True)
class Expiring:
    lease_id: str
    expires_at: datetime | None


@dataclass(frozen=True)
class Renewed:
    """The broker extended the lease: it now ends at `expires_at`."""

    lease_id: str
    expires_at: datetime


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

    def _metadata(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {read_token(self._token_path)}"),)

    async def issue(self, credential_name: str, role: str) -> Issued:
        request = broker_pb2.IssueRequest(credential_name=credential_name, role=role)
        with _mapped("Issue", credential_name):
            reply = await self._stub.Issue(request, metadata=self._metadata(), timeout=CALL_TIMEOUT)
        return _issued(reply.lease, reply.credential)

    async def release(self, lease_id: str) -> None:
        request = broker_pb2.ReleaseRequest(lease_id=lease_id)
        with _mapped("Release", lease_id):
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
            lease_id=ack.lease_id, generation=ack.generation, restarted_containers=ack.restarted
        )
        yield broker_pb2.WatchRequest(ack=message)


def _issued(lease: broker_pb2.Lease, credential: broker_pb2.Credential) -> Issued:
    return Issued(
        lease_id=lease.id,
        credential_name=lease.credential_name,
        generation=lease.generation,
        expires_at=lease.expires_at.ToDatetime() if lease.HasField("expires_at") else None,
        values=dict(credential.values),
    )


def _event(response: broker_pb2.WatchResponse) -> WatchEvent | None:
    kind = response.WhichOneof("event")
    if kind == "rotated":
        return Rotated(issued=_issued(response.rotated.lease, response.rotated.credential))
    if kind == "revoked":
        return Revoked(lease_id=response.revoked.lease_id, reason=response.revoked.reason)
    if kind == "renewed":
        return Renewed(
            lease_id=response.renewed.lease_id,
            expires_at=response.renewed.expires_at.ToDatetime(),
        )
    if kind != "expiring":
        return None  # an event a newer broker sends: skipped, as docs/api.md asks
    expires = response.expiring.expires_at
    return Expiring(
        lease_id=response.expiring.lease_id,
        expires_at=expires.ToDatetime() if response.expiring.HasField("expires_at") else None,
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
