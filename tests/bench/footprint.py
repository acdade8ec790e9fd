"""Footprint: real agent processes (`keyferry agent run`) idle and while their credentials
rotate, and a broker process (`keyferry broker serve`) holding many idle Watch streams.

Memory is the resident set (VmRSS) from /proc; CPU is user + system time from
/proc/<pid>/stat over a window, as a share of one core.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from broker.api.v1 import broker_pb2, rotation_pb2_grpc
from injector.contract import AGENT_SPEC_ENV
from tests.scene.kube_helpers import BoundToken
from tests.scene.workloads import bearer, broker_stub

from .scene import KV_MOUNT, KV_PATH, KV_ROLE, Scene, say
from .served import KEYFERRY, BrokerProcess, broker_process, cpu_seconds, rss_mib
from .stats import describe, summarise
from .workloads import ROTATE_BATCH, retried, rotate_batch

IDLE_WINDOW = 5.0
SETTLE = 2.0  # seconds: Watch streams open, start-up garbage collected
STEP_WINDOW = 3.0  # seconds of CPU measured after each step of streams
READY = 60.0
STREAMS_PER_CHANNEL = 100
OPEN_BURST = 100  # streams opened at once
STREAMS_BUDGET = 240.0  # seconds; past it no further step starts (the page says so)
CREDENTIALS = ("config", "config-2", "config-3", "config-4")
"""Each agent's credentials (issue 19's agent target is for four), all of the KV role."""


def cpu_share(pids: Sequence[int], seconds: float) -> list[float]:
    """Each process's CPU over the next `seconds`, as a share of one core (0.0-1.0)."""
    before = [cpu_seconds(p) for p in pids]
    time.sleep(seconds)
    return [(cpu_seconds(p) - b) / seconds for p, b in zip(pids, before, strict=True)]


# --- agents ----------------------------------------------------------------------------------


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    folder: Path
    log: Path
    token: BoundToken

    def rotated_at(self) -> list[datetime]:
        """When the agent logged each rotation it applied (after its swap and Ack)."""
        times = []
        for line in self.log.read_text().splitlines():
            with suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == "credential.rotated":
                    times.append(datetime.fromisoformat(entry["timestamp"]))
        return times


def start_agent(scene: Scene, token: BoundToken, folder: Path) -> AgentProcess:
    folder.mkdir(parents=True)
    (folder / "files").mkdir()
    (folder / "token").write_text(token.token)
    spec = {
        "mode": "sidecar",
        "cluster": token.cluster,
        "broker_address": f"127.0.0.1:{scene.broker.port}",
        "broker_ca_pem": scene.broker.ca.read_text(),
        "directory": str(folder / "files"),
        "token_path": str(folder / "token"),
        "credentials": [{"name": name, "role": KV_ROLE, "format": "json"} for name in CREDENTIALS],
    }
    log = folder / "agent.log"
    env = {**os.environ, AGENT_SPEC_ENV: json.dumps(spec)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(KEYFERRY), "agent", "run"], env=env, stdout=out, stderr=out, cwd=folder
        )
    return AgentProcess(process, folder, log, token)


