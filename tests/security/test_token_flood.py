"""A flood of junk tokens for cluster a (finding 1 of issue 16), against a real broker on the bed.

Anyone who reaches the workload port can make a token with `aud: keyferry:a` and a random
key id. Such a token must cost the broker next to nothing: no JWKS fetch beyond one per
`tokens.jwks_min_interval` for the cluster, no thread while it waits, and no audit write of
its own (refusals after the first of their kind are counted into summary records). The
legitimate pods of cluster a, and of cluster b, keep being served during the flood: their
Issue latency is printed with and without it (never asserted: the machine is shared).

The JWKS requests are counted twice: by the broker, and independently in the member API
server's own audit log (the bed logs every GET /openid/v1/jwks). `tests/run faults` floods
for longer (KEYFERRY_FAULT_SCALE=full).
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import sys
import time
from typing import Any

import pytest

from tests.bed.kube import KubeCluster
from tests.bed.vault import VaultServer
from tests.reliability.scale import pick
from tests.scene.broker import Broker, issue
from tests.scene.kube_helpers import BoundToken
from tests.scene.workloads import mint

from .attack_scene import Exposure, audit_records, scene_broker

pytestmark = pytest.mark.bed

FLOOD_SECONDS = pick(8.0, 60.0)
CONCURRENCY = 32
MIN_INTERVAL = 2  # seconds: short, so the flood shows the bound with more than one fetch
SUMMARY = 2  # seconds between refusal summaries
BASELINE_CALLS = 20
# the broker's log line (broker.service.common.callers)
FETCHED = "jwks fetched for an unknown key id"


async def timed_issue(broker: Broker, token: BoundToken) -> float:
    started = time.perf_counter()
    await issue(broker, token)
    return (time.perf_counter() - started) * 1000


def figures(name: str, millis: list[float]) -> str:
    ordered = sorted(millis)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return (
        f"{name}: {len(ordered)} Issues, p50 {statistics.median(ordered):.1f} ms, "
        f"p95 {p95:.1f} ms, max {ordered[-1]:.1f} ms"
    )


async def run_flood(broker: Broker, cluster: str, seconds: float) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.security.flood",
        str(broker.port),
        str(broker.ca),
        cluster,
        str(seconds),
        str(CONCURRENCY),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    result: dict[str, Any] = json.loads(out)
    return result


def fetches_logged(exposure: Exposure) -> dict[str, int]:
    """The JWKS fetches the broker logged so far, by cluster."""
    found = {"a": 0, "b": 0}
    for line in exposure.log_file.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == FETCHED and entry["cluster"] in found:
            found[entry["cluster"]] += 1
    return found


def refusal_records(broker: Broker) -> list[dict[str, Any]]:
    return [
        r
        for r in audit_records(broker)
        if r["action"] == "issue"
        and r["decision"] == "deny"
        and r["who"] == {"kind": "workload", "name": "unauthenticated"}
    ]


async def test_a_flood_of_junk_tokens_costs_bounded_fetches_and_audit_writes(
    tmp_path: Any,
    vault: VaultServer,
    approle: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    orders_db: None,
    exposure: Exposure,
) -> None:
    tokens = {
        "jwks_min_interval": f"{MIN_INTERVAL}s",
        "refusal_summary": f"{SUMMARY}s",
        "jwks_refresh_interval": "1h",  # only the flood may cause a fetch meanwhile
    }
    async with scene_broker(
        tmp_path,
        vault,
        approle,
        kube_clusters,
        exposure,
        tokens=tokens,
    ) as broker:
        pods = {name: mint(kube_clusters[name], pod_prefix="legit") for name in ("a", "b")}
        for token in pods.values():
            exposure.handed_out(token.token)
            issued = await issue(broker, token)  # then every Issue below is a replay
            exposure.handed_out(*issued.credential.values.values())
        quiet: dict[str, list[float]] = {name: [] for name in pods}
        for _ in range(BASELINE_CALLS):
            for name, token in pods.items():
                quiet[name].append(await timed_issue(broker, token))

        api_before = {name: kube_clusters[name].jwks_requests() for name in pods}
        fetched_before = fetches_logged(exposure)
        flooding = asyncio.ensure_future(run_flood(broker, "a", FLOOD_SECONDS))
        under: dict[str, list[float]] = {name: [] for name in pods}
        while not flooding.done():
            for name, token in pods.items():
                under[name].append(await timed_issue(broker, token))
        flood = await flooding
        api_fetches = {
            name: kube_clusters[name].jwks_requests() - api_before[name] for name in pods
        }
        fetched = fetches_logged(exposure)
        broker_fetches = {name: fetched[name] - fetched_before[name] for name in pods}
        await broker.server.runtime.audit.flush_refusals()
        refusals = refusal_records(broker)

    allowed = math.floor(flood["seconds"] / MIN_INTERVAL) + 1
    counted = sum(r.get("count") or 1 for r in refusals)
    print(
        f"\nflood against cluster a: {flood['calls']} junk Issues in {flood['seconds']} s "
        f"from {CONCURRENCY} concurrent calls: {flood['codes']}"
    )
    for name in pods:
        print(figures(f"cluster {name} without the flood", quiet[name]))
        print(figures(f"cluster {name} during the flood ", under[name]))
    print(
        f"JWKS GETs during the flood: API server's audit log {api_fetches}, broker's own "
        f"count {broker_fetches}; allowed for cluster a: {allowed} "
        f"(one per {MIN_INTERVAL}s, and one at once)"
    )
    print(
        f"audit records for {flood['codes'].get('UNAUTHENTICATED', 0)} refused junk tokens: "
        f"{len(refusals)} (counts {[r.get('count') for r in refusals][:12]})"
    )

    assert flood["calls"] > 0
    assert set(flood["codes"]) <= {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}, flood["codes"]
    assert all(under.values()), "no legitimate Issue ran during the flood"
    assert api_fetches["a"] <= allowed
    assert api_fetches["b"] == 0
    assert broker_fetches == api_fetches
    # Every refused junk token is on the trail, in far fewer records than tokens: the
    # first at once, then one summary per SUMMARY seconds.
    assert counted == flood["codes"].get("UNAUTHENTICATED", 0)
    assert len(refusals) <= 2 + math.ceil(flood["seconds"] / SUMMARY)
    assert all(r["peer"] == "ipv4:127.0.0.1" for r in refusals)
