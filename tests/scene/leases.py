"""What tests do with a broker's leases beyond Issue: watch them like an agent (Watch +
Ack), rotate one over the admin listener, read its state in the store, and check that its
database login still works."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg
from google.protobuf import duration_pb2

from broker.api.v1 import broker_pb2, rotation_pb2, rotation_pb2_grpc
from broker.store import LeaseState
from tests.bed.postgres import PostgresServer

from .broker import Broker, log_in
from .workloads import bearer

READ = 30.0  # bound of waiting for one Watch event


class Agent:
    """An agent-like Watch client: reads events, sends Acks."""

    def __init__(self, stub: Any, token: Any) -> None:
        self._acks: asyncio.Queue[broker_pb2.WatchRequest | None] = asyncio.Queue()
        self.call = stub.Watch(self._requests(), metadata=bearer(token))

    async def _requests(self) -> AsyncIterator[broker_pb2.WatchRequest]:
        while (request := await self._acks.get()) is not None:
            yield request

    async def next(self) -> broker_pb2.WatchResponse:
        event = await asyncio.wait_for(self.call.read(), READ)
        assert isinstance(event, broker_pb2.WatchResponse), f"stream ended: {event!r}"
        return event

    async def ack(self, lease: broker_pb2.Lease) -> None:
        ack = broker_pb2.Ack(lease_id=lease.id, generation=lease.generation)
        await self._acks.put(broker_pb2.WatchRequest(ack=ack))

    def close(self) -> None:
        self._acks.put_nowait(None)
        self.call.cancel()


async def rotate(broker: Broker, lease_id: str, grace: timedelta) -> rotation_pb2.LeaseRotation:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(grace)
    request = rotation_pb2.RotateLeasesRequest(lease_ids=[lease_id], grace=duration)
    async with broker.admin_channel() as channel:
        stub: Any = rotation_pb2_grpc.RotationServiceStub(channel)
        reply = await stub.RotateLeases(request)
    assert len(reply.rotations) == 1
    rotation: rotation_pb2.LeaseRotation = reply.rotations[0]
    return rotation


def works(postgres: PostgresServer, values: Any) -> bool:
    """Whether the database login in `values` is accepted."""
    try:
        log_in(postgres, values)
    except psycopg.OperationalError:
        return False
    return True


def state_of(broker: Broker, lease_id: str) -> LeaseState:
    store = broker.store()
    try:
        return store.leases.get(lease_id).state
    finally:
        store.close()
