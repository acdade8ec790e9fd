"""The soak (issue 10): steady issue / renew / rotate / release traffic against a broker
process for N minutes, on loopback, at a bounded rate; then three checks.

python -m tests.bench.soak [--minutes 30]        (tests/run soak [--minutes N])

- no leaked leases: once every pod released its leases and revocations settled, Vault
  holds no lease under the soak's database mount that the store does not hold as live,
  and the store holds no live lease;
- broker memory: its RSS at the end is at most 10% above its RSS after the warm-up
  (the first fifth of the run, at least 20 s; the smoke test's short run asks for less);
- the audit chain verifies against its checkpoints signed by Vault transit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import hvac
import hvac.exceptions
from google.protobuf import duration_pb2

from broker.api.v1 import broker_pb2, rotation_pb2, rotation_pb2_grpc
from broker.audit import StoreCheckpointSink, read_log, verify
from broker.backends.transit import TransitSigner
from broker.settings import load_settings
from broker.store import LIVE_STATES, LeaseState, Selector, Store
from tests.scene.admin_helpers import admin_channel
from tests.scene.broker import MOUNT, ROLE
from tests.scene.kube_helpers import BoundToken
from tests.scene.workloads import bearer, broker_stub

from .footprint import start_broker_process
from .scene import KV_ROLE, Scene, say, scene
from .served import BrokerProcess, rss_mib

PODS = 6
PACE = 0.25  # seconds each pod waits between its steps: about 24 calls a second in all
GROWTH_LIMIT = 0.10
SETTLE = 60.0  # revocations due after the last release, at the revoker's 1 s interval
SETTLE_POLL = 0.5  # seconds between looks at the store and Vault while revocations settle
WARM_UP = 20.0  # seconds of traffic at least before the warm RSS is taken
SAMPLE_EVERY = 5.0


@dataclass
class SoakResult:
    minutes: float
    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds, MiB)
    warm_rss_mib: float = 0.0
    end_rss_mib: float = 0.0
    vault_leases_left: list[str] = field(default_factory=list)
    untracked: list[str] = field(default_factory=list)
    store_live: int = 0
    audit: dict[str, Any] = field(default_factory=dict)

    @property
    def growth(self) -> float:
        return self.end_rss_mib / self.warm_rss_mib - 1 if self.warm_rss_mib else 0.0

    @property
    def ok(self) -> bool:
        return (
            not self.untracked
            and not self.vault_leases_left
            and self.store_live == 0
            and self.growth <= GROWTH_LIMIT
            and bool(self.audit.get("ok"))
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "minutes": self.minutes,
            "calls": dict(self.calls),
            "errors": dict(self.errors),
            "warm_rss_mib": round(self.warm_rss_mib, 1),
            "end_rss_mib": round(self.end_rss_mib, 1),
            "growth": round(self.growth, 4),
            "vault_leases_left": self.vault_leases_left,
            "untracked": self.untracked,
            "store_live": self.store_live,
            "audit": self.audit,
            "ok": self.ok,
        }


async def soak(
    running: Scene,
    minutes: float,
    pods: int = PODS,
    *,
    warm_up: float = WARM_UP,
    sample_every: float = SAMPLE_EVERY,
) -> SoakResult:
    """`pods` pods' traffic for `minutes`; the broker's RSS every `sample_every` seconds,
    the warm one after max(`warm_up`, a fifth of the run) seconds."""
    result = SoakResult(minutes)
    broker = await asyncio.to_thread(
        start_broker_process,
        running,
        running.folder / "soak-broker",
        {
            "rotation": {"grace": "1s", "resume_interval": "1s"},
            "revocation": {"interval": "1s"},
        },
    )
    try:
        tokens = await running.spread(pods)
        await _traffic(broker, tokens, minutes * 60, result, warm_up, sample_every)
        await _settle(broker, running.root, result)
    finally:
        await asyncio.to_thread(broker.stop)
    result.audit = await asyncio.to_thread(_verify_audit, broker, running.root)
    return result


async def _traffic(
    broker: BrokerProcess,
    tokens: list[BoundToken],
    seconds: float,
    result: SoakResult,
    warm_up: float,
    sample_every: float,
) -> None:
    settings = load_settings(broker.config)
    started = time.monotonic()
    warm_until = started + max(warm_up, seconds / 5)
    stop = started + seconds
    async with AsyncExitStack() as stack:
        stub = await stack.enter_async_context(broker_stub(broker.port, broker.ca))
        channel = await stack.enter_async_context(admin_channel(settings, broker.admin_port))
        admin: Any = rotation_pb2_grpc.RotationServiceStub(channel)

        async def pod(index: int, token: BoundToken) -> None:
            rng = random.Random(index)
            while time.monotonic() < stop:
                await _cycle(stub, admin, token, rng, result)
                await asyncio.sleep(PACE)

        async def sampler() -> None:
            warmed = False
            while time.monotonic() < stop:
                now = time.monotonic()
                rss = rss_mib(broker.process.pid)
                result.rss.append((round(now - started, 1), rss))
                if not warmed and now >= warm_until:
                    warmed = True
                    result.warm_rss_mib = rss
                    say(f"soak: warmed up, broker RSS {rss:.0f} MiB")
                await asyncio.sleep(sample_every)

        await asyncio.gather(sampler(), *(pod(i, t) for i, t in enumerate(tokens)))
        tail = [rss for _, rss in result.rss[-3:]] or [rss_mib(broker.process.pid)]
        result.end_rss_mib = statistics.median(tail)
        for token in tokens:  # every pod gives back what it still holds
            for name in ("db", "config"):
                await _release_current(stub, broker, token, name, result)


async def _cycle(
    stub: Any, admin: Any, token: BoundToken, rng: random.Random, result: SoakResult
) -> None:
    """One pod's round: Issue a database credential, Renew it, rotate it, Release the
    current generation; Issue and Release a KV secret."""
    metadata = bearer(token)

    async def call(name: str, coroutine: Any) -> Any:
        result.calls[name] += 1
        try:
            return await coroutine
        except grpc.RpcError as exc:
            result.errors[f"{name}: {exc.code().name}"] += 1
            return None

    issued = await call(
        "Issue",
        stub.Issue(broker_pb2.IssueRequest(credential_name="db", role=ROLE), metadata=metadata),
    )
    if issued is None:
        return
    lease = issued.lease
    await call("Renew", stub.Renew(broker_pb2.RenewRequest(lease_id=lease.id), metadata=metadata))
    if rng.random() < 0.5:
        grace = duration_pb2.Duration()
        grace.FromTimedelta(timedelta(seconds=1))
        reply = await call(
            "RotateLeases",
            admin.RotateLeases(rotation_pb2.RotateLeasesRequest(lease_ids=[lease.id], grace=grace)),
        )
        if reply is not None:
            lease = reply.rotations[0].lease
    await call(
        "Release", stub.Release(broker_pb2.ReleaseRequest(lease_id=lease.id), metadata=metadata)
    )
    kv = await call(
        "Issue",
        stub.Issue(
            broker_pb2.IssueRequest(credential_name="config", role=KV_ROLE), metadata=metadata
        ),
    )
    if kv is not None:
        await call(
            "Release",
            stub.Release(broker_pb2.ReleaseRequest(lease_id=kv.lease.id), metadata=metadata),
        )


async def _release_current(
    stub: Any, broker: BrokerProcess, token: BoundToken, credential: str, result: SoakResult
) -> None:
    store = Store.open(load_settings(broker.config).store)
    try:
        live = store.leases.find_live(token.cluster, token.pod_uid, credential)
    finally:
        store.close()
    if live is not None:
        result.calls["Release"] += 1
        await stub.Release(broker_pb2.ReleaseRequest(lease_id=live.id), metadata=bearer(token))


async def _settle(broker: BrokerProcess, root: hvac.Client, result: SoakResult) -> None:
    """Wait until revocations settle: the store holds no live or revoking lease, and
    Vault no lease under the mount that the store does not hold as live."""
    settings = load_settings(broker.config)
    deadline = time.monotonic() + SETTLE
    while True:
        store = Store.open(settings.store)
        try:
            rows = store.leases.list_by_selector(
                Selector(states=frozenset({*LIVE_STATES, LeaseState.REVOKING}))
            )
            live = {r.vault_lease_id for r in rows if r.state in LIVE_STATES}
            pending_revocations = [r for r in rows if r.state not in LIVE_STATES]
            result.store_live = sum(1 for r in rows if r.state in LIVE_STATES)
        finally:
            store.close()
        vault = await asyncio.to_thread(_vault_leases, root)
        result.untracked = sorted(set(vault) - live)
        result.vault_leases_left = vault
        if (not vault and not rows) or time.monotonic() > deadline:
            say(
                f"soak: {len(vault)} Vault leases left, {result.store_live} live and "
                f"{len(pending_revocations)} revoking in the store"
            )
            return
        await asyncio.sleep(SETTLE_POLL)


def _vault_leases(root: hvac.Client, prefix: str = f"{MOUNT}/") -> list[str]:
    """Every lease id Vault holds under `prefix` (the soak's database mount)."""
    found: list[str] = []
    pending = [prefix]
    while pending:
        folder = pending.pop()
        try:
            keys = root.list(f"sys/leases/lookup/{folder}")
        except hvac.exceptions.InvalidPath:
            continue
        for key in (keys or {}).get("data", {}).get("keys", []):
            (pending if key.endswith("/") else found).append(f"{folder}{key}")
    return sorted(found)


def _verify_audit(broker: BrokerProcess, root: hvac.Client) -> dict[str, Any]:
    """The chain and its signed checkpoints, verified as `keyferry audit verify` does
    (same functions), without the CLI's Vault deadline around the whole walk: that deadline
    bounds one Vault call, and a 30-minute log takes longer than it to parse on this machine."""
    settings = load_settings(broker.config)
    audit = settings.audit
    assert audit.transit_key is not None
    assert audit.transit_mount is not None
    store = Store.open(settings.store)
    try:
        checkpoints = StoreCheckpointSink(store.checkpoints).list(audit.chain)
    finally:
        store.close()
    report = verify(
        read_log(audit.log),
        checkpoints,
        TransitSigner(root, audit.transit_key, audit.transit_mount),
    )
    return {**report.model_dump(mode="json"), "ok": report.ok}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--pods", type=int, default=PODS)
    parser.add_argument("--out", type=Path, help="also write the result (JSON) here")
    args = parser.parse_args(argv)

    async def run() -> SoakResult:
        async with scene() as running:
            return await soak(running, args.minutes, args.pods)

    result = asyncio.run(run())
    text = json.dumps({**result.as_dict(), "rss": result.rss}, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
