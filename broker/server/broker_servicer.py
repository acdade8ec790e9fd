"""BrokerService on the workload listener: decode the call, run the flow, encode the result.

Watch and Renew are not built yet: they end with UNIMPLEMENTED and a sentence saying so,
never with a fake answer.
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
from broker.errors import KeyferryError
from broker.service import BrokerRuntime, bearer_token

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

    async def Watch(
        self, request_iterator: Any, context: Context
    ) -> AsyncIterator[broker_pb2.WatchResponse]:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "Broker.Watch is not available in this broker yet; call Issue again to get the "
            "live lease",
        )
        yield broker_pb2.WatchResponse()  # pragma: no cover - abort raises

    async def Renew(
        self, request: broker_pb2.RenewRequest, context: Context
    ) -> broker_pb2.RenewResponse:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "Broker.Renew is not available in this broker yet; pods' leases are renewed by "
            "the broker itself",
        )
        raise AssertionError("unreachable")  # abort raises


@contextmanager
def _observed(method: str, request_id: str, metrics: BrokerMetrics) -> Iterator[dict[str, str]]:
    """Count, time and log one call; the body sets outcome["value"] on success."""
    started = time.perf_counter()
    outcome = {"value": "ok"}
    try:
        yield outcome
    except KeyferryError as error:
        outcome["value"] = error.reason.lower()
        log.info(
            f"{method} refused", request_id=request_id, reason=error.reason, error=error.message
        )
        raise
    except Exception:
        outcome["value"] = "internal"
        log.exception(f"{method} failed", request_id=request_id)
        raise
    finally:
        elapsed = time.perf_counter() - started
        if method == "issue":
            metrics.issues.labels(outcome["value"]).inc()
            metrics.issue_seconds.labels(outcome["value"]).observe(elapsed)
        else:
            metrics.releases.labels(outcome["value"]).inc()
        log.debug(f"{method} answered", request_id=request_id, outcome=outcome["value"])
