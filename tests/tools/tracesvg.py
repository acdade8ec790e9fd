"""Render one trace, as Jaeger's query API returns it, as an SVG waterfall for the docs.

    KEYFERRY_TRACE_OUT=/tmp/issue-trace.json .venv/bin/python -m pytest \\
        tests/integration/test_tracing.py -k issue
    .venv/bin/python -m tests.tools.tracesvg /tmp/issue-trace.json docs/images/issue-trace.svg

One row per span, in tree order (a child below its parent, siblings by start time), indented
by depth; the bar spans the span's time on a common axis, coloured by the process that
exported it. Standard library only.
"""

from __future__ import annotations

import json
import sys
from html import escape
from pathlib import Path
from typing import Any

ROW, LABEL, BAR, PAD, INDENT = 22, 330, 560, 12, 14
COLOURS = {"keyferry-agent": "#2f7ed8", "keyferry-broker": "#e4823b", "keyferry-cli": "#5aa05a"}
OTHER = "#8c8c8c"


def _rows(trace: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    spans = trace["spans"]
    ids = {s["spanID"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        refs = [r["spanID"] for r in span.get("references") or [] if r["refType"] == "CHILD_OF"]
        parent = refs[0] if refs and refs[0] in ids else None
        children.setdefault(parent, []).append(span)
    rows: list[tuple[int, dict[str, Any]]] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s["startTime"]):
            rows.append((depth, span))
            walk(span["spanID"], depth + 1)

    walk(None, 0)
    return rows


def render(trace: dict[str, Any]) -> str:
    rows = _rows(trace)
    start = min(s["startTime"] for _, s in rows)
    end = max(s["startTime"] + s["duration"] for _, s in rows)
    total = max(end - start, 1)
    width = LABEL + BAR + 2 * PAD + 70
    height = (len(rows) + 3) * ROW + PAD
    services = {p["serviceName"] for p in trace["processes"].values()}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{PAD}" y="{ROW - 6}" font-weight="bold">trace {trace["traceID"]} '
        f"({total / 1000:.1f} ms, {len(rows)} spans)</text>",
    ]
    x = PAD
    for service in sorted(services):
        colour = COLOURS.get(service, OTHER)
        out.append(f'<rect x="{x}" y="{ROW + 4}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{x + 16}" y="{ROW + 14}">{escape(service)}</text>')
        x += 16 + 8 * len(service) + 20
    for index, (depth, span) in enumerate(rows):
        y = (index + 2) * ROW + PAD
        service = trace["processes"][span["processID"]]["serviceName"]
        colour = COLOURS.get(service, OTHER)
        label = escape(span["operationName"])
        out.append(f'<text x="{PAD + depth * INDENT}" y="{y + 13}">{label}</text>')
        left = PAD + LABEL + (span["startTime"] - start) / total * BAR
        size = max(span["duration"] / total * BAR, 1.0)
        out.append(
            f'<rect x="{left:.1f}" y="{y + 3}" width="{size:.1f}" height="{ROW - 8}" '
            f'fill="{colour}"/>'
        )
        out.append(
            f'<text x="{left + size + 4:.1f}" y="{y + 13}" fill="#444">'
            f"{span['duration'] / 1000:.1f} ms</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.tools.tracesvg TRACE.json OUT.svg", file=sys.stderr)
        return 2
    trace = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).parent.mkdir(parents=True, exist_ok=True)
    Path(argv[1]).write_text(render(trace))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