async def agents_footprint(
    scene: Scene, tokens: Sequence[BoundToken], windows: float = 1.0
) -> dict[str, Any]:
    """Start one agent per pod, wait for its file, measure idle; then write a new KV version,
    rotate every agent's lease and measure the agents while they swap and Ack. `windows`
    scales the settling and idle windows (the smoke run's are shorter)."""
    folder = scene.folder / "agents"
    agents = [start_agent(scene, t, folder / f"agent-{i}") for i, t in enumerate(tokens)]
    try:
        deadline = time.monotonic() + READY
        while not all((a.folder / "files" / n).exists() for a in agents for n in CREDENTIALS):
            for agent in agents:
                if agent.process.poll() is not None:
                    raise RuntimeError(f"agent exited: {agent.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("agents did not write their files in time")
            await asyncio.sleep(0.2)
        await asyncio.sleep(SETTLE * windows)
        pids = [a.process.pid for a in agents]
        idle_rss = [rss_mib(p) for p in pids]
        idle_anon = [rss_mib(p, "RssAnon") for p in pids]
        idle_cpu = await asyncio.to_thread(cpu_share, pids, IDLE_WINDOW * windows)

        store = scene.broker.store()
        try:
            leases = [
                store.leases.find_live(a.token.cluster, a.token.pod_uid, name)
                for a in agents
                for name in CREDENTIALS
            ]
        finally:
            store.close()
        ids = [lease.id for lease in leases if lease is not None]
        before = [cpu_seconds(p) for p in pids]
        started_cpu = time.monotonic()
        await asyncio.to_thread(
            scene.root.secrets.kv.v2.create_or_update_secret,
            KV_PATH,
            secret={"feature": "on", "color": f"v{time.time_ns()}"},
            mount_point=KV_MOUNT,
        )
        written = datetime.now().astimezone()
        async with scene.broker.admin_channel() as channel:
            admin: Any = rotation_pb2_grpc.RotationServiceStub(channel)
            for start in range(0, len(ids), ROTATE_BATCH):
                await rotate_batch(admin, ids[start : start + ROTATE_BATCH])
        deadline = time.monotonic() + READY
        while (
            not all(len(a.rotated_at()) >= len(CREDENTIALS) for a in agents)
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.1)
        busy_rss = [rss_mib(p) for p in pids]
        spent = time.monotonic() - started_cpu
        busy_cpu = [(cpu_seconds(p) - b) / spent for p, b in zip(pids, before, strict=True)]
        to_swap = [(t - written).total_seconds() for a in agents for t in a.rotated_at()]
        rotated = sum(len(a.rotated_at()) >= len(CREDENTIALS) for a in agents)
    finally:
        for agent in agents:
            agent.process.send_signal(signal.SIGTERM)
        for agent in agents:
            try:
                agent.process.wait(15)
            except subprocess.TimeoutExpired:
                agent.process.kill()
    return {
        "agents": len(agents),
        "credentials": len(CREDENTIALS),
        "clusters": sorted({t.cluster for t in tokens}),
        "idle_rss_mib": describe(idle_rss).as_dict(),
        "busy_rss_mib": describe(busy_rss).as_dict(),
        "idle_anon_mib": describe(idle_anon).as_dict(),
        "idle_cpu_percent": describe([c * 100 for c in idle_cpu]).as_dict(),
        "rotation_cpu_percent": describe([c * 100 for c in busy_cpu]).as_dict(),
        "rotation_window_s": round(spent, 2),
        "version_to_swap": summarise(to_swap).as_dict() if to_swap else None,
        "rotated": rotated,
    }


# --- a broker process with idle streams ---------------------------------------------------------


def start_broker_process(
    scene: Scene, folder: Path, changes: dict[str, Any] | None = None
) -> BrokerProcess:
    """`keyferry broker serve` with the scene's config (and `changes` to it), its own data,
    store and audit log."""
    data = copy.deepcopy(scene.data)
    data.update(changes or {})
    data["store"] = {**data["store"], "url": f"sqlite:///{folder / 'store.db'}"}
    return broker_process(data, folder)


@dataclass
class _Target:
    port: int
    ca: Path


async def broker_with_streams(
    scene: Scene, tokens: Sequence[BoundToken], steps: Sequence[int], windows: float = 1.0
) -> dict[str, Any]:
    """Open idle Watch streams to a broker process in steps, its RSS after each step.
    Streams beyond the pods given reuse pods round-robin (a pod may hold several).
    `windows` scales the settling and measuring windows (the smoke run's are shorter)."""
    broker = await asyncio.to_thread(start_broker_process, scene, scene.folder / "broker-proc")
    target = _Target(broker.port, broker.ca)
    points: list[dict[str, Any]] = []
    try:
        await asyncio.sleep(SETTLE / 2 * windows)
        points.append({"streams": 0, "rss_mib": rss_mib(broker.process.pid)})
        async with AsyncExitStack() as stack:
            stubs: list[Any] = []
            calls: list[Any] = []
            issued: set[str] = set()
            begun = time.monotonic()
            for step in steps:
                if time.monotonic() - begun > STREAMS_BUDGET:
                    say(f"broker process: stopping at {len(calls)} streams (time budget spent)")
                    break
                while len(calls) < step:
                    chunk = []
                    for _ in range(min(OPEN_BURST, step - len(calls))):
                        index = len(calls)
                        if index % STREAMS_PER_CHANNEL == 0:
                            stubs.append(
                                await stack.enter_async_context(broker_stub(target.port, target.ca))
                            )
                        token = tokens[index % len(tokens)]
                        chunk.append((stubs[-1], token))
                        calls.append(None)
                    opened = await asyncio.gather(
                        *(_open(stub, token, issued) for stub, token in chunk)
                    )
                    calls[len(calls) - len(opened) :] = opened
                    for call in opened:
                        stack.callback(call.cancel)
                await asyncio.sleep(SETTLE * windows)
                share = await asyncio.to_thread(
                    cpu_share, [broker.process.pid], STEP_WINDOW * windows
                )
                points.append(
                    {
                        "streams": step,
                        "rss_mib": rss_mib(broker.process.pid),
                        "cpu_idle_percent": round(share[0] * 100, 1),
                    }
                )
                say(f"broker process: {step} idle Watch streams, {points[-1]['rss_mib']:.0f} MiB")
    finally:
        await asyncio.to_thread(broker.stop)
    return {"pods": min(len(tokens), max(steps, default=0)), "points": points}


async def _idle() -> Any:
    """A Watch request stream that sends nothing (an agent with nothing to Ack)."""
    await asyncio.Event().wait()
    yield  # pragma: no cover - never reached


async def _open(stub: Any, token: BoundToken, issued: set[str]) -> Any:
    """A Watch stream of the pod, once its snapshot arrived; the pod's KV lease is issued
    first (once per pod), so that every stream, like an agent's, watches one lease."""
    if token.pod_uid not in issued:
        issued.add(token.pod_uid)
        request = broker_pb2.IssueRequest(credential_name="config", role=KV_ROLE)
        await retried(stub.Issue, request, metadata=bearer(token))

    async def watch() -> Any:
        call = stub.Watch(_idle(), metadata=bearer(token))
        event = await call.read()  # the snapshot
        if event is grpc.aio.EOF:
            await call  # the stream's status: raises it
        return call

    return await retried(watch)
