"""The growth plots of docs/benchmarks.md (PNG, matplotlib's Agg backend), from the figures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

Plot = Callable[[Axes, dict[str, Any]], None]


def _latency_vs_concurrency(key: str, title: str) -> Plot:
    def draw(ax: Axes, f: dict[str, Any]) -> None:
        rows = f[key]
        c = [r["concurrency"] for r in rows]
        for side, style in (("keyferry", "o-"), ("direct", "s--")):
            label = "keyferry" if side == "keyferry" else "direct hvac"
            ax.plot(c, [r[side]["p50"] for r in rows], style, label=f"{label} p50")
            ax.plot(c, [r[side]["p99"] for r in rows], style, alpha=0.4, label=f"{label} p99")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent callers")
        ax.set_ylabel("ms per Issue→Release (hvac: per credential)")
        ax.set_title(title)
        ax.legend(fontsize="small")

    return draw


def _throughput_vs_concurrency(key: str, title: str) -> Plot:
    def draw(ax: Axes, f: dict[str, Any]) -> None:
        rows = f[key]
        c = [r["concurrency"] for r in rows]
        ax.plot(c, [r["keyferry"]["rate"] for r in rows], "o-", label="keyferry")
        ax.plot(c, [r["direct"]["rate"] for r in rows], "s--", label="direct hvac")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent callers")
        ax.set_ylabel("per second")
        ax.set_title(title)
        ax.legend(fontsize="small")

    return draw


def _fanout(ax: Axes, f: dict[str, Any]) -> None:
    rows = f["fanout"]
    n = [r["watchers"] for r in rows]
    for q, style in (("p50", "o-"), ("p99", "s-")):
        ax.plot(n, [r["version_to_ack"][q] for r in rows], style, label=f"new version → Ack {q}")
    ax.plot(n, [r["last_ack_ms"] for r in rows], "^--", label="last Ack")
    ax.axhline(1000, color="grey", linestyle=":", label="target: last Ack p99 ≤ 1 s at 1,000")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("watchers (Watch streams over clusters a, b, c)")
    ax.set_ylabel("ms")
    ax.set_title("KV fan-out")
    ax.legend(fontsize="small")


def _streams(ax: Axes, f: dict[str, Any]) -> None:
    points = f["streams"]["points"]
    ax.plot([p["streams"] for p in points], [p["rss_mib"] for p in points], "o-", label="RSS")
    ax.set_xlabel("idle Watch streams")
    ax.set_ylabel("broker RSS, MiB")
    ax.set_title("Broker memory against open streams")
    ax.legend(fontsize="small")


def _store(database: str) -> Plot:
    def draw(ax: Axes, f: dict[str, Any]) -> None:
        rows = f["store"][database]
        for query in sorted({r["query"] for r in rows}):
            mine = [r for r in rows if r["query"] == query]
            ax.plot([r["rows"] for r in mine], [r["p99"] for r in mine], "o-", label=query)
        ax.axhline(50, color="grey", linestyle=":", label="target p99 ≤ 50 ms")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("leases in the table")
        ax.set_ylabel("p99 ms per selection")
        ax.set_title(f"Store selections against table size: {database}")
        ax.legend(fontsize="x-small")

    return draw


PLOTS: dict[str, Plot] = {
    "issue-latency": _latency_vs_concurrency("issue", "Database credential: Issue→Release"),
    "issue-throughput": _throughput_vs_concurrency("issue", "Database credential: throughput"),
    "kv-latency": _latency_vs_concurrency("kv", "KV v2 secret: Issue→Release vs read"),
    "kv-throughput": _throughput_vs_concurrency("kv", "KV v2 secret: throughput"),
    "fleet-throughput": _throughput_vs_concurrency(
        "fleet", "Database fleet: rotations vs direct issuance"
    ),
    "fanout": _fanout,
    "broker-streams": _streams,
    "store-sqlite": _store("sqlite"),
    "store-postgresql": _store("postgresql"),
}


def draw_all(figures: dict[str, Any], folder: Path) -> list[Path]:
    """Write every plot the figures have data for; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in PLOTS.items():
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        try:
            plot(ax, figures)
        except (KeyError, TypeError):  # that measurement failed in this run: no plot
            plt.close(fig)
            continue
        try:
            fig.tight_layout()
            path = folder / f"{name}.png"
            fig.savefig(path, metadata={"Software": None})
            written.append(path)
        finally:
            plt.close(fig)
    return written
