"""Many agents in one process, for the reliability tests: each is the agent's own
`AgentSession` with its own `BrokerClient` (channel, TLS, token file) and the backoff of its
spec, built by `keyferry agent run`'s own `agent_for`, for a pod created in a real API
server with a token bound to it. Running dozens of them as processes would cost a Python
interpreter each on a two-core machine; what the broker sees (gRPC calls, tokens, pods) is
the same.

`Proxy` stands between the agents and the broker: a real TCP relay that can go away (stop
listening and cut every connection, as a broker whose node died) and come back.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from injector.agent.client import BrokerClient
from injector.agent.main import agent_for
from injector.agent.session import AgentSession
from injector.agent.spec import parse_spec
from injector.contract import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    AgentSpec,
    CredentialRequest,
    Mode,
)
from tests.bed.kube import KubeCluster
from tests.bed.ports import LOOPBACK, free_port
from tests.scene.workloads import mint

from .broker_thread import BrokerThread

RELAY_CHUNK = 65536


@dataclass(frozen=True)
class Draw:
    """One backoff wait an agent chose: its ceiling, the value, and when (monotonic)."""

    agent: int
    ceiling: float
    value: float
    at: float


@dataclass(frozen=True)
class Wait:
    """One sleep an agent took (a retry's wait, or its once-a-second expiry check)."""

    agent: int
    seconds: float
    at: float


@dataclass
class Agents:
    """The agents of one test, every backoff draw they made and every wait they took."""

    draws: list[Draw] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)

    def sleep(self, agent: int) -> Callable[[float], Awaitable[None]]:
        """The agent's real sleep, observed."""

        async def wait(seconds: float) -> None:
            self.waits.append(Wait(agent, seconds, time.monotonic()))
            await asyncio.sleep(seconds)

        return wait

    def uniform(self, agent: int) -> Callable[[float, float], float]:
        """The agent's real random source, observed."""

        def draw(low: float, high: float) -> float:
            value = random.uniform(low, high)
            self.draws.append(Draw(agent, high, value, time.monotonic()))
            return value

        return draw


@dataclass
class PodAgent:
    number: int
    pod: str
    spec: AgentSpec
    uniform: Callable[[float, float], float] = random.uniform
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    session: AgentSession | None = None
    client: BrokerClient | None = None

    def new_life(self) -> AgentSession:
        """A fresh agent for this pod (a container restart): new channel, nothing held, the
        backoff and reconnect cap of its spec, as `keyferry agent run` builds them."""
        self.client, session = agent_for(parse_spec(self.spec.to_json()), self.uniform)
        self.session = replace(session, sleep=self.sleep)
        return self.session

    async def crash(self) -> None:
        """SIGKILL: the channel closes, nothing is released."""
        if self.client is not None:
            await self.client.close()
        self.client = self.session = None


def pod_agents(
    cluster: KubeCluster,
    broker: BrokerThread,
    folder: Path,
    count: int,
    credentials: tuple[str, ...],
    *,
    address: str | None = None,
    backoff: tuple[float, float] = (BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS),
    record: Agents | None = None,
    prefix: str = "agent",
) -> list[PodAgent]:
    """`count` pods in namespace orders of `cluster`, a bound token file each, and an agent
    spec asking for `credentials` (role orders-db-ro each) with `backoff` (base, cap) in its
    spec (production's by default)."""
    made = []
    base, cap = backoff
    for number in range(count):
        token = mint(cluster, pod_prefix=prefix)
        home = folder / token.pod
        (home / "secrets").mkdir(parents=True)
        (home / "token").write_text(token.token)
        spec = AgentSpec(
            mode=Mode.SIDECAR,
            cluster=cluster.name,
            broker_address=address or f"{LOOPBACK}:{broker.broker.port}",
            broker_ca_pem=broker.broker.ca.read_text(),
            directory=str(home / "secrets"),
            token_path=str(home / "token"),
            credentials=tuple(CredentialRequest(name=n, role="orders-db-ro") for n in credentials),
            backoff_base_seconds=base,
            backoff_cap_seconds=cap,
        )
        uniform = record.uniform(number) if record is not None else random.uniform
        sleep = record.sleep(number) if record is not None else asyncio.sleep
        made.append(PodAgent(number, token.pod, spec, uniform, sleep))
    return made


class Proxy:
    """A TCP relay on a fixed loopback port to the broker's workload listener."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target = target_port
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self.accepted = 0

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    async def up(self) -> None:
        self._server = await asyncio.start_server(
            self._relay, LOOPBACK, self.port, reuse_address=True
        )

    async def away(self) -> None:
        """Stop listening (connection refused) and cut every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(LOOPBACK, self._target)
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, upstream_writer}
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )
        self._links -= {writer, upstream_writer}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(RELAY_CHUNK):
            writer.write(chunk)
            await writer.drain()
    finally:
        writer.transport.abort()
