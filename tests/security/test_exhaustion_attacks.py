"""One authenticated pod trying to exhaust the broker: Watch streams past its cap, a flood of
Acks (junk and well-formed), oversized messages, Renew and Release floods; and a Watch
stream whose pod is deleted.

The broker runs as its own process (`keyferry broker serve`, logging at info), so its
resident memory and its log are its own. Each attack is refused with its status and a
message naming the limit; the figures (the broker's RSS and log growth, the latency of
another pod's Issue calls in the same cluster and in another cluster, with and without the
attack) are printed, and the assertions bound what the attack may cost, never how fast
anything was.
"""

from __future__ import annotations

import asyncio
import copy
import re
import statistics
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from broker.api.v1 import broker_pb2
from broker.backends.transit import TransitSigner
from tests.bed.kube import KubeCluster
from tests.bed.vault import VaultServer
from tests.bench.served import BrokerProcess, broker_process, rss_mib
from tests.scene.broker import config
from tests.scene.kube_helpers import core
from tests.scene.stores import sqlite_url
from tests.scene.workloads import bearer, broker_stub, error_info, mint

pytestmark = pytest.mark.bed
READ = 30.0  # bound of waiting for one Watch event or end; never asserted
PER_POD_STREAMS = 4  # the default of limits.pod_watch_streams
ACK_BURST = 64  # the default of limits.pod_lease_call_burst
FLOOD = 600  # calls of each flood
OVERSIZED = 1024 * 1024  # bytes of one oversized message (the limit is 16 KiB)


@pytest.fixture
def broker(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    orders_db: None,
    transit: TransitSigner,
) -> Iterator[BrokerProcess]:
    """The Issue tests' broker as a process with the default limits, but the pod re-check
    every 2 s (so a deleted pod's stream ends within the test's patience)."""
    data = copy.deepcopy(config(tmp_path, vault, approle, kube_clusters, sqlite_url(tmp_path)))
    data["limits"] = {"per_pod": 4, "pod_issue_burst": 1000, "watch_recheck": "2s"}
    running = broker_process(data, tmp_path / "broker", log_level="info")
    try:
        yield running
    finally:
        running.stop()


async def issue(broker: BrokerProcess, token: Any) -> broker_pb2.IssueResponse:
    async with broker_stub(broker.port, broker.ca) as stub:
        return await stub.Issue(
            broker_pb2.IssueRequest(credential_name="orders-db", role="orders-db-ro"),
            metadata=bearer(token),
        )


async def latencies(broker: BrokerProcess, token: Any, calls: int) -> list[float]:
    """Milliseconds of `calls` Issue calls (replays of the pod's lease), one after another."""
    seconds = []
    async with broker_stub(broker.port, broker.ca) as stub:
        request = broker_pb2.IssueRequest(credential_name="orders-db", role="orders-db-ro")
        for _ in range(calls):
            started = time.perf_counter()
            await stub.Issue(request, metadata=bearer(token))
            seconds.append((time.perf_counter() - started) * 1000)
    return seconds


