"""Real pods on cluster a's node, with and without injection, side by side in one run
(issue 15). Run as root: `python -m tests.bench.nodepods` (also run by `tests/run bench`);
writes docs/benchmarks/node-pods.json, which `python -m tests.bench` renders into its page.

- Time from pod create to the app container's start: pods created one at a time, plain and
  injected alternately, each deleted before the next; the start is seen by polling the API
  server every POLL seconds (the figures' resolution).
- The agent's memory from its container's cgroup: working set = usage minus inactive file
  (what the kubelet and the benchmark page's RSS figures count).
- One exec probe (the webhook's `python3 -I -m injector.probe`, a fresh Python per probe) run
  in the agent container: its wall time, CPU time and peak RSS, and what the probe periods
  make of them.
- The injected pod's start in three parts, from the agent's log (agent_phases).
- The machine's 1-minute load average before and after the pods (other work shares the CPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from injector.contract import PROBE_COMMAND
from injector.webhook.patch import PROBE_PERIOD_SECONDS, READINESS_PERIOD_SECONDS
from tests.bed.bed import Bed
from tests.bed.kube import KubeCluster
from tests.scene.broker_thread import scene_broker, webhooks
from tests.scene.nodepods import (
    NodePod,
    agent_status,
    create,
    load_images,
    pod_body,
    prepare_namespace,
)
from tests.scene.pods import AGENT

from .stats import describe

OUT = Path(__file__).parents[2] / "docs" / "benchmarks" / "node-pods.json"
NAMESPACE = "orders"
POLL = 0.05
MEMORY_CGROUP = Path("/sys/fs/cgroup/memory")
PROBE_SAMPLES = 5
# One probe in the agent container: its wall time, its CPU time and its peak RSS (KiB).
PROBE = f"""
import resource, subprocess, time
started = time.monotonic()
code = subprocess.run({list(PROBE_COMMAND)!r}).returncode
wall = time.monotonic() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(code, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)
"""


def say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def app_started(pod: NodePod) -> bool:
    status = pod.read().status
    app = [s for s in status.container_statuses or [] if s.name == "app"]
    return bool(app and app[0].state and app[0].state.running)


def time_to_app_start(cluster: KubeCluster, body: dict[str, Any]) -> tuple[float, float, NodePod]:
    """Seconds from create to the app's start, the wall-clock time of the create, the pod."""
    started, created_at = time.monotonic(), time.time()
    pod = create(cluster, NAMESPACE, body)
    while not app_started(pod):
        if time.monotonic() - started > 120:
            raise RuntimeError(f"pod {pod.name}: its app container never started")
        time.sleep(POLL)
    return time.monotonic() - started, created_at, pod


def agent_phases(pod: NodePod, created_at: float, seconds: float) -> tuple[float, float, float]:
    """The injected pod's start in three parts, from the agent's own log (the node's clock
    is this machine's): create → `agent.start` (scheduling, sandbox, the agent container and
    its Python's imports), `agent.start` → `agent.ready` (Issue and the file writes), and
    `agent.ready` → the app seen running (the startupProbe's next round, the app container's
    start, the status reaching the API server)."""
    events = {}
    for line in pod.logs(AGENT).splitlines():
        if line.startswith("{"):  # the agent's JSON lines; anything else is not its log
            record = json.loads(line)
            events[record["event"]] = datetime.fromisoformat(record["timestamp"]).timestamp()
    start, ready = events["agent.start"], events["agent.ready"]
    return start - created_at, ready - start, created_at + seconds - ready


def working_set_mib(pod: NodePod) -> float:
    """The agent container's memory working set from its cgroup (cgroup v1, cgroupfs)."""
    container_id = agent_status(pod.read()).container_id.split("://", 1)[1]
    (folder,) = MEMORY_CGROUP.glob(f"kubepods*/**/{container_id}")
    usage = int((folder / "memory.usage_in_bytes").read_text())
    stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
    return (usage - int(stat["total_inactive_file"])) / 2**20


def probe_cost(pod: NodePod) -> list[tuple[float, float, float]]:
    """(wall s, CPU s, peak RSS MiB) of PROBE_SAMPLES probes run in the agent container."""
    samples = []
    for _ in range(PROBE_SAMPLES):
        code, wall, cpu, rss = pod.exec("python3", "-c", PROBE, container=AGENT).split()
        if code != "0":
            raise RuntimeError(f"the probe failed in pod {pod.name}: exit {code}")
        samples.append((float(wall), float(cpu), int(rss) / 1024))
    return samples


