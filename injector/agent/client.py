"""The broker's workload API as the agent uses it: TLS, a bearer token read fresh from the
projected token file on every call and every (re)connect, and gRPC failures mapped once,
through `_mapped`, into the agent's error tree by status code and ErrorInfo reason.

The calls carry bytes: the agent writes and reads the messages itself (messages.py), so its
process loads neither protobuf nor the generated modules.

With tracing on (`injector.agent.tracing`) Issue and Release are client spans whose
traceparent goes in the call's metadata; a Watch event carries the broker's push span
(`trace`), and an Ack carries the span of the agent's handling of its event, so a rotation
is one trace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc

from injector.terms import BACKOFF_CAP_SECONDS

from . import messages, tracing
from .errors import BrokerLimited, BrokerRefused, BrokerUnavailable, WatchUnsupported
from .messages import Ack, Expiring, Issued, MessageError, Renewed, Revoked, Rotated, WatchEvent
from .token import read_token

__all__ = [
    "Ack",
    "BrokerClient",
    "Expiring",
    "Issued",
    "Renewed",
    "Revoked",
    "Rotated",
    "WatchEvent",
]

_T = TypeVar("_T")

STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""The trailer carrying a refusal's google.rpc.Status (its ErrorInfo and RetryInfo)."""

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
        # Bytes in and out: the agent writes and reads the messages itself (messages.py).
        self._issue: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(
            messages.SERVICE + "Issue"
        )
        self._release: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(
            messages.SERVICE + "Release"
        )
        self._watch: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = self._channel.stream_stream(
            messages.SERVICE + "Watch"
        )
        self._token_path = token_path

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        """The bearer token, and the current span's traceparent when tracing is on."""
        return (("authorization", f"Bearer {read_token(self._token_path)}"), *tracing.metadata())

    async def issue(self, credential_name: str, role: str) -> Issued:
        request = messages.issue_request(credential_name, role)
        attributes = {"keyferry.credential": credential_name, "keyferry.role": role}
        with (
            tracing.span("BrokerService/Issue", attributes, kind="client") as span,
            _mapped("Issue", credential_name),
        ):
            reply = await self._issue(request, metadata=self._metadata(), timeout=CALL_TIMEOUT)
            issued = _decoded("Issue", credential_name, messages.issue_response, reply)
            span.set("keyferry.lease_id", issued.lease_id)
            span.set("keyferry.generation", issued.generation)
        return issued

    async def release(self, lease_id: str) -> None:
        request = messages.release_request(lease_id)
        with (
            tracing.span("BrokerService/Release", {"keyferry.lease_id": lease_id}, kind="client"),
            _mapped("Release", lease_id),
        ):
            reply = await self._release(request, metadata=self._metadata(), timeout=CALL_TIMEOUT)
            _decoded("Release", lease_id, messages.release_response, reply)

    async def watch(self, acks: asyncio.Queue[Ack]) -> AsyncIterator[WatchEvent]:
        """The Watch stream's events; every Ack put on `acks` is sent up."""
        call: Any = self._watch(_ack_requests(acks), metadata=self._metadata())
        try:
            while True:
                with _mapped("Watch", "stream"):
                    response = await call.read()
                if response is grpc.aio.EOF:
                    return
                try:
                    event = messages.watch_response(response)
                except MessageError as exc:
                    raise BrokerUnavailable(
                        f"Broker.Watch (stream): a malformed WatchResponse: {exc}", "INTERNAL"
                    ) from exc
                if event is not None:
                    yield event
        finally:
            call.cancel()

    async def close(self) -> None:
        await self._channel.close()


async def _ack_requests(acks: asyncio.Queue[Ack]) -> AsyncIterator[bytes]:
    while True:
        yield messages.watch_request(await acks.get())


def _decoded(method: str, subject: str, decode: Callable[[bytes], _T], reply: bytes) -> _T:
    """The reply read by `decode`; a malformed one is a refusal (a broker that answers
    what it cannot mean is not retried into)."""
    try:
        return decode(reply)
    except MessageError as exc:
        raise BrokerRefused(
            f"Broker.{method} ({subject}): a malformed reply: {exc}", "INTERNAL"
        ) from exc


def _details(error: grpc.aio.AioRpcError) -> tuple[str, float | None]:
    """The ErrorInfo reason ("" when none) and the RetryInfo delay in seconds (None)."""
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return messages.status_details(value)
            except MessageError:
                break
    return "", None


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