def figure(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median {statistics.median(ordered):.1f} ms, p95 {p95:.1f} ms, n={len(ordered)}"


def ended_for_a_limit(broker: BrokerProcess) -> float:
    """Watch streams the broker ended for a limit, by its own count (keyferry_watch_end_total)."""
    found = re.search(rb"metrics_port\W{1,4}(\d+)", broker.log.read_bytes())
    assert found, "the broker logs its metrics port when it serves"
    url = f"http://127.0.0.1:{int(found.group(1))}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    line = re.search(r'^keyferry_watch_end_total\{reason="limit_exceeded"\} (\S+)$', text, re.M)
    return float(line.group(1)) if line else 0.0


async def _silent() -> AsyncIterator[broker_pb2.WatchRequest]:
    await asyncio.Event().wait()
    yield broker_pb2.WatchRequest()  # pragma: no cover - never reached


async def _acks(lease_ids: list[str]) -> AsyncIterator[broker_pb2.WatchRequest]:
    for lease_id in lease_ids:
        yield broker_pb2.WatchRequest(ack=broker_pb2.Ack(lease_id=lease_id, generation=1))
    await asyncio.Event().wait()


async def _drain(call: Any) -> None:
    async with asyncio.timeout(READ):
        while True:
            event = await call.read()
            if event is grpc.aio.EOF:
                await call


async def ended(call: Any) -> grpc.RpcError:
    """Read the stream until it ends; its error."""
    with pytest.raises(grpc.RpcError) as caught:
        await _drain(call)
    return caught.value


async def open_stream(stub: Any, token: Any, requests: Any = None) -> Any:
    call = stub.Watch(requests if requests is not None else _silent(), metadata=bearer(token))
    async with asyncio.timeout(READ):
        event = await call.read()  # the snapshot: the stream is open
    if event is grpc.aio.EOF:
        await call
    return call


async def attack(broker: BrokerProcess, attacker: Any) -> dict[str, Any]:
    """Every attack of one pod, once; what each ended with."""
    seen: dict[str, Any] = {}
    async with broker_stub(broker.port, broker.ca) as stub:
        held = [await open_stream(stub, attacker) for _ in range(PER_POD_STREAMS)]
        past_cap = []
        for _ in range(20):  # streams past the cap, again and again
            with pytest.raises(grpc.RpcError) as refused:
                await open_stream(stub, attacker)
            past_cap.append(refused.value)
        seen["past_cap"] = past_cap
        for call in held:
            call.cancel()

        # An Ack whose lease id is not one (first: the rate limit is checked before the id).
        marker = "not-a-lease-" + "x" * 200
        seen["ack_junk"] = await ended(await open_stream(stub, attacker, _acks([marker])))
        seen["marker"] = marker
        # Well-formed Acks of leases that do not exist, as fast as the stream takes them.
        junk = [str(uuid.uuid4()) for _ in range(FLOOD)]
        seen["limit_ends_before_flood"] = ended_for_a_limit(broker)
        seen["ack_flood"] = await ended(await open_stream(stub, attacker, _acks(junk)))
        seen["limit_ends_after_flood"] = ended_for_a_limit(broker)

        # Renew and Release floods, in parallel.
        async def call(method: str) -> grpc.StatusCode:
            request_type = (
                broker_pb2.RenewRequest if method == "Renew" else broker_pb2.ReleaseRequest
            )
            try:
                await getattr(stub, method)(
                    request_type(lease_id=str(uuid.uuid4())), metadata=bearer(attacker)
                )
            except grpc.RpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        # 20 at once: what is measured is the pod's rate limit, not how many pod reads the
        # member API server answers at once (every call is authenticated first).
        methods = ["Renew", "Release"] * (FLOOD // 2)
        started = time.monotonic()
        codes = []
        for at in range(0, FLOOD, 20):
            codes += await asyncio.gather(*(call(m) for m in methods[at : at + 20]))
        seen["flood_seconds"] = time.monotonic() - started
        seen["lease_calls"] = codes

    # Oversized messages: a 1 MiB Release, many at once, on fresh channels.
    async def oversized() -> grpc.StatusCode:
        async with broker_stub(broker.port, broker.ca) as stub:
            try:
                await stub.Release(
                    broker_pb2.ReleaseRequest(lease_id="x" * OVERSIZED), metadata=bearer(attacker)
                )
            except grpc.RpcError as error:
                return error.code()
        return grpc.StatusCode.OK

    seen["oversized"] = await asyncio.gather(*(oversized() for _ in range(50)))
    return seen


async def test_one_pod_cannot_exhaust_the_broker(
    broker: BrokerProcess, kube_clusters: dict[str, KubeCluster]
) -> None:
    attacker = mint(kube_clusters["a"], pod_prefix="attacker")
    neighbour = mint(kube_clusters["a"], pod_prefix="neighbour")  # same namespace, account
    elsewhere = mint(kube_clusters["b"], pod_prefix="elsewhere")
    for token in (attacker, neighbour, elsewhere):
        await issue(broker, token)
    quiet = {n: await latencies(broker, t, 20) for n, t in (("a", neighbour), ("b", elsewhere))}
    rss_before, log_before = rss_mib(broker.process.pid), broker.log.stat().st_size
    lines_before = broker.log.read_bytes().count(b"\n")

    attacking = asyncio.create_task(attack(broker, attacker))
    loud: dict[str, list[float]] = {"a": [], "b": []}
    while not attacking.done():
        for name, token in (("a", neighbour), ("b", elsewhere)):
            loud[name] += await latencies(broker, token, 1)
    seen = attacking.result()

    rss_after = rss_mib(broker.process.pid)
    log_bytes = broker.log.stat().st_size - log_before
    log_lines = broker.log.read_bytes().count(b"\n") - lines_before
    attack_calls = 20 + FLOOD + 1 + FLOOD + 50
    for name in ("a", "b"):
        print(f"cluster {name} Issue without the attack: {figure(quiet[name])}")
        print(f"cluster {name} Issue during the attack:  {figure(loud[name])}")
    print(f"broker RSS {rss_before:.0f} MiB before, {rss_after:.0f} MiB after the attack")
    print(f"broker log during the attack: {log_lines} lines, {log_bytes} bytes "
          f"for about {attack_calls} attacking calls")  # fmt: skip
    print(f"Renew/Release flood: {Counter(code.name for code in seen['lease_calls'])}")

    for refused in seen["past_cap"]:
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limits.pod_watch_streams" in (refused.details() or "")
        assert f"already holds {PER_POD_STREAMS} Watch streams" in (refused.details() or "")
    flood = seen["ack_flood"]
    # The broker ended the flood's stream for the rate limit, by its own count; the client
    # sees that status, unless it was still sending Acks when the stream ended: then gRPC
    # reports the client's own failed send (INTERNAL, "execute_batch") instead.
    assert seen["limit_ends_after_flood"] - seen["limit_ends_before_flood"] == 1
    if "execute_batch" not in (flood.debug_error_string() or ""):
        assert flood.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limits.pod_lease_call_rate" in (flood.details() or "")
    junk = seen["ack_junk"]
    assert junk.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(junk).reason == "INVALID_FIELD"
    assert (junk.details() or "").startswith("ack.lease_id:")
    assert seen["marker"] not in (junk.details() or "")
    codes = seen["lease_calls"]
    # The bucket was emptied by the Acks: what refilled during the flood (2 a second) is
    # looked up and not found; the rest is refused.
    refilled = int(2 * seen["flood_seconds"]) + 2
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= FLOOD - refilled
    assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND}
    assert set(seen["oversized"]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    # Bounded: no line per refused call, no junk lease id in the log, no memory kept per call.
    assert log_lines < attack_calls / 4
    assert seen["marker"].encode() not in broker.log.read_bytes()
    assert rss_after - rss_before < 64
    assert loud["a"], "the neighbour's calls all succeeded during the attack"
    assert loud["b"], "so did the other cluster's pod's"


async def test_a_watch_stream_ends_when_its_pod_is_deleted(
    broker: BrokerProcess, kube_clusters: dict[str, KubeCluster]
) -> None:
    cluster = kube_clusters["a"]
    token = mint(cluster, pod_prefix="deleted")
    await issue(broker, token)
    async with broker_stub(broker.port, broker.ca) as stub:
        call = await open_stream(stub, token)
        with cluster.api_client() as api:
            core(api).delete_namespaced_pod(token.pod, token.namespace, grace_period_seconds=0)
        error = await ended(call)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no longer exists" in (error.details() or "")


async def test_reflection_is_off_on_the_workload_port(broker: BrokerProcess) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=broker.ca.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{broker.port}", credentials) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        with pytest.raises(grpc.RpcError) as refused:
            async for _ in call:
                pass
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
