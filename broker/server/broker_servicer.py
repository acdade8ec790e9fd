"""BrokerService on the workload listener: decode the call, run the flow, encode the result.

Watch is a bidirectional stream: the requests (Acks) are decoded into the flow's ack
iterator, the flow's events are encoded as they come, and an error the flow raises (token
expired, stream overflowed, refused at open) ends the stream with its mapped status.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import structlog

from broker.api.v1 import broker_pb2, broker_pb2_grpc
from broker.errors import KeyferryError, LimitExceeded
from broker.service import AckMessage, BrokerRuntime, bearer_token

from . import convert, handlers
from .metrics import BrokerMetrics

log = structlog.get_logger("keyferry.server")
Context = grpc.aio.ServicerContext[Any, Any]


def _metadata(context: Context) -> dict[str, str]:
    return {str(key): str(value) for key, value in context.invocation_metadata() or ()}


class BrokerServicer(broker_pb2_grpc.BrokerServiceServicer):
    def __init__(self, runtime: BrokerRuntime, metrics: BrokerMetrics) -> None:
        self._runtime = runtime
        self._metrics = metrics

    @handlers.unary
    async def Issue(
        self, request: broker_pb2.IssueRequest, context: Context
    ) -> broker_pb2.IssueResponse:
        request_id = uuid.uuid4().hex
        with _observed("issue", request_id, self._metrics) as outcome:
            issued = await self._runtime.issue.issue(
                bearer_token(_metadata(context)),
                request.credential_name,
                request.role,
                request_id,
            )
            outcome["value"] = "replayed" if issued.replayed else "issued"
            return convert.issue_response(issued)

    @handlers.unary
    async def Release(
        self, request: broker_pb2.ReleaseRequest, context: Context
    ) -> broker_pb2.ReleaseResponse:
        request_id = uuid.uuid4().hex
        with _observed("release", request_id, self._metrics):
            await self._runtime.release.release(
                bearer_token(_metadata(context)), request.lease_id, request_id
            )
            return broker_pb2.ReleaseResponse()

    @handlers.streaming
    async def Watch(
        self, request_iterator: AsyncIterator[broker_pb2.WatchRequest], context: Context
    ) -> AsyncIterator[broker_pb2.WatchResponse]:
        request_id = uuid.uuid4().hex
        token = bearer_token(_metadata(context))
        self._metrics.watch_streams.inc()
        try:
            events = self._runtime.flows.watch.watch(token, _acks(request_iterator), request_id)
            async for event in events:
                yield convert.watch_response(event)
        except KeyferryError as error:
            self._metrics.watch_ends.labels(error.reason.lower()).inc()
            _refusal_log(error)("watch ended", request_id=request_id, reason=error.reason)
            raise
        finally:
            self._metrics.watch_streams.dec()

    @handlers.unary
    async def Renew(
        self, request: broker_pb2.RenewRequest, context: Context
    ) -> broker_pb2.RenewResponse:
        request_id = uuid.uuid4().hex
        with _observed("renew", request_id, self._metrics):
            renewed = await self._runtime.flows.renew.renew(
                bearer_token(_metadata(context)), request.lease_id, request_id
            )
            return convert.renew_response(renewed)


async def _acks(requests: AsyncIterator[broker_pb2.WatchRequest]) -> AsyncIterator[AckMessage]:
    async for request in requests:
        ack = convert.ack(request)
        if ack is not None:
            yield ack


def _refusal_log(error: KeyferryError) -> Any:
    """Where a refusal is logged: a rate limit or cap at debug (a flood of them would flood
    the log; the metrics count them), anything else at info."""
    return log.debug if isinstance(error, LimitExceeded) else log.info


@contextmanager
def _observed(method: str, request_id: str, metrics: BrokerMetrics) -> Iterator[dict[str, str]]:
    """Count, time and log one call; the body sets outcome["value"] on success."""
    started = time.perf_counter()
    outcome = {"value": "ok"}
    try:
        yield outcome
    except KeyferryError as error:
        outcome["value"] = error.reason.lower()
        _refusal_log(error)(
            f"{method} refused", request_id=request_id, reason=error.reason, error=error.message
        )
        raise
    except Exception:
        outcome["value"] = "internal"
        log.exception(f"{method} failed", request_id=request_id)
        raise
    finally:
        elapsed = time.perf_counter() - started
        metrics.count(method, outcome["value"], elapsed)
        log.debug(f"{method} answered", request_id=request_id, outcome=outcome["value"])
