"""The measured operations: keyferry through its workload listener, and the same credential
made directly with hvac against the same Vault. Each returns per-sample seconds and the
phase's wall time; samples are split into halves run direct, keyferry, direct, keyferry so
that drift of the shared machine falls on both sides alike. The Issue pairs run these in
load processes (load.py), never in the process that started the broker."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import hvac
from google.protobuf import duration_pb2

from broker.api.v1 import broker_pb2, rotation_pb2, rotation_pb2_grpc
from tests.scene.kube_helpers import BoundToken
from tests.scene.leases import Agent
from tests.scene.workloads import bearer, broker_stub

from .served import BrokerProcess

T = TypeVar("T")


@dataclass
class Run:
    """One side of a pair: per-sample seconds (total, and the first step alone), wall time,
    and the broker process's CPU seconds over that wall time (when it was watched).
    `started`/`ended` are time.monotonic() stamps of the timed part (CLOCK_MONOTONIC: the
    same clock in every process of the machine, so load processes' runs can be joined)."""

    total: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    wall: float = 0.0
    errors: int = 0  # calls refused UNAVAILABLE (an overloaded bed), not counted as samples
    broker_cpu: float = 0.0
    started: float = 0.0
    ended: float = 0.0

    def add(self, other: Run) -> None:
        self.total += other.total
        self.first += other.first
        self.wall += other.wall
        self.errors += other.errors
        self.broker_cpu += other.broker_cpu


RETRIES = 5
RETRY_PAUSE = 0.5


async def retried(call: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """The call, again after a pause while it is refused UNAVAILABLE — as an agent retries
    with backoff. On 2 shared cores a cluster's API server sometimes misses the broker's
    5 s deadline; that is the bed's load, not what a set-up step measures."""
    for attempt in range(RETRIES):
        try:
            return await call(*args, **kwargs)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == RETRIES - 1:
                raise
            await asyncio.sleep(RETRY_PAUSE * (attempt + 1))
    raise AssertionError("unreachable")


# --- keyferry ------------------------------------------------------------------------------


async def keyferry_issue_release(
    port: int,
    ca: Path,
    tokens: list[BoundToken],
    per_worker: int,
    role: str,
    credential: str,
    gate: Callable[[], Awaitable[None]] | None = None,
) -> Run:
    """One worker per pod (its own channel, as an agent has): Issue, then Release, repeated.
    `gate` is awaited after the warm-up round, just before the timed part."""
    run = Run()
    async with AsyncExitStack() as stack:
        stubs = [await stack.enter_async_context(broker_stub(port, ca)) for _ in tokens]
        request = broker_pb2.IssueRequest(credential_name=credential, role=role)

        async def worker(stub: Any, token: BoundToken) -> None:
            metadata = bearer(token)
            for _ in range(per_worker):
                started = time.perf_counter()
                try:
                    issued = await stub.Issue(request, metadata=metadata)
                    between = time.perf_counter()
                    await stub.Release(
                        broker_pb2.ReleaseRequest(lease_id=issued.lease.id), metadata=metadata
                    )
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    run.errors += 1
                    await asyncio.sleep(RETRY_PAUSE)
                    continue
                ended = time.perf_counter()
                run.first.append(between - started)
                run.total.append(ended - started)

        # One untimed round per worker: channel set-up, TLS, first-call paths.
        await asyncio.gather(*(_warm(s, t, request) for s, t in zip(stubs, tokens, strict=True)))
        if gate is not None:
            await gate()
        run.started = time.monotonic()
        await asyncio.gather(*(worker(s, t) for s, t in zip(stubs, tokens, strict=True)))
        run.ended = time.monotonic()
        run.wall = run.ended - run.started
    return run


async def _warm(stub: Any, token: BoundToken, request: broker_pb2.IssueRequest) -> None:
    issued = await retried(stub.Issue, request, metadata=bearer(token))
    release = broker_pb2.ReleaseRequest(lease_id=issued.lease.id)
    await retried(stub.Release, release, metadata=bearer(token))


# --- direct hvac ---------------------------------------------------------------------------


def direct(
    vault_addr: str,
    token: str,
    workers: int,
    per_worker: int,
    step: Callable[[hvac.Client], Any],
    gate: Callable[[], None] | None = None,
) -> Run:
    """`workers` threads, each with its own hvac client (one keep-alive session), each
    running `step` per_worker times after one untimed warm-up call. `gate` is called once
    every worker is warm, just before the timed part."""
    run = Run()
    lock = threading.Lock()
    clients = [hvac.Client(url=vault_addr, token=token) for _ in range(workers)]
    barrier = threading.Barrier(workers + 1)

    def worker(client: hvac.Client) -> None:
        step(client)  # warm: connection
        barrier.wait()
        mine_total: list[float] = []
        mine_first: list[float] = []
        for _ in range(per_worker):
            started = time.perf_counter()
            first = step(client)
            ended = time.perf_counter()
            mine_total.append(ended - started)
            mine_first.append(first - started if isinstance(first, float) else ended - started)
        with lock:
            run.total += mine_total
            run.first += mine_first

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(worker, c) for c in clients]
        if gate is not None:
            gate()  # the workers are warm and wait at the barrier
        barrier.wait()
        run.started = time.monotonic()
        for future in futures:
            future.result()
        run.ended = time.monotonic()
        run.wall = run.ended - run.started
    for client in clients:
        client.adapter.close()
    return run


def db_creds_and_revoke(mount: str, vault_role: str) -> Callable[[hvac.Client], float]:
    """Generate a database credential, revoke its lease; returns when the creds came back."""

    def step(client: hvac.Client) -> float:
        lease = client.read(f"{mount}/creds/{vault_role}")
        issued = time.perf_counter()
        client.sys.revoke_lease(lease["lease_id"])
        return issued

    return step


def db_creds(mount: str, vault_role: str, issued: list[str]) -> Callable[[hvac.Client], float]:
    """Generate a database credential only (what a rotation asks of Vault); the lease ids
    are kept in `issued` for revoking them afterwards, untimed."""

    def step(client: hvac.Client) -> float:
        issued.append(client.read(f"{mount}/creds/{vault_role}")["lease_id"])
        return time.perf_counter()

    return step


def kv_read(mount: str, path: str) -> Callable[[hvac.Client], float]:
    def step(client: hvac.Client) -> float:
        client.secrets.kv.v2.read_secret_version(
            path=path, mount_point=mount, raise_on_deleted_version=True
        )
        return time.perf_counter()

    return step


# --- rotation push -------------------------------------------------------------------------

ROTATE_BATCH = 100  # RotateLeases takes at most 100 lease ids per call
GRACE = timedelta(hours=1)


async def rotate_batch(stub: Any, lease_ids: list[str]) -> list[rotation_pb2.LeaseRotation]:
    grace = duration_pb2.Duration()
    grace.FromTimedelta(GRACE)
    reply = await stub.RotateLeases(
        rotation_pb2.RotateLeasesRequest(lease_ids=lease_ids, grace=grace)
    )
    return list(reply.rotations)


@dataclass
class PushRun:
    """Per rotation: RotateLeases sent → event received, reply → event received (negative
    when the event came before the reply), and event received → Ack sent (file swapped)."""

    sent_to_receipt: list[float] = field(default_factory=list)
    reply_to_receipt: list[float] = field(default_factory=list)
    receipt_to_ack: list[float] = field(default_factory=list)
    agents: int = 0


async def rotation_push(
    broker: BrokerProcess, tokens: list[BoundToken], rounds: int, role: str, credential: str
) -> PushRun:
    """One Watch stream per pod; each round rotates each pod's lease in turn and times its push."""
    result = PushRun(agents=len(tokens))
    folder = Path(tempfile.mkdtemp(prefix="keyferry-bench-swap-"))
    async with AsyncExitStack() as stack:
        agents: list[tuple[Agent, broker_pb2.Lease]] = []
        for token in tokens:
            stub = await stack.enter_async_context(broker_stub(broker.port, broker.ca))
            request = broker_pb2.IssueRequest(credential_name=credential, role=role)
            issued = await retried(stub.Issue, request, metadata=bearer(token))
            agent = Agent(stub, token)
            stack.callback(agent.close)
            snapshot = await agent.next()
            assert snapshot.rotated.lease.id == issued.lease.id
            agents.append((agent, issued.lease))
        for _ in range(rounds):
            for index, (agent, lease) in enumerate(agents):
                receipt = asyncio.ensure_future(_receive(agent))
                sent = time.perf_counter()
                async with broker.admin_channel() as channel:
                    admin: Any = rotation_pb2_grpc.RotationServiceStub(channel)
                    (rotation,) = await rotate_batch(admin, [lease.id])
                replied = time.perf_counter()
                event, received = await receipt
                new = event.rotated.lease
                assert new.id == rotation.lease.id, "the push is not the rotation asked for"
                _swap(folder / f"agent-{index}", event.rotated.credential.values)
                await agent.ack(new)
                acked = time.perf_counter()
                result.sent_to_receipt.append(received - sent)
                result.reply_to_receipt.append(received - replied)
                result.receipt_to_ack.append(acked - received)
                agents[index] = (agent, new)
    return result


async def _receive(agent: Agent) -> tuple[broker_pb2.WatchResponse, float]:
    while True:
        event = await agent.next()
        if event.HasField("rotated"):
            return event, time.perf_counter()


def _swap(path: Path, values: Any) -> None:
    """What the agent does before its Ack: write, fsync, rename."""
    staged = path.with_suffix(".tmp")
    with staged.open("w") as handle:
        handle.write(repr(dict(values)))
        handle.flush()
        os.fsync(handle.fileno())
    staged.replace(path)
