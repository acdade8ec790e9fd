"""The benchmarks, the profile and the soak, each at a few samples on the shared bed: every
code path runs and produces its figures. No time is asserted — only that figures exist,
the page and plots are written from them, and the soak's checks hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.bed import Bed

from .profile import profile, summarise_raw
from .report import _soak, render, targets, write
from .scenarios import QUICK, measure
from .scene import KV_ROLE, scene
from .soak import soak

pytestmark = pytest.mark.bed

SECTIONS = (
    "## 1. Issue overhead",
    "## 2. KV v2 read path",
    "### Push latency",
    "### KV fan-out",
    "### Dynamic fleet rotation",
    "## 4. Webhook admission",
    "### Agent",
    "### Broker with idle Watch streams",
    "## 6. Scale of the store",
    "## 7. Growth",
    "## Machine load by section",
)


def _summary(s: dict[str, Any]) -> bool:
    return bool(s["n"] > 0 and s["p50"] <= s["p95"] <= s["p99"])


async def test_every_benchmark_produces_figures_and_the_page_and_plots(
    bed: Bed, tmp_path: Path
) -> None:
    figures: dict[str, Any] = {
        "date": "smoke",
        "seconds": 0,
        "machine": {"cores": 2, "memory": "?", "python": "3", "platform": "smoke"},
        "versions": dict.fromkeys(
            ("vault", "vault_reported", "postgresql", "kubernetes", "grpcio", "hvac"), "?"
        ),
        "plan": {"quick": True},
    }
    async with scene(bed) as running:
        await measure(running, QUICK, figures)

    for key in ("issue", "kv"):
        assert [row["concurrency"] for row in figures[key]] == list(QUICK.concurrency)
        assert all(_summary(row["keyferry"]) and _summary(row["direct"]) for row in figures[key])
        # the broker is its own process: its CPU was read around the keyferry halves
        assert all(row["broker_cpu_ms_per_call"] > 0 for row in figures[key])
        assert all(len(row["load_before"]) == 3 for row in figures[key])
    (on_postgres,) = figures["issue_postgres_store"]
    assert on_postgres["concurrency"] == QUICK.concurrency[-1]
    assert _summary(on_postgres["keyferry"])
    assert [row["watchers"] for row in figures["fanout"]] == list(QUICK.fanout)
    for row in figures["fanout"]:
        assert row["version_to_ack"]["n"] == row["watchers"]
        assert sum(row["clusters"].values()) == row["watchers"]
    assert len(figures["fanout"][-1]["clusters"]) == 3
    assert [row["concurrency"] for row in figures["fleet"]] == list(QUICK.fleet_concurrency)
    assert all(row["keyferry"]["n"] >= QUICK.fleet_pods for row in figures["fleet"])
    agents = figures["agents"]
    assert agents["agents"] == QUICK.agents
    assert agents["rotated"] == QUICK.agents
    assert agents["idle_rss_mib"]["p50"] > 0
    streams = [p["streams"] for p in figures["streams"]["points"]]
    assert streams == [0, *QUICK.streams]
    for database in ("sqlite", "postgresql"):
        rows = figures["store"][database]
        assert {r["rows"] for r in rows} == set(QUICK.store_rows)
        assert all(_summary(r) for r in rows)
    assert _summary(figures["webhook"]["inside"])
    assert _summary(figures["rotation"]["reply_to_ack"])

    assert {"rotation", "fanout", "fleet", "store"} <= set(figures["load"])
    judged = targets(figures)
    assert len(judged) >= 12
    page = render(figures)
    for section in SECTIONS:
        assert section in page
    out = tmp_path / "benchmarks.md"
    plots = write(figures, page, out)
    assert json.loads(out.with_suffix(".json").read_text())["fanout"] == figures["fanout"]
    assert out.read_text().rstrip() == page.rstrip()
    assert {p.name for p in plots} >= {"issue-latency.png", "fanout.png", "store-sqlite.png"}
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in plots)
    for link in (line for line in page.splitlines() if line.startswith("![")):
        assert (tmp_path / link.split("(")[1].rstrip(")")).is_file(), link


def test_profile_summary_sums_own_and_inclusive_time() -> None:
    collapsed = "\n".join(
        [
            "main (a.py:1);issue (b.py:10);decide (c.py:5) 3",
            "main (a.py:1);issue (b.py:12) 1",
            "not a stack line",
        ]
    )
    text = summarise_raw(collapsed)
    assert text.startswith("4 samples holding the GIL")
    own = text.split("own time:")[1].split("including callees:")[0]
    assert "75.0%  decide (c.py)" in own
    assert "25.0%  issue (b.py)" in own
    assert "100.0%  issue (b.py)" in text.split("including callees:")[1]


async def test_profile_of_issue_writes_both_views(bed: Bed, tmp_path: Path) -> None:
    written = await profile(KV_ROLE, 2, 8, tmp_path, bed=bed)
    assert written.read_text().splitlines()[0].startswith("8 calls")
    assert "broker CPU" in written.read_text().splitlines()[0]
    gil = tmp_path / f"profile-{KV_ROLE}-gil.txt"
    assert gil.read_text().split()[0].isdigit()


async def test_a_short_soak_leaks_no_lease_keeps_memory_and_the_audit_verifies(
    bed: Bed,
) -> None:
    async with scene(bed) as running:
        # half a minute: the warm RSS after 10 s, the end's from the last 3 samples 2 s apart
        result = await soak(running, minutes=0.5, warm_up=10.0, sample_every=2.0)
    assert result.calls["Issue"] > 0
    assert result.calls["RotateLeases"] > 0
    assert result.calls["Renew"] > 0
    assert result.calls["Release"] > 0
    assert not result.errors, result.errors
    assert result.untracked == []
    assert result.vault_leases_left == []
    assert result.store_live == 0
    assert result.growth <= 0.10, result.as_dict()
    assert result.audit["ok"], result.audit
    assert result.audit["records"] > 0
    section = "\n".join(_soak(result.as_dict()))
    assert "## Soak (issue 10)" in section
    assert "**missed**" not in section