def measure(pods: int) -> dict[str, Any]:
    run = secrets.token_hex(3)
    opt_in = (f"keyferry.bench/node-{run}", "on")
    bed = Bed()
    try:
        vault, postgres = bed.vault(), bed.postgres()
        cluster = bed.cluster("a")
        assert isinstance(cluster, KubeCluster)
        node = bed.node()
        images = load_images(node)
        folder = bed.workspace.root / "bench-node"
        folder.mkdir()
        broker = scene_broker(
            folder,
            vault,
            postgres,
            {"a": cluster},
            workload_host=node.address,
            db_host=node.address,
        )
        prepare_namespace(cluster, NAMESPACE, opt_in)
        try:
            with webhooks([cluster], folder / "webhook", broker.broker, run, opt_in, images.agent):
                time.sleep(2)  # the registration reaching the API server's informer
                load_before = os.getloadavg()[0]
                figures = _side_by_side(cluster, images.app, pods)
                figures["load_average_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
                return figures
        finally:
            broker.stop()
    finally:
        bed.stop()


def _side_by_side(cluster: KubeCluster, app: str, pods: int) -> dict[str, Any]:
    plain: list[float] = []
    injected: list[float] = []
    memory: list[float] = []
    probes: list[tuple[float, float, float]] = []
    phases: list[tuple[float, float, float]] = []
    for number in range(2 * pods + 1):
        inject = number % 2 == 1  # a plain pod first: it warms the image's first start
        body = pod_body(f"bench-{number}", app, {"db": "orders-db-ro"} if inject else {})
        if not inject:
            body["metadata"]["annotations"].pop("keyferry.io/inject")
        seconds, created_at, pod = time_to_app_start(cluster, body)
        if number == 0:
            say(f"warm-up pod: app started after {seconds:.2f}s (not counted)")
        elif inject:
            injected.append(seconds)
            phases.append(agent_phases(pod, created_at, seconds))
            pod.wait_ready()
            time.sleep(1)
            memory.append(working_set_mib(pod))
            if len(probes) < 3 * PROBE_SAMPLES:
                probes += probe_cost(pod)
        else:
            plain.append(seconds)
        say(f"pod {number}: {'injected' if inject else 'plain'}, app started after {seconds:.2f}s")
        pod.delete()
    figures = _figures(plain, injected, memory, probes)
    figures["injected_phases_ms"] = {
        name: describe([p[i] * 1000 for p in phases]).as_dict()
        for i, name in enumerate(("to_agent_start", "issue_and_write", "files_to_app_start"))
    }
    return figures


def _figures(
    plain: list[float],
    injected: list[float],
    memory: list[float],
    probes: list[tuple[float, float, float]],
) -> dict[str, Any]:
    plain_ms = describe([s * 1000 for s in plain])
    injected_ms = describe([s * 1000 for s in injected])
    cpu = describe([c * 1000 for _, c, _ in probes])
    per_minute = 60 / READINESS_PERIOD_SECONDS * cpu.p50 / 1000
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "pods_each": len(plain),
        "poll_seconds": POLL,
        "plain_ms": plain_ms.as_dict(),
        "injected_ms": injected_ms.as_dict(),
        "added_p50_ms": injected_ms.p50 - plain_ms.p50,
        "added_p95_ms": injected_ms.p95 - plain_ms.p95,
        "agent_working_set_mib": describe(memory).as_dict(),
        "probe": {
            "samples": len(probes),
            "wall_ms": describe([w * 1000 for w, _, _ in probes]).as_dict(),
            "cpu_ms": cpu.as_dict(),
            "peak_rss_mib": describe([r for _, _, r in probes]).as_dict(),
            "startup_period_seconds": PROBE_PERIOD_SECONDS,
            "readiness_period_seconds": READINESS_PERIOD_SECONDS,
            "cpu_seconds_per_pod_minute": per_minute,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.nodepods", description=__doc__)
    parser.add_argument("--pods", type=int, default=20, help="pods of each kind (default 20)")
    parser.add_argument("--out", type=Path, default=OUT, help="the JSON to write")
    args = parser.parse_args(argv)
    figures = measure(args.pods)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    say(f"wrote {args.out}")
    print(json.dumps(figures, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
