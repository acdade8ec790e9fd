"""Rotation at fleet scale: a new KV version fanned out to many watchers, and database
leases rotated in bulk against direct hvac issuance at the same concurrency.

Watchers here are real Watch streams from this process (several per TLS channel, as many
pods' agents would share nothing but the broker): each receives the pushed credential,
swaps a file (write, fsync, rename) and sends its Ack, exactly as the agent does. Real
agent processes are measured in footprint.py, which is bounded by their memory.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac

from broker.api.v1 import broker_pb2, rotation_pb2_grpc
from tests.scene.kube_helpers import BoundToken
from tests.scene.leases import Agent
from tests.scene.workloads import bearer, broker_stub

from .served import BrokerProcess
from .workloads import ROTATE_BATCH, Run, _swap, retried, rotate_batch

STREAMS_PER_CHANNEL = 25
FANOUT_READ = 600.0  # a thousand rotations on 2 shared cores can take minutes


@dataclass
class Watcher:
    agent: Agent
    lease: broker_pb2.Lease
    cluster: str


@dataclass
class FanOut:
    """Seconds from the new version written to each watcher's Ack; batch replies too."""

    to_ack: list[float] = field(default_factory=list)
    reply_to_ack: list[float] = field(default_factory=list)
    watchers: int = 0
    clusters: dict[str, int] = field(default_factory=dict)
    calls: int = 0


async def open_watchers(
    stack: AsyncExitStack,
    broker: BrokerProcess,
    tokens: Sequence[BoundToken],
    role: str,
    credential: str,
) -> list[Watcher]:
    """Issue one lease per pod and hold one Watch stream per pod (snapshot read)."""
    stubs: list[Any] = []
    for _ in range(0, len(tokens), STREAMS_PER_CHANNEL):
        stubs.append(await stack.enter_async_context(broker_stub(broker.port, broker.ca)))
    request = broker_pb2.IssueRequest(credential_name=credential, role=role)

    async def one(index: int, token: BoundToken) -> Watcher:
        stub = stubs[index // STREAMS_PER_CHANNEL]
        issued = await stub.Issue(request, metadata=bearer(token))
        agent = Agent(stub, token)
        stack.callback(agent.close)
        snapshot = await agent.next()  # one event per active lease of the pod
        while snapshot.rotated.lease.credential_name != credential:
            snapshot = await agent.next()
        assert snapshot.rotated.lease.id == issued.lease.id
        return Watcher(agent, issued.lease, token.cluster)

    watchers: list[Watcher] = []
    for start in range(0, len(tokens), 50):  # a bounded burst of Issue calls at a time
        chunk = tokens[start : start + 50]
        watchers += await asyncio.gather(*(one(start + i, token) for i, token in enumerate(chunk)))
    return watchers


async def kv_fanout(
    broker: BrokerProcess,
    root: hvac.Client,
    tokens: Sequence[BoundToken],
    *,
    role: str,
    credential: str,
    mount: str,
    path: str,
) -> FanOut:
    """Write a new KV version, rotate every watcher's lease (RotateLeases, 100 ids a call,
    all calls at once) and time each watcher's swap and Ack from the write."""
    result = FanOut(watchers=len(tokens))
    for token in tokens:
        result.clusters[token.cluster] = result.clusters.get(token.cluster, 0) + 1
    folder = Path(tempfile.mkdtemp(prefix="keyferry-bench-fanout-"))
    async with AsyncExitStack() as stack:
        watchers = await open_watchers(stack, broker, tokens, role, credential)
        channel = await stack.enter_async_context(broker.admin_channel())
        admin: Any = rotation_pb2_grpc.RotationServiceStub(channel)
        acked: dict[str, float] = {}

        async def swap_and_ack(index: int, watcher: Watcher) -> None:
            while True:
                event = await asyncio.wait_for(watcher.agent.call.read(), FANOUT_READ)
                assert isinstance(event, broker_pb2.WatchResponse), f"stream ended: {event!r}"
                lease = event.rotated.lease
                if (
                    event.HasField("rotated")
                    and lease.credential_name == watcher.lease.credential_name
                    and lease.generation > watcher.lease.generation
                ):
                    break
            _swap(folder / f"watcher-{index}", event.rotated.credential.values)
            await watcher.agent.ack(event.rotated.lease)
            acked[watcher.lease.id] = time.perf_counter()

        listening = [asyncio.ensure_future(swap_and_ack(i, w)) for i, w in enumerate(watchers)]
        version = await asyncio.to_thread(
            root.secrets.kv.v2.create_or_update_secret,
            path,
            secret={"feature": "on", "color": f"v{time.time_ns()}"},
            mount_point=mount,
        )
        assert version["data"]["version"] > 1
        written = time.perf_counter()
        ids = [w.lease.id for w in watchers]
        batches = [ids[i : i + ROTATE_BATCH] for i in range(0, len(ids), ROTATE_BATCH)]
        result.calls = len(batches)

        async def call(batch: list[str]) -> tuple[list[str], float]:
            await rotate_batch(admin, batch)
            return batch, time.perf_counter()

        replies = await asyncio.gather(*(call(b) for b in batches))
        await asyncio.gather(*listening)
        result.to_ack = [acked[i] - written for i in ids]
        for batch, replied in replies:
            result.reply_to_ack += [acked[i] - replied for i in batch]
    return result


async def fleet_rotation(
    broker: BrokerProcess,
    tokens: Sequence[BoundToken],
    concurrency: int,
    rounds: int,
    *,
    role: str,
    credential: str,
) -> Run:
    """Each pod holds one database lease; `concurrency` workers rotate them one lease per
    RotateLeases call, `rounds` times over the fleet. Each sample: one rotation."""
    run = Run()
    async with AsyncExitStack() as stack:
        stub = await stack.enter_async_context(broker_stub(broker.port, broker.ca))
        request = broker_pb2.IssueRequest(credential_name=credential, role=role)
        leases = [
            (await retried(stub.Issue, request, metadata=bearer(token))).lease.id
            for token in tokens
        ]
        channel = await stack.enter_async_context(broker.admin_channel())
        admin: Any = rotation_pb2_grpc.RotationServiceStub(channel)

        async def worker(mine: list[int]) -> None:
            # Each worker owns its leases: one lease is never rotated by two at once.
            for _ in range(rounds):
                for index in mine:
                    started = time.perf_counter()
                    (rotation,) = await rotate_batch(admin, [leases[index]])
                    run.total.append(time.perf_counter() - started)
                    leases[index] = rotation.lease.id

        (warm,) = await rotate_batch(admin, [leases[0]])  # admin TLS, first-call paths
        leases[0] = warm.lease.id
        started = time.perf_counter()
        shares = [list(range(w, len(leases), concurrency)) for w in range(concurrency)]
        await asyncio.gather(*(worker(share) for share in shares if share))
        run.wall = time.perf_counter() - started
        run.first = list(run.total)
    return run
