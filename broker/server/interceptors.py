"""What every gRPC call gets, written once: a request id, the calling peer, metrics, a log
line, and the mapping of the broker's error tree to a status.

`CallInterceptor` wraps each method handler of a server it is installed on (both
listeners, every service, unary and streaming alike), so a new method cannot forget any of
it. A servicer reads its call's request id from `current_call()` and may name a success
outcome there ("issued", "replayed"); a `KeyferryError` it raises ends the call with the
status `status.to_status` maps it to, and its reason (in lowercase) is the outcome. Each call
is also one server span (broker.tracing, when tracing is on), the child of the caller's span
when the call's metadata carries a W3C traceparent; the service's steps are its children.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
import structlog

from broker import tracing
from broker.errors import KeyferryError, LimitExceeded
from broker.service import CALLER_PEER

from .metrics import BrokerMetrics
from .status import to_status

log = structlog.get_logger("keyferry.server")
Context = grpc.aio.ServicerContext[Any, Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the stubs

OK = "ok"
INTERNAL = "internal"
CANCELLED = "cancelled"
ABORTED = "aborted"


@dataclass
class Call:
    """One served call: its method label ("BrokerService/Issue"), the request id minted for
    it, and its outcome (`OK` unless the servicer names another or it fails)."""

    method: str
    request_id: str
    outcome: str = OK

    def event(self, what: str) -> str:
        """A log event about the call, named by its method in snake case: "issue refused",
        "rotate_leases answered"."""
        name = self.method.rpartition("/")[2]
        return f"{re.sub(r'(?<!^)(?=[A-Z])', '_', name).lower()} {what}"


_CALL: ContextVar[Call | None] = ContextVar("keyferry_call", default=None)


def current_call() -> Call:
    """The call being served; each RPC runs in a task of its own, so this is its call."""
    call = _CALL.get()
    if call is None:
        raise RuntimeError("no gRPC call in progress: is the CallInterceptor installed?")
    return call


def method_label(full_method: str) -> str:
    """`/broker.api.v1.BrokerService/Issue` -> `BrokerService/Issue`."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return f"{service.rsplit('.', 1)[-1]}/{method}"


Admit = Callable[[Context], None]


class CallInterceptor(grpc.aio.ServerInterceptor):
    """`admit`, when given, runs first in every call and may refuse it by raising a
    KeyferryError (the admin listener's operator deny-list)."""

    def __init__(self, metrics: BrokerMetrics, admit: Admit | None = None) -> None:
        self._metrics = metrics
        self._admit = admit

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = method_label(handler_call_details.method)
        for kind, build in _KINDS.items():
            behavior = getattr(handler, kind)
            if _is_async(behavior):
                return build(
                    self._wrap(method, behavior),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler

    def _wrap(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
                call, started = self._begin(method, context)
                with _server_span(call, context) as span:
                    try:
                        self._admitted(context)
                        async for item in behavior(request, context):
                            yield item
                    except BaseException as error:
                        await self._failed_traced(call, started, error, context, span)
                        raise
                    self._end(call, started)
                    span.set("keyferry.outcome", call.outcome)

            return stream

        async def unary(request: Any, context: Context) -> Any:
            call, started = self._begin(method, context)
            with _server_span(call, context) as span:
                try:
                    self._admitted(context)
                    response = await behavior(request, context)
                except BaseException as error:
                    await self._failed_traced(call, started, error, context, span)
                    raise
                self._end(call, started)
                span.set("keyferry.outcome", call.outcome)
                return response

        return unary

    def _admitted(self, context: Context) -> None:
        if self._admit is not None:
            self._admit(context)

    @staticmethod
    def _begin(method: str, context: Context) -> tuple[Call, float]:
        call = Call(method, uuid.uuid4().hex)
        _CALL.set(call)
        CALLER_PEER.set(context.peer())
        structlog.contextvars.bind_contextvars(request_id=call.request_id)
        return call, time.perf_counter()

    async def _failed_traced(
        self,
        call: Call,
        started: float,
        error: BaseException,
        context: Context,
        span: tracing.Span,
    ) -> None:
        if isinstance(error, KeyferryError):
            span.set("keyferry.reason", error.reason)
        try:
            await self._failed(call, started, error, context)
        finally:
            span.set("keyferry.outcome", call.outcome)

    async def _failed(
        self, call: Call, started: float, error: BaseException, context: Context
    ) -> None:
        """Name the outcome, log and count it, and end a KeyferryError's call with its
        status (which raises; the caller re-raises anything else). Counted first: the
        client may see the status before an abort returns."""
        if isinstance(error, KeyferryError):
            call.outcome = error.reason.lower()
            refused = log.debug if isinstance(error, LimitExceeded) else log.info
            refused(
                call.event("refused"), method=call.method, reason=error.reason, error=error.message
            )
            self._end(call, started)
            await context.abort_with_status(to_status(error))
            return
        if isinstance(error, asyncio.CancelledError | GeneratorExit):
            call.outcome = CANCELLED
        elif isinstance(error, grpc.aio.AbortError):
            call.outcome = ABORTED
        else:
            call.outcome = INTERNAL
            log.error(call.event("failed"), method=call.method, exc_info=error)
        self._end(call, started)

    def _end(self, call: Call, started: float) -> None:
        self._metrics.record(call.method, call.outcome, time.perf_counter() - started)
        log.debug(call.event("answered"), method=call.method, outcome=call.outcome)


def _server_span(call: Call, context: Context) -> AbstractContextManager[tracing.Span]:
    """The call's server span, the child of the caller's span when its metadata carries a
    W3C traceparent (the agent's, the admin CLI's)."""
    if not tracing.enabled():
        return tracing.span(call.method)  # the shared no-op
    parent = next(
        (
            str(value)
            for key, value in context.invocation_metadata() or ()
            if key == tracing.TRACEPARENT
        ),
        None,
    )
    service, _, name = call.method.partition("/")
    attributes = {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": name,
        "keyferry.request_id": call.request_id,
    }
    return tracing.span(call.method, attributes, parent=parent, kind="server")


def _is_async(behavior: Callable[..., Any] | None) -> bool:
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


_KINDS: dict[str, Callable[..., Handler]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}
