"""Issue 10, "Agent: broker away for minutes, then back — reconnect with backoff and jitter,
no thundering herd", on the bed: twelve agents (each its own session, channel and pod-bound
token) hold Watch streams through a TCP relay; the relay goes away, then comes back.

What is asserted is the distribution of the attempts the agents made, never how long
anything took: each agent's waits double from the base to the cap, each wait is drawn
uniformly below its ceiling, the agents fall out of step, none hammers, the files stay, and
every agent is watching again after the return. The outage lasts until every agent has
waited `AT_CAP` times at the cap: counted in attempts, so a loaded machine stretches it
instead of thinning the sample.

Scale (tests/reliability/scale.py): short, the backoff in the agents' spec is base 25 ms,
cap 0.4 s (75 times below production's 30 s cap; the gRPC channel's reconnect backoff is
capped alike) and the outage lasts ten waits at the cap, about 2 s unloaded; full
(`tests/run faults`), production's backoff (base 1 s, cap 30 s, the spec's defaults) and
twelve waits at the cap, an outage of about four minutes. The figures are printed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from injector.contract import BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.reliability.scale import pick
from tests.scene.agents import Agents, Proxy, pod_agents
from tests.scene.broker_thread import BrokerThread, serving
from tests.scene.polling import until_true

AGENTS = 12
BASE, CAP = pick((0.025, 0.4), (BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS))
AT_CAP = pick(10, 12)
"""The outage lasts until every agent has waited this many times at the cap."""
OUTAGE_SECONDS = pick(120.0, 1200.0)
"""Longest the outage may take to gather AT_CAP waits at the cap per agent before the test
fails (a loaded machine stretches it)."""
WAIT_SECONDS = pick(60.0, 300.0)
"""Longest wait for one step (streams gone, all watching again) before the test fails; at
production's backoff an agent may wait a whole cap and then its channel's reconnect."""
LEASE_TTL = pick("5m", "1h")
"""The role's lease lifetime when the bed's 5 minutes would not outlive the full outage:
this module measures the backoff, so the credentials must outlive the outage (asserted)."""
pytestmark = [pytest.mark.bed, pytest.mark.timeout(pick(600, 1800))]


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory,
    vault: VaultServer,
    postgres: PostgresServer,
    kube_clusters: dict[str, KubeCluster],
) -> Iterator[BrokerThread]:
    folder = tmp_path_factory.mktemp("outage-broker")
    with serving(folder, vault, postgres, kube_clusters, ttl=LEASE_TTL) as running:
        yield running


until = functools.partial(until_true, within=WAIT_SECONDS, every=0.05)


async def test_agents_back_off_with_jitter_while_the_broker_is_away_and_all_come_back(
    broker: BrokerThread,
    kube_clusters: dict[str, KubeCluster],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proxy = Proxy(broker.broker.port)
    await proxy.up()
    record = Agents()
    agents = pod_agents(
        kube_clusters["a"],
        broker,
        tmp_path,
        AGENTS,
        ("db",),
        address=proxy.address,
        backoff=(BASE, CAP),
        record=record,
        prefix="herd",
    )
    sessions = [agent.new_life() for agent in agents]
    await asyncio.gather(*(session.start() for session in sessions))
    holding = [asyncio.ensure_future(session.hold()) for session in sessions]
    try:
        await until(lambda: broker.streams() == AGENTS, "every agent watching")
        files = {a.number: (Path(a.spec.directory) / "db").read_bytes() for a in agents}
        record.draws.clear()

        await proxy.away()
        away_at = time.monotonic()
        await until(lambda: broker.streams() == 0, "the broker seeing every stream gone")
        await until(
            lambda: all(
                sum(d.agent == a.number and d.ceiling == CAP for d in record.draws) >= AT_CAP
                for a in agents
            ),
            f"every agent waiting {AT_CAP} times at the cap",
            within=OUTAGE_SECONDS,
        )
        back_at = time.monotonic()
        during = [draw for draw in record.draws if draw.at < back_at]
        ends = [held.expires_at for s in sessions for held in s.held.values()]
        assert all(end is None or end > datetime.now(UTC) for end in ends), "lease ended"
        await proxy.up()
        await until(lambda: broker.streams() == AGENTS, "every agent watching again")
        returned = time.monotonic() - back_at
    finally:
        for task in holding:
            task.cancel()
        for task in holding:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    for agent in agents:  # the files stayed all along (the lease outlives the outage)
        assert (Path(agent.spec.directory) / "db").read_bytes() == files[agent.number]

    per_agent = {a.number: [d for d in during if d.agent == a.number] for a in agents}
    outage = back_at - away_at
    for number, draws in per_agent.items():
        ceilings = [d.ceiling for d in draws]
        # exponential: the ceiling doubles from the base up to the cap, then stays
        assert ceilings == [min(CAP, BASE * 2**k) for k in range(len(draws))], number
        assert ceilings[-1] == CAP, f"agent {number} never reached the cap"
        # no hammering: at the cap the mean wait is CAP/2, so about 2*outage/CAP attempts
        assert len(draws) <= 4 * outage / CAP + 8, f"agent {number} tried {len(draws)} times"

    # full jitter: the waits at the cap are uniform below it, in every quarter of [0, cap)
    at_cap = [d.value / d.ceiling for d in during if d.ceiling == CAP]
    assert len(at_cap) >= AGENTS * AT_CAP
    quarters = Counter(min(int(share * 4), 3) for share in at_cap)
    assert all(quarters[q] >= 0.1 * len(at_cap) for q in range(4)), quarters

    # out of step: the agents did not make the same number of attempts...
    assert len({len(draws) for draws in per_agent.values()}) >= 3
    # ...and their first attempts after the return were spread over the cap, not bunched
    firsts = []
    for number in per_agent:
        wakes = sorted(d.at + d.value for d in record.draws if d.agent == number)
        firsts.append(next((wake for wake in wakes if wake >= back_at), wakes[-1]))
    slots = Counter(int((first - min(firsts)) / (CAP / 10)) for first in firsts)
    assert max(slots.values()) <= 2 * AGENTS // 3, slots

    for session in sessions:
        await session.release()
    for agent in agents:
        await agent.crash()
    await proxy.away()
    counts = sorted(len(draws) for draws in per_agent.values())
    with capsys.disabled():
        print(
            f"\nbroker away {outage:.0f} s for {AGENTS} agents at backoff base {BASE:g} s, "
            f"cap {CAP:g} s; attempts per agent min {counts[0]}, median "
            f"{statistics.median(counts):g}, max {counts[-1]}; {len(at_cap)} waits at the cap, "
            f"by quarter of [0, cap) {[quarters[q] for q in range(4)]}; first attempts after "
            f"the return in {len(slots)} slots of {CAP / 10:g} s (at most {max(slots.values())} "
            f"in one); all {AGENTS} watching again {returned:.0f} s after the return"
        )
