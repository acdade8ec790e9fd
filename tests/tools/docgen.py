"""What the reference generators share: write a page, or with `--check` fail when the
committed page differs from a fresh one (so the docs never drift from the code)."""

from __future__ import annotations

import argparse
import html
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(target: Path, render: Callable[[], str], command: str, description: str | None) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="fail if the committed page is stale")
    args = parser.parse_args()
    fresh = render()
    relative = target.relative_to(ROOT)
    if args.check:
        if not target.exists() or target.read_text() != fresh:
            sys.exit(f"{relative} is stale; run `python -m {command}` and commit it")
        print(f"{relative} is up to date")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(fresh)
    print(f"wrote {relative}")


def escape_outside_code(text: str) -> str:
    """Markdown would take a bare `<name>` for an HTML tag and drop it; code spans keep theirs."""
    parts = text.split("`")
    return "`".join(p if i % 2 else html.escape(p, quote=False) for i, p in enumerate(parts))


def cell(text: str) -> str:
    """Text that fits in one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")
