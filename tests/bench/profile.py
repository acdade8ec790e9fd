"""Profile the broker process (`keyferry broker serve`, as deployed) under Issue→Release
load from load processes.

python -m tests.bench.profile [--role app-config] [--concurrency 8] [--calls 400]

Two views of one run, from py-spy attached to the broker's pid, under docs/benchmarks/:
the samples of every thread that held the GIL (profile-<role>-gil.txt) — on 2 cores the
GIL is what one broker process saturates first — and of every thread on CPU, GIL or not
(profile-<role>.txt: native gRPC, TLS and SQLite time too), each summed per function (the
top entries by own time and by time including callees). The first line of profile-<role>.txt
gives the calls, their rate and the broker's CPU milliseconds per Issue→Release.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.bed import Bed
from tests.scene.broker import ROLE

from .load import LoadPool, processes_for
from .scene import KV_ROLE, say, scene

OUT = Path(__file__).parents[2] / "docs" / "benchmarks"
CREDENTIAL = {ROLE: "orders-db", KV_ROLE: "config"}


async def profile(
    role: str, concurrency: int, calls: int, out: Path, *, bed: Bed | None = None
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"profile-{role}"
    gil_raw, cpu_raw = stem.with_name(f"{stem.name}-gil.raw"), stem.with_suffix(".raw")
    async with scene(bed) as running:
        tokens = await running.pods(concurrency)
        broker = running.broker
        async with LoadPool(processes_for(concurrency), broker) as pool:
            await pool.keyferry(tokens, 2, role, CREDENTIAL[role])  # warm
            say(f"profiling {calls} Issue→Release of {role} at concurrency {concurrency}")
            spies = [_spy(broker.pid, gil_raw, gil=True), _spy(broker.pid, cpu_raw, gil=False)]
            run = await pool.keyferry(tokens, max(1, calls // concurrency), role, CREDENTIAL[role])
            for spy in spies:
                if spy is not None:
                    spy.send_signal(2)  # SIGINT: py-spy writes what it has and exits
                    spy.wait(30)
        rate = len(run.total) / run.wall
        cpu_ms = 1000 * run.broker_cpu / len(run.total)
        say(f"{len(run.total)} calls in {run.wall:.1f} s: {rate:.1f}/s, {cpu_ms:.1f} ms CPU each")
    header = (
        f"{len(run.total)} calls, {rate:.1f}/s, broker CPU {cpu_ms:.1f} ms per Issue→Release "
        f"(py-spy attached: it slows the broker)\n"
    )
    on_cpu = summarise_raw(cpu_raw.read_text(), "on CPU") if cpu_raw.exists() else ""
    stem.with_suffix(".txt").write_text(header + on_cpu)
    if gil_raw.exists():
        stem.with_name(f"{stem.name}-gil.txt").write_text(summarise_raw(gil_raw.read_text()))
    gil_raw.unlink(missing_ok=True)
    cpu_raw.unlink(missing_ok=True)
    return stem.with_suffix(".txt")


def _spy(pid: int, raw: Path, *, gil: bool) -> subprocess.Popen[bytes] | None:
    binary = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if binary is None:
        say("py-spy is not installed: no profile is written")
        return None
    command = [binary, "record", "--pid", str(pid), "--format", "raw"]
    command += ["--gil"] if gil else []
    command += ["--rate", "200", "--nonblocking", "--output", str(raw)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise_raw(collapsed: str, what: str = "holding the GIL", top: int = 120) -> str:
    """py-spy's collapsed stacks ("f1;f2;f3 count") as own and inclusive time per function."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples {what}", "", "own time:"]
    lines += [f"{100 * n / total:6.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "including callees:"]
    lines += [f"{100 * n / total:6.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def _frame(frame: str) -> str:
    """`function (path/to/module.py:123)` without the line number."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile", description=__doc__)
    parser.add_argument("--role", default=KV_ROLE, choices=sorted(CREDENTIAL))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    written = asyncio.run(profile(args.role, args.concurrency, args.calls, args.out))
    print(written.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
