"""The activity chart: per-minute counts drawn as an inline SVG on the server (no script,
no image request). One polyline per series over the minutes, the largest count on top."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT, PAD = 720, 180, 24
SERIES = (
    ("issued", "#2b6cb0"),
    ("rotated", "#2f855a"),
    ("revoked", "#b7791f"),
    ("refused", "#c53030"),
)


@dataclass(frozen=True)
class Minute:
    label: str
    issued: int
    rotated: int
    revoked: int
    refused: int


def activity_svg(minutes: Sequence[Minute]) -> Markup:
    """The chart of `minutes` (oldest first), with a legend of each series' total."""
    if not minutes:
        return Markup("<p>No activity to show.</p>")
    top = max(1, *(getattr(m, name) for m in minutes for name, _ in SERIES))
    step = (WIDTH - 2 * PAD) / max(1, len(minutes) - 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT + 40}"'
        f' role="img" aria-label="activity per minute">',
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" '
        'stroke="#999"/>',
        f'<text x="{PAD}" y="{PAD - 8}" font-size="11">{top} per minute</text>',
    ]
    for index, (name, colour) in enumerate(SERIES):
        points = " ".join(
            f"{PAD + i * step:.1f},{HEIGHT - PAD - (HEIGHT - 2 * PAD) * getattr(m, name) / top:.1f}"
            for i, m in enumerate(minutes)
        )
        total = sum(getattr(m, name) for m in minutes)
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>'
        )
        x = PAD + index * 150
        parts.append(
            f'<rect x="{x}" y="{HEIGHT + 8}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="{HEIGHT + 17}" font-size="12" class="legend-{name}">'
            f"{escape(name)}: {total}</text>"
        )
    parts.append(
        f'<text x="{PAD}" y="{HEIGHT - 6}" font-size="10">{escape(minutes[0].label)}</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 6}" font-size="10" text-anchor="end">'
        f"{escape(minutes[-1].label)}</text>"
    )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from numbers and escaped text only
