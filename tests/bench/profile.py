"""Profile the broker under Issue→Release load (the broker runs in this process, so one
profile holds the broker, its worker threads and the load generator).

python -m tests.bench.profile [--role app-config] [--concurrency 8] [--calls 400]

Two views of one run, under docs/benchmarks/: pyinstrument's tree of the event loop
(profile-<role>.txt) and py-spy's samples of every thread that held the GIL — on 2 cores
the GIL is what one broker process saturates first — summed per function
(profile-<role>-gil.txt, the top entries by own time and by time including callees).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from pyinstrument import Profiler

from tests.bed import Bed
from tests.scene.broker import ROLE

from .scene import KV_ROLE, say, scene
from .workloads import keyferry_issue_release

OUT = Path(__file__).parents[2] / "docs" / "benchmarks"
CREDENTIAL = {ROLE: "orders-db", KV_ROLE: "config"}


async def profile(
    role: str, concurrency: int, calls: int, out: Path, *, bed: Bed | None = None
) -> Path:
    async with scene(bed) as running:
        tokens = await running.pods(concurrency)
        await keyferry_issue_release(running.broker, tokens, 2, role, CREDENTIAL[role])  # warm
        profiler = Profiler(interval=0.0005, async_mode="disabled")
        say(f"profiling {calls} Issue→Release of {role} at concurrency {concurrency}")
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"profile-{role}"
        raw = stem.with_name(f"{stem.name}-gil.raw")
        spy = _spy(raw)
        profiler.start()
        run = await keyferry_issue_release(
            running.broker, tokens, max(1, calls // concurrency), role, CREDENTIAL[role]
        )
        profiler.stop()
        if spy is not None:
            spy.send_signal(2)  # SIGINT: py-spy writes what it has and exits
            spy.wait(30)
        rate = len(run.total) / run.wall
        say(f"{len(run.total)} calls in {run.wall:.1f} s: {rate:.1f}/s")
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    stem.with_suffix(".txt").write_text(f"{len(run.total)} calls, {rate:.1f}/s\n{text}")
    if raw.exists():
        stem.with_name(f"{stem.name}-gil.txt").write_text(summarise_raw(raw.read_text()))
        raw.unlink()
    return stem.with_suffix(".txt")


def _spy(raw: Path) -> subprocess.Popen[bytes] | None:
    binary = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if binary is None:
        say("py-spy is not installed: only the event loop's profile is written")
        return None
    command = [binary, "record", "--pid", str(os.getpid()), "--gil", "--format", "raw"]
    command += ["--rate", "200", "--nonblocking", "--output", str(raw)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise_raw(collapsed: str, top: int = 60) -> str:
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
    lines = [f"{total} samples holding the GIL", "", "own time:"]
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
