"""BrokerService on the workload listener: decode the call, run the flow, encode the result.

Watch is a bidirectional stream: the requests (Acks) are decoded into the flow's ack
iterator, the flow's events are encoded as they come, and an error the flow raises (token
expired, stream overflowed, refused at open) ends the stream with its mapped status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from broker.api.v1 import broker_pb2, broker_pb2_grpc
from broker.errors import KeyferryError
from broker.service import (
    AckMessage,
    IssueFlow,
    ReleaseFlow,
    RenewFlow,
    WatchFlow,
    bearer_token,
)

from . import convert
from .interceptors import current_call
from .metrics import BrokerMetrics

Context = grpc.aio.ServicerContext[Any, Any]


def _metadata(context: Context) -> dict[str, str]:
    return {str(key): str(value) for key, value in context.invocation_metadata() or ()}


class BrokerServicer(broker_pb2_grpc.BrokerServiceServicer):
    def __init__(
        self,
        *,
        issue: IssueFlow,
        release: ReleaseFlow,
        watch: WatchFlow,
        renew: RenewFlow,
        metrics: BrokerMetrics,
    ) -> None:
        self._issue = issue
        self._release = release
        self._watch = watch
        self._renew = renew
        self._metrics = metrics

    async def Issue(
        self, request: broker_pb2.IssueRequest, context: Context
    ) -> broker_pb2.IssueResponse:
        call = current_call()
        issued = await self._issue.issue(
            bearer_token(_metadata(context)),
            request.credential_name,
            request.role,
            call.request_id,
        )
        call.outcome = "replayed" if issued.replayed else "issued"
        return convert.issue_response(issued)

    async def Release(
        self, request: broker_pb2.ReleaseRequest, context: Context
    ) -> broker_pb2.ReleaseResponse:
        await self._release.release(
            bearer_token(_metadata(context)), request.lease_id, current_call().request_id
        )
        return broker_pb2.ReleaseResponse()

    async def Watch(
        self, request_iterator: AsyncIterator[broker_pb2.WatchRequest], context: Context
    ) -> AsyncIterator[broker_pb2.WatchResponse]:
        request_id = current_call().request_id
        token = bearer_token(_metadata(context))
        self._metrics.watch_streams.inc()
        try:
            acks = _acks(request_iterator, self._metrics.restart_acks.inc)
            events = self._watch.watch(token, acks, request_id)
            async for event in events:
                yield convert.watch_response(event)
        except KeyferryError as error:
            self._metrics.watch_ends.labels(error.reason.lower()).inc()
            raise
        finally:
            self._metrics.watch_streams.dec()

    async def Renew(
        self, request: broker_pb2.RenewRequest, context: Context
    ) -> broker_pb2.RenewResponse:
        renewed = await self._renew.renew(
            bearer_token(_metadata(context)), request.lease_id, current_call().request_id
        )
        return convert.renew_response(renewed)


async def _acks(
    requests: AsyncIterator[broker_pb2.WatchRequest], restarted: Callable[[], None]
) -> AsyncIterator[AckMessage]:
    async for request in requests:
        ack = convert.ack(request)
        if ack is not None:
            if ack.restarted:
                restarted()
            yield ack
