"""Tracing's overhead on Issue→Release, side by side (issue 23).

One bench scene (tests/bench/scene.py), the broker process restarted with tracing off, then
on (every call traced, exported over OTLP to the bed's Jaeger), then off and on again, at
each concurrency, from the same load processes and the same pods. Writes
docs/benchmarks/tracing-overhead.json, which docs/benchmarks.md shows (report.py); run
`python -m tests.bench --render-only` afterwards to put it on the page.

    python -m tests.bench.tracing_overhead            # concurrency 1 and 8
    python -m tests.bench.tracing_overhead --quick    # a few samples, to see that it runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.scene.broker import ROLE

from .load import LoadPool, processes_for
from .scene import Scene, say, scene
from .served import load_average
from .stats import ratio, summarise
from .workloads import Run

OUT = Path(__file__).parents[2] / "docs" / "benchmarks" / "tracing-overhead.json"
SAMPLES = {1: 60, 8: 240}
QUICK = {1: 4, 4: 8}
SIDES = ("off", "on")


async def measure(running: Scene, endpoint: str, samples: dict[int, int]) -> list[dict[str, Any]]:
    tokens = await running.pods(max(samples))
    rows = []
    for c, count in samples.items():
        per_worker = max(1, count // c // 2)
        processes = processes_for(c)
        say(f"tracing off/on: concurrency {c}, {per_worker * c * 2} samples a side")
        runs = {side: Run() for side in SIDES}
        before = load_average()
        for _ in range(2):
            for side in SIDES:
                broker = await running.restart_broker(
                    tracing={"enabled": side == "on", "endpoint": endpoint}
                )
                async with LoadPool(processes, broker) as pool:
                    runs[side].add(await pool.keyferry(tokens[:c], per_worker, ROLE, "orders-db"))
        after = load_average()
        off, on = (summarise(runs[s].total, runs[s].wall) for s in SIDES)
        rows.append(
            {
                "concurrency": c,
                "load_processes": processes,
                "off": off.as_dict(),
                "on": on.as_dict(),
                "p50_ratio": ratio(on.p50, off.p50),
                "throughput_ratio": ratio(on.rate, off.rate),
                "broker_cpu_ms_per_call": {
                    s: 1000 * runs[s].broker_cpu / len(runs[s].total) for s in SIDES
                },
                "unavailable": {s: runs[s].errors for s in SIDES},
                "load_before": before,
                "load_after": after,
            }
        )
    return rows


async def _run(samples: dict[int, int]) -> dict[str, Any]:
    async with scene() as running:
        jaeger = running.bed.jaeger()
        rows = await measure(running, jaeger.otlp_endpoint, samples)
    return {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": samples is QUICK,
        "receiver": "Jaeger v1.75.0 (bed, memory storage), OTLP gRPC on loopback",
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.tracing_overhead")
    parser.add_argument("--quick", action="store_true", help="a few samples only (smoke)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    figures = asyncio.run(_run(QUICK if args.quick else SAMPLES))
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
