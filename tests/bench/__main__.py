"""Run keyferry's benchmarks on a fresh bed and write docs/benchmarks.md, its .json of raw
figures and its plots (docs/benchmarks/*.png).

python -m tests.bench            # the full run (about 20 minutes on 2 cores)
python -m tests.bench --quick    # a few samples of each, to see that the code runs
python -m tests.bench.profile    # py-spy on the broker process under Issue→Release load
python -m tests.bench.soak       # the soak (tests/run soak; --out docs/benchmarks/soak.json)
python -m tests.bench.nodepods   # real pods on the node, as root (docs/benchmarks/node-pods.json)
python -m tests.bench.tracing_overhead   # tracing off/on (docs/benchmarks/tracing-overhead.json)
python -m tests.bench --render-only   # the page and plots again from docs/benchmarks.json
python -m tests.bench --only store    # one section measured again, the rest kept
python -m tests.bench --only pairs --no-write   # the Issue pairs alone (a hot-path change)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .report import render, write
from .scenarios import FULL, QUICK, SECTIONS, run_all, run_section

DOCS = Path(__file__).parents[2] / "docs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few samples only (smoke)")
    parser.add_argument(
        "--out", type=Path, default=DOCS / "benchmarks.md", help="the page to write"
    )
    parser.add_argument("--no-write", action="store_true", help="print only, write nothing")
    parser.add_argument(
        "--only",
        choices=SECTIONS,
        help="measure this section again and keep every other figure of the page's JSON "
        "(the page names the section and when it was measured)",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="run nothing: regenerate the page and plots from the page's JSON",
    )
    args = parser.parse_args(argv)
    if args.render_only:
        figures = json.loads(args.out.with_suffix(".json").read_text())
    elif args.only:
        figures = json.loads(args.out.with_suffix(".json").read_text())
        section = run_section(args.only, QUICK if args.quick else FULL)
        remeasured = {**figures.get("remeasured", {}), **section.pop("remeasured")}
        load = {**figures.get("load", {}), **section.pop("load", {})}  # the other sections'
        figures.update(section, remeasured=remeasured, load=load)
    else:
        figures = run_all(QUICK if args.quick else FULL)
    soak_file = args.out.with_suffix("") / "soak.json"
    soak = json.loads(soak_file.read_text()) if soak_file.is_file() else None
    node_file = args.out.with_suffix("") / "node-pods.json"
    node = json.loads(node_file.read_text()) if node_file.is_file() else None
    tracing_file = args.out.with_suffix("") / "tracing-overhead.json"
    tracing = json.loads(tracing_file.read_text()) if tracing_file.is_file() else None
    page = render(figures, soak, node, tracing)
    if not args.no_write:
        plots = write(figures, page, args.out)
        print(
            f"[bench] wrote {args.out}, {args.out.with_suffix('.json')} and {len(plots)} plots",
            file=sys.stderr,
        )
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
