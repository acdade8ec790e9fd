"""docs/benchmarks.md (and its .json of figures) from one run's figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .plots import draw_all

ANCHORS = [
    ("External Secrets Operator", "ExternalSecret `refreshInterval`", "1 h"),
    ("Secrets Store CSI Driver", "`--rotation-poll-interval` (rotation itself is opt-in)", "2 min"),
    ("Vault Agent", "renews a lease at about two-thirds of its TTL", "2/3 of TTL"),
]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _met(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _row(label: str, s: dict[str, Any]) -> str:
    rate = "" if s.get("rate") is None else f"{s['rate']:.1f}"
    return f"| {label} | {s['n']} | {_ms(s['p50'])} | {_ms(s['p95'])} | {_ms(s['p99'])} | {rate} |"


HEAD = "| | samples | p50 ms | p95 ms | p99 ms | per s |\n|---|---|---|---|---|---|"


def _pairs(rows: list[dict[str, Any]], ours: str, theirs: str, first: tuple[str, str]) -> list[str]:
    out = []
    for row in rows:
        c = row["concurrency"]
        out += [
            f"**concurrency {c}**",
            "",
            HEAD,
            _row(f"keyferry {ours}", row["keyferry"]),
            _row(f"direct hvac {theirs}", row["direct"]),
            _row(f"keyferry {first[0]} alone", row["keyferry_first"]),
            _row(f"direct hvac {first[1]} alone", row["direct_first"]),
            "",
            f"p50 ratio {_x(row['p50_ratio'])}, throughput ratio {_x(row['throughput_ratio'])}, "
            f"{first[0]} alone adds {row['added_p50_first_ms']:.2f} ms at p50."
            + _refused(row.get("keyferry_unavailable", 0)),
            "",
            *_cpu_and_load(row),
        ]
    return out


def _cpu_and_load(row: dict[str, Any]) -> list[str]:
    """The broker process's CPU per call and the machine's load around the pair."""
    if "broker_cpu_ms_per_call" not in row:
        return []
    return [
        f"Broker process CPU: **{row['broker_cpu_ms_per_call']:.1f} ms per Issue→Release** "
        f"({100 * row['broker_cpu_share_busy']:.0f}% of a core while keyferry's side ran, "
        f"{100 * row['broker_cpu_share_direct']:.0f}% while only the direct side ran); "
        f"{row['load_processes']} load process(es); load average "
        f"{_load(row['load_before'])} before, {_load(row['load_after'])} after.",
        "",
    ]


def _load(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def _load_table(f: dict[str, Any]) -> list[str]:
    """The machine's load average around every section (the pairs give theirs inline)."""
    sections = f.get("load", {})
    if not sections:
        return []
    lines = [
        "## Machine load by section",
        "",
        "Load average (1/5/15 min) before and after each later section; a figure taken at a",
        "load well above the 2 cores was measured on a busy machine.",
        "",
        "| section | before | after |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {_load(load['before'])} | {_load(load['after'])} |"
        for name, load in sections.items()
    ]
    return [*lines, ""]


def failed(f: dict[str, Any], key: str) -> str | None:
    """The error of a measurement that failed in this run, None when it has figures."""
    value = f.get(key)
    if value is None:
        return "not run"
    return value.get("error") if isinstance(value, dict) else None


def _not_measured(f: dict[str, Any], key: str) -> list[str]:
    return [f"**Not measured in this run**: {failed(f, key)}", ""]


def _refused(count: int) -> str:
    if not count:
        return ""
    return (
        f" {count} keyferry calls were refused UNAVAILABLE (the cluster's API server missed"
        " the broker's 5 s deadline under the machine's load) and are not among the samples."
    )


def targets(f: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for every target this run can judge."""
    result: list[tuple[str, str, bool]] = []
    for row in f["issue"]:
        r = row["p50_ratio"]
        result.append(
            (f"Issue→Release p50 ratio ≤ 1.2 (concurrency {row['concurrency']})", _x(r), r <= 1.2)
        )
    top = f["issue"][-1]
    t = top["throughput_ratio"]
    result.append(
        (f"throughput ≥ 0.85 of direct at concurrency {top['concurrency']}", _x(t), t >= 0.85)
    )
    for row in f["kv"]:
        added = row["added_p50_first_ms"]
        result.append(
            (
                f"KV Issue adds ≤ 2 ms at p50 over an hvac read (concurrency {row['concurrency']})",
                f"{added:.2f} ms",
                added <= 2.0,
            )
        )
    for key, what in (("kv", "KV"), ("issue", "database")):
        row = f[key][0]
        if "broker_cpu_ms_per_call" in row:
            cpu = row["broker_cpu_ms_per_call"]
            result.append(
                (
                    f"broker CPU per {what} Issue→Release ≤ 8 ms, a tenth of the ~80 ms of "
                    f"issue 19 (concurrency {row['concurrency']})",
                    f"{cpu:.1f} ms",
                    cpu <= 8.0,
                )
            )
    kv_top = f["kv"][-1]
    kv_rate = kv_top["keyferry"]["rate"] or 0.0
    result.append(
        (
            f"KV Issue→Release ≥ 150/s (concurrency {kv_top['concurrency']})",
            f"{kv_rate:.1f}/s",
            kv_rate >= 150,
        )
    )
    for key, what in (
        ("fanout", "KV fan-out"),
        ("fleet", "fleet rotation"),
        ("agents", "agent footprint"),
        ("streams", "broker with idle streams"),
        ("store", "store scale"),
        ("webhook", "webhook admission"),
    ):
        if failed(f, key):
            result.append((f"{what}: not measured", str(failed(f, key)), False))
    if not failed(f, "fanout"):
        fan = f["fanout"][-1]
        last = fan["last_ack_ms"]
        result.append(
            (
                f"KV fan-out: last Ack ≤ 1 s at 1,000 watchers (measured at {fan['watchers']})",
                f"{last:.0f} ms (p99 {fan['version_to_ack']['p99']:.0f} ms)",
                fan["watchers"] >= 1000 and last <= 1000,
            )
        )
    for row in [] if failed(f, "fleet") else f["fleet"]:
        t = row["throughput_ratio"]
        result.append(
            (
                "fleet rotation throughput ≥ 0.9 of direct issuance "
                f"(concurrency {row['concurrency']})",
                _x(t),
                t is not None and t >= 0.9,
            )
        )
    if not failed(f, "agents"):
        agents = f["agents"]
        worst = max(agents["idle_rss_mib"]["p99"], agents["busy_rss_mib"]["p99"])
        result.append(
            (
                f"agent ≤ 40 MiB RSS ({agents['agents']} agent processes, {_each(agents)}, "
                "idle and rotating)",
                f"{worst:.1f} MiB (largest)",
                worst <= 40,
            )
        )
    if not failed(f, "streams"):
        top = f["streams"]["points"][-1]
        streams = top["streams"]
        judged = f"{top['rss_mib']:.0f} MiB at {streams:,} streams"
        result.append(
            (
                "broker ≤ 1 GiB RSS at 10,000 idle Watch streams",
                judged if streams >= 10_000 else f"{judged} (fewer than 10,000 measured)",
                streams >= 10_000 and top["rss_mib"] <= 1024,
            )
        )
    for database, rows in {} if failed(f, "store") else f["store"].items():
        size = max(r["rows"] for r in rows)
        worst_row = max((r for r in rows if r["rows"] == size), key=lambda r: r["p99"])
        result.append(
            (
                f"store selection p99 ≤ 50 ms, {database}, {size:,} leases (slowest query)",
                f"{worst_row['p99']:.2f} ms ({worst_row['query']})",
                worst_row["p99"] <= 50,
            )
        )
    if not failed(f, "webhook"):
        p99 = f["webhook"]["inside"]["p99"]
        result.append(("webhook p99 ≤ 10 ms per AdmissionReview", f"{p99:.2f} ms", p99 <= 10.0))
    push = f["rotation"]["reply_to_ack"]["p99"]
    result.append(
        ("rotation push p99 ≤ 50 ms (RotateLeases reply → Ack sent)", f"{push:.2f} ms", push <= 50)
    )
    return result


def _describe_row(label: str, s: dict[str, Any], unit: str) -> str:
    cells = " | ".join(f"{s[q]:.1f} {unit}" for q in ("p50", "p95", "p99"))
    return f"| {label} | {s['n']} | {cells} |"


def render(
    f: dict[str, Any],
    soak: dict[str, Any] | None = None,
    node: dict[str, Any] | None = None,
    tracing: dict[str, Any] | None = None,
) -> str:
    m, v = f["machine"], f["versions"]
    quick = " — **quick smoke run, not figures**" if f["plan"]["quick"] else ""
    lines = [
        "# keyferry benchmarks",
        "",
        "Generated by `tests/run bench` (`python -m tests.bench`) from one run; every figure is a",
        "pair or a curve measured in that run against the same servers. **Absolute times on",
        "this machine are noisy** — its 2 cores are shared with other work (during this run,",
        "other developers' test suites) — so the ratios measured side by side in one run are",
        "what to read, not the milliseconds. Raw summaries: `docs/benchmarks.json`; plots:",
        "`docs/benchmarks/*.png`. Every summary gives samples (n), p50, p95 and p99.",
        "",
        f"- **Run**: {f['date']}, {f['seconds']} s in all{quick}",
        *(
            f"- **Measured again on its own** (`python -m tests.bench --only {section}`): "
            f"{section}, {when}; every other section is from the run above"
            for section, when in f.get("remeasured", {}).items()
        ),
        f"- **Machine**: {m['cores']} cores, {m['memory']} memory, shared with other work; "
        f"Python {m['python']}; {m['platform']}",
        f"- **Vault**: {v['vault']} (reports {v['vault_reported']}; dev mode, in memory) — "
        "OpenBao cannot be built here, see docs/testbed.md",
        f"- **PostgreSQL**: {v['postgresql']}; **Kubernetes**: {v['kubernetes']} "
        "(control plane only, etcd v3.6.6)",
        f"- **Clients**: grpcio {v['grpcio']}, hvac {v['hvac']}",
        "- **Set-up**: the broker runs as deployed, `keyferry broker serve` in its own host",
        "  process at its default log level (info), SQLite store unless a section says",
        "  otherwise, AppRole with docs/vault-policy.hcl, the example policies and roles. The",
        "  Issue pairs' load runs in separate load processes (`tests/bench/load.py`, one per 16",
        "  workers, at most 4): each keyferry worker is one pod with its own TLS channel, each",
        "  direct worker one hvac client with a keep-alive session (root token) in a thread of",
        "  the same load processes, against the same Vault. Samples are taken direct, keyferry,",
        "  direct, keyferry (half each) after one untimed warm-up call. **Broker CPU** is the",
        "  broker process's user + system time (/proc/<pid>/stat, all threads) over the timed",
        "  part, per Issue→Release: the figure that says how many replicas a fleet needs. The",
        "  machine's load average (1/5/15 min) before and after each section is given; the",
        "  machine is shared, so say how loaded it was before reading a figure.",
        "",
        "## Targets",
        "",
        "| target (issue 9) | measured | |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {measured} | {_met(ok)} |" for t, measured, ok in targets(f)]
    lines += [
        "",
        "## 1. Issue overhead: database credential",
        "",
        "keyferry `Issue` then `Release` (a new PostgreSQL role, then its lease revoked) against",
        "hvac reading `keyferry/db-orders/creds/ro` then revoking the lease, same Vault, same",
        "PostgreSQL. *Per s* is samples per second of the phase's wall time.",
        "",
        "![Issue latency](benchmarks/issue-latency.png)",
        "![Issue throughput](benchmarks/issue-throughput.png)",
        "",
    ]
    lines += _pairs(f["issue"], "Issue→Release", "creds→revoke", ("Issue", "creds"))
    if f.get("issue_postgres_store"):
        lines += [
            "### The same on a PostgreSQL lease store",
            "",
            "The broker restarted with its lease store on the bed's PostgreSQL (what several",
            "replicas share) instead of the SQLite file; everything else as above.",
            "",
        ]
        lines += _pairs(
            f["issue_postgres_store"], "Issue→Release", "creds→revoke", ("Issue", "creds")
        )
    lines += [
        "## 2. KV v2 read path",
        "",
        "keyferry `Issue` of role `app-config` (then `Release`) against hvac reading the same",
        "KV v2 secret. The target compares `Issue` alone with the read.",
        "",
        "![KV latency](benchmarks/kv-latency.png)",
        "![KV throughput](benchmarks/kv-throughput.png)",
        "",
    ]
    lines += _pairs(f["kv"], "Issue→Release", "read", ("Issue", "read"))
    lines += _rotation(f)
    lines += _webhook(f)
    lines += _footprint(f)
    lines += _store(f)
    lines += [
        "## 7. Growth",
        "",
        "Each section's curve is drawn from the same run: latency and throughput against",
        "concurrency (sections 1, 2 and the fleet rotation), fan-out time against watchers,",
        "broker memory against open streams, and selection time against table size.",
        "",
        "![KV fan-out](benchmarks/fanout.png)",
        "![Fleet rotation](benchmarks/fleet-throughput.png)",
        "",
        "![Broker streams](benchmarks/broker-streams.png)",
        "![Store scale, SQLite](benchmarks/store-sqlite.png)",
        "![Store scale, PostgreSQL](benchmarks/store-postgresql.png)",
        "",
    ]
    lines += _load_table(f)
    if soak is not None:
        lines += _soak(soak)
    if node is not None:
        lines += _node_pods(node)
    if tracing is not None:
        lines += _tracing(tracing)
    lines += [line.replace("{postgres}", _postgres_sentence(f)) for line in BOUNDS]
    return "\n".join(lines)


def _tracing(t: dict[str, Any]) -> list[str]:
    quick = " — **quick smoke run, not figures**" if t["quick"] else ""
    lines = [
        f"## Tracing off and on (issue 23){quick}",
        "",
        "`python -m tests.bench.tracing_overhead` (its own run; measured "
        f"{t['measured_at']}; raw figures in",
        "`docs/benchmarks/tracing-overhead.json`): the same broker process config restarted",
        "with tracing off, then on (every call traced and exported over OTLP gRPC to the bed's",
        "Jaeger), off and on again, at each concurrency, Issue→Release of a database",
        "credential from the same load processes and pods. Ratios are on/off.",
        "",
        "| concurrency | p50 off (ms) | p50 on (ms) | p50 ratio | calls/s off | calls/s on "
        "| throughput ratio | broker CPU ms/call off | on |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in t["rows"]:
        off, on, cpu = row["off"], row["on"], row["broker_cpu_ms_per_call"]
        lines.append(
            f"| {row['concurrency']} | {off['p50']:.1f} | {on['p50']:.1f} | "
            f"{row['p50_ratio']:.2f} | {off['rate']:.1f} | {on['rate']:.1f} | "
            f"{row['throughput_ratio']:.2f} | {cpu['off']:.1f} | {cpu['on']:.1f} |"
        )
    loads = [x for row in t["rows"] for x in (row["load_before"][0], row["load_after"][0])]
    added = "; ".join(
        f"{cpu['on'] - cpu['off']:+.1f} ms ({(cpu['on'] / cpu['off'] - 1) * 100:+.0f} %) "
        f"at concurrency {row['concurrency']}"
        for row in t["rows"]
        for cpu in [row["broker_cpu_ms_per_call"]]
    )
    lines += [
        "",
        f"The machine's 1-minute load average was {min(loads):.1f} to {max(loads):.1f} on 2",
        "cores while this ran, so latency and throughput moved within their noise either way;",
        f"the broker's CPU time per call is the steadier figure of what tracing costs: {added}.",
    ]
    return [*lines, ""]


def _node_pods(n: dict[str, Any]) -> list[str]:
    plain, injected, probe = n["plain_ms"], n["injected_ms"], n["probe"]
    memory = n["agent_working_set_mib"]
    added = n["added_p50_ms"]
    load = n.get("load_average_1m")
    per_core = probe["readiness_period_seconds"] / (probe["cpu_ms"]["p50"] / 1000)
    return [
        "## Real pods on the node (issue 15)",
        "",
        f"`python -m tests.bench.nodepods` (run by `tests/run bench` as root; measured "
        f"{n['measured_at']}; raw figures in `docs/benchmarks/node-pods.json`): cluster a's",
        "real node (kubelet, containerd, the images built by the bed), pods created one at a",
        f"time, plain and injected alternately ({n['pods_each']} of each, each deleted before",
        "the next; a first plain pod not counted), the app container's start seen by polling",
        f"the API server every {n['poll_seconds'] * 1000:.0f} ms. The injected pod's agent",
        "issues one database credential from a broker on the host before its startupProbe",
        "lets the app start."
        + (
            f" The machine's 1-minute load average was {load['before']:.1f} before the pods"
            f" and {load['after']:.1f} after (2 cores, shared with other test runs)."
            if load
            else ""
        ),
        "",
        "| | p50 | p95 | |",
        "|---|---|---|---|",
        f"| pod create → app container start, plain | {plain['p50']:.0f} ms | "
        f"{plain['p95']:.0f} ms | |",
        f"| pod create → app container start, injected | {injected['p50']:.0f} ms | "
        f"{injected['p95']:.0f} ms | |",
        f"| added by injection (goal ≤ 1 s at p50) | {added:.0f} ms | "
        f"{n['added_p95_ms']:.0f} ms | {_met(added <= 1000)} |",
        f"| agent memory, working set (usage minus inactive file) | {memory['p50']:.1f} MiB |"
        f" {memory['p95']:.1f} MiB | |",
        *_phase_rows(n.get("injected_phases_ms")),
        f"| one exec probe (`python3 -I -m injector.probe`), wall | "
        f"{probe['wall_ms']['p50']:.0f} ms | {probe['wall_ms']['p95']:.0f} ms | |",
        f"| one exec probe, CPU | {probe['cpu_ms']['p50']:.0f} ms | "
        f"{probe['cpu_ms']['p95']:.0f} ms | |",
        f"| one exec probe, peak RSS | {probe['peak_rss_mib']['p50']:.0f} MiB | "
        f"{probe['peak_rss_mib']['p95']:.0f} MiB | |",
        "",
        f"The startupProbe runs every {probe['startup_period_seconds']} s until the files exist,",
        f"the readinessProbe every {probe['readiness_period_seconds']} s for the pod's life: "
        f"{probe['cpu_seconds_per_pod_minute']:.2f} CPU",
        "seconds per pod per minute at the median probe cost; one core would carry the",
        f"readiness probes of about {per_core:,.0f} injected pods.",
        "",
        *NODE_PODS_BOUNDS,
        "",
    ]


PHASES = (
    (
        "to_agent_start",
        "injected: create → the agent's `agent.start` log line (scheduling, "
        "sandbox, the agent container, its imports)",
    ),
    ("issue_and_write", "injected: `agent.start` → `agent.ready` (Issue, the file written)"),
    (
        "files_to_app_start",
        "injected: `agent.ready` → app container start (the startupProbe's "
        "next round, the app container, the status)",
    ),
)


def _phase_rows(phases: dict[str, Any] | None) -> list[str]:
    if not phases:
        return []
    return [
        f"| {label} | {phases[key]['p50']:.0f} ms | {phases[key]['p95']:.0f} ms | |"
        for key, label in PHASES
    ]


def _soak(s: dict[str, Any]) -> list[str]:
    audit = s["audit"]
    calls = ", ".join(f"{name} {count:,}" for name, count in sorted(s["calls"].items()))
    errors = ", ".join(f"{k}: {n}" for k, n in sorted(s["errors"].items())) or "none"
    return [
        "## Soak (issue 10)",
        "",
        f"`tests/run soak` for {s['minutes']:g} minutes (its own run; raw figures in",
        "`docs/benchmarks/soak.json`): a broker process on loopback, pods issuing a database",
        "credential, renewing it, rotating it (every other round, 1 s grace), releasing it,",
        "and issuing and releasing a KV secret, at a bounded pace.",
        "",
        "| check | measured | |",
        "|---|---|---|",
        f"| calls | {calls}; refused: {errors} | |",
        f"| no leaked lease (Vault vs store, after release and settling) | "
        f"{len(s['vault_leases_left'])} Vault leases left, {len(s['untracked'])} untracked, "
        f"{s['store_live']} live in the store | "
        f"{_met(not s['vault_leases_left'] and not s['untracked'] and not s['store_live'])} |",
        f"| broker RSS growth ≤ 10% after warm-up | {s['warm_rss_mib']:.0f} → "
        f"{s['end_rss_mib']:.0f} MiB ({100 * s['growth']:+.1f}%) | {_met(s['growth'] <= 0.10)} |",
        f"| audit chain and signed checkpoints verify | {audit.get('records', '-')} records, "
        f"{audit.get('checkpoints_verified', '-')} checkpoints | {_met(bool(audit.get('ok')))} |",
        "",
    ]


def _postgres_sentence(f: dict[str, Any]) -> str:
    rows = f.get("issue_postgres_store") or []
    if not rows:
        return "(The PostgreSQL store was not measured in this run.)"
    pg = rows[-1]
    sqlite = next((r for r in f["issue"] if r["concurrency"] == pg["concurrency"]), None)
    theirs = "-" if sqlite is None else _x(sqlite["throughput_ratio"])
    return (
        f"On a PostgreSQL store, whose commits run side by side, the pair ran at "
        f"{_x(pg['throughput_ratio'])} of direct throughput at concurrency "
        f"{pg['concurrency']} (SQLite: {theirs}; p50 ratio {_x(pg['p50_ratio'])})."
    )


def _webhook(f: dict[str, Any]) -> list[str]:
    if failed(f, "webhook"):
        return ["## 4. Webhook admission", "", *_not_measured(f, "webhook")]
    w = f["webhook"]
    return [
        "## 4. Webhook admission",
        "",
        "Pods created one at a time through cluster a's real API server on one connection,",
        "alternating a namespace the keyferry webhook selects (the pod is mutated) and one it",
        "does not. *Inside* is the webhook's own time per AdmissionReview (decode, mutate,",
        "encode), as its server records it; more reviews than pods when the API server",
        "reinvokes it.",
        "",
        HEAD,
        _row("inside the webhook, per AdmissionReview", w["inside"]),
        _row("pod create with the webhook", w["with"]),
        _row("pod create without it", w["without"]),
        "",
        f"The webhook adds {w['added_p50_ms']:.2f} ms to a pod create at p50 "
        f"(ratio {_x(w['p50_ratio'])}).",
        "",
    ]


def _rotation(f: dict[str, Any]) -> list[str]:
    r = f["rotation"]
    lines = [
        "## 3. Rotation propagation",
        "",
        "### Push latency",
        "",
        f"{r['watchers']} agents, each a pod with one database lease and an open `Watch`",
        f"stream; {r['rounds']} rounds rotate each lease in turn with `RotateLeases` (admin",
        "listener, mutual TLS). The agent swaps a file (write, fsync, rename) and sends its",
        "Ack. *Sent* includes Vault making the new PostgreSQL role; *reply* is when",
        "RotateLeases' answer reached the caller — the nearest outside mark of \"the broker",
        'holds the new credential"; '
        f"{r['event_before_reply']} of {r['sent_to_receipt']['n']} events arrived before "
        "the reply.",
        "",
        HEAD,
        _row("RotateLeases sent → event received", r["sent_to_receipt"]),
        _row("RotateLeases reply → event received", r["reply_to_receipt"]),
        _row("event received → Ack sent (file swapped)", r["receipt_to_ack"]),
        _row("RotateLeases sent → Ack sent", r["sent_to_ack"]),
        _row("RotateLeases reply → Ack sent", r["reply_to_ack"]),
        "",
        "### KV fan-out",
        "",
        "Each watcher is a pod (spread over clusters a, b and c) holding the KV lease of role",
        "`app-config` and a real `Watch` stream from the bench's process (25 streams share one",
        "TLS channel), which on the push swaps a file (write, fsync, rename) and sends its Ack",
        "— what the agent does. A new KV version is written with hvac, then every watcher's",
        "lease is rotated with `RotateLeases` (100 lease ids a call, all calls at once). *New",
        "version → Ack* runs from the write to each watcher's Ack; *reply → Ack* from its",
        "call's reply (negative: the push arrived before the reply of the whole batch). Real",
        "agent processes are in section 5.",
        "",
        "| watchers | clusters | calls | new version → Ack p50 / p95 / p99 ms | last Ack ms "
        "| reply → Ack p50 / p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for row in [] if failed(f, "fanout") else f["fanout"]:
        t, ra = row["version_to_ack"], row["reply_to_ack"]
        clusters = ", ".join(f"{k}: {n}" for k, n in sorted(row["clusters"].items()))
        lines.append(
            f"| {row['watchers']} | {clusters} | {row['rotate_calls']} | "
            f"{t['p50']:.0f} / {t['p95']:.0f} / {t['p99']:.0f} | {row['last_ack_ms']:.0f} | "
            f"{ra['p50']:.0f} / {ra['p99']:.0f} |"
        )
    lines += [
        "",
        "### Dynamic fleet rotation",
        "",
        "Pods in cluster b each hold one database lease; workers rotate them one lease per",
        "`RotateLeases` call (a new PostgreSQL role each, the old one kept for the grace",
        "period), against the same number of credentials made directly with hvac",
        "(`creds/ro`; their leases revoked afterwards, untimed) at the same concurrency.",
        "",
    ]
    if failed(f, "fanout"):
        lines += ["", *_not_measured(f, "fanout")]
    if failed(f, "fleet"):
        lines += _not_measured(f, "fleet")
    for row in [] if failed(f, "fleet") else f["fleet"]:
        lines += [
            f"**concurrency {row['concurrency']}**",
            "",
            HEAD,
            _row("keyferry RotateLeases (one lease)", row["keyferry"]),
            _row("direct hvac creds", row["direct"]),
            "",
            f"throughput ratio {_x(row['throughput_ratio'])}.",
            "",
        ]
    lines += [
        "### Beside it: the anchors' documented defaults (not our measurement)",
        "",
        "| tool | what bounds propagation by default | default |",
        "|---|---|---|",
    ]
    lines += [f"| {tool} | {what} | {value} (their default) |" for tool, what, value in ANCHORS]
    lines += [
        "",
        "These are configuration defaults from each project's documentation; they were not run",
        "here. keyferry pushes on rotation instead of polling, so its figure is a latency, theirs",
        "an interval.",
        "",
    ]
    return lines


DESCRIBE = "| | n | p50 | p95 | p99 |\n|---|---|---|---|---|"


def _each(agents: dict[str, Any]) -> str:
    """How many credentials each agent held (one before issue 19's four)."""
    count = agents.get("credentials", 1)
    return "one KV credential each" if count == 1 else f"{count} KV credentials each"


def _footprint(f: dict[str, Any]) -> list[str]:
    if failed(f, "agents") or failed(f, "streams"):
        lines = ["## 5. Footprint", ""]
        for key in ("agents", "streams"):
            if failed(f, key):
                lines += [f"### {key}", "", *_not_measured(f, key)]
        return lines
    a, st = f["agents"], f["streams"]
    lines = [
        "## 5. Footprint",
        "",
        "### Agent",
        "",
        f"{a['agents']} real agent processes (`keyferry agent run`, sidecar mode, {_each(a)})",
        f"for pods over clusters {', '.join(a['clusters'])}, against the",
        "in-process broker. *Idle*: after their files are written and their Watch streams are",
        "open, over 5 s. *Rotating*: a new KV version, every agent's leases rotated, until each",
        f"agent logged its swaps ({a['rotation_window_s']} s window). CPU is a share of one core.",
        "*Anonymous* is the part of the resident set that is the process's own (RssAnon); the",
        "rest is pages of files (the interpreter, gRPC's core library) mapped from the page",
        "cache, which every process of the same image shares.",
        "",
        DESCRIBE,
        _describe_row("RSS idle", a["idle_rss_mib"], "MiB"),
        _describe_row("RSS after rotating", a["busy_rss_mib"], "MiB"),
        *(
            [_describe_row("RSS idle, anonymous", a["idle_anon_mib"], "MiB")]
            if "idle_anon_mib" in a
            else []
        ),
        _describe_row("CPU idle", a["idle_cpu_percent"], "%"),
        _describe_row("CPU while rotating", a["rotation_cpu_percent"], "%"),
    ]
    if a.get("version_to_swap"):
        lines.append(_row("new version → agent swapped (its log)", a["version_to_swap"]))
    lines += [
        "",
        f"{a['rotated']} of {a['agents']} agents logged every rotation.",
        "",
        "### Broker with idle Watch streams",
        "",
        "A second broker as its own process (`keyferry broker serve`, same config, its own",
        "SQLite store and audit log), so its memory is its own. Streams are opened in steps",
        f"from {st['pods']} pods over clusters a, b and c, each pod's KV lease issued first;",
        "beyond that many, pods hold several streams (round-robin), which costs the broker the",
        "same per-stream state. RSS after each step, then the broker's CPU over 3 s of idling.",
        "",
        "| idle streams | broker RSS MiB | broker CPU idle % |",
        "|---|---|---|",
    ]
    for point in st["points"]:
        cpu = point.get("cpu_idle_percent")
        lines.append(
            f"| {point['streams']:,} | {point['rss_mib']:.0f} | {'-' if cpu is None else cpu} |"
        )
    points = st["points"]
    if len(points) >= 2 and points[-1]["streams"] > points[0]["streams"]:
        slope = (points[-1]["rss_mib"] - points[0]["rss_mib"]) / (
            points[-1]["streams"] - points[0]["streams"]
        )
        lines += [
            "",
            f"About {slope * 1024:.0f} KiB per stream; at that slope 10,000 streams would need "
            f"{points[0]['rss_mib'] + slope * 10_000:.0f} MiB.",
        ]
    lines.append("")
    return lines


def _store(f: dict[str, Any]) -> list[str]:
    if failed(f, "store"):
        return ["## 6. Scale of the store", "", *_not_measured(f, "store")]
    lines = [
        "## 6. Scale of the store",
        "",
        "The lease table filled in bulk (80% revoked, 10% active, 5% revoking, 4% failed, 1%",
        "pending; 3 clusters, 20 namespaces, 5 service accounts, 5 roles), then each selection",
        "run through the store's own functions (`list_by_selector` as ListLeases and the Watch",
        "snapshot call it, and the scheduler's sweep queries), each returning records.",
        "",
        "| database | leases | query | n | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for database, rows in f["store"].items():
        for r in rows:
            lines.append(
                f"| {database} | {r['rows']:,} | {r['query']} | {r['n']} | {r['p50']:.2f} | "
                f"{r['p95']:.2f} | {r['p99']:.2f} |"
            )
    lines.append("")
    return lines


NODE_PODS_BOUNDS = [
    "Where an injected pod's extra time goes (the three rows from the agent's log): keyferry's",
    "own part is small, the agent's Issue and file write take tens of milliseconds, and its",
    "Python start fits in the first row beside the scheduling and the pod sandbox the plain",
    "pod pays too. Most of it lies between the file and the app's start, in the kubelet. Our",
    "reading of that part (not timed apart: the kubelet's log does not say enough): the kubelet",
    "sees the agent container running only at its next relist of the runtime (the generic",
    "PLEG, every second; containerd 1.6 has no container events for the evented one), the",
    "startupProbe counts only from then and runs every `periodSeconds` (1 s, the least it",
    "accepts), and the app container's start reaches the API server at the next relist",
    "again. Probing faster is not possible; a `postStart` hook that waits for the files,",
    "in place of the startupProbe, would save the probe's round (not tried: the kubelet",
    "blocks the pod's sync while the hook runs, and the harness runs startupProbes). The",
    "added row is the difference of the two rows above it, percentile by percentile.",
    "",
    "Before this round (measured 2026-12-07T20:12:19+00:00, same node, same method): the",
    "probes ran `keyferry agent check`, which imported keyferry's whole CLI (typer, pydantic,",
    "structlog) to test that files exist: 594 ms CPU and 45 MiB per probe, 7.1 CPU s per pod",
    "per minute (20 injected pods would have needed more CPU than this 2-core machine has);",
    "the image shipped no bytecode, so every agent start (and every probe) compiled its",
    "imports again under a read-only root; and the agent's spec loaded the broker's role",
    "catalog (its YAML loader, the scheduler's cron triggers) for one regular expression.",
    "Injection then added 3011 ms at p50 (4038 ms at p95). The probe is now",
    "`python3 -I -m injector.probe` (the standard library only, docs/injector.md), the",
    "image ships the virtualenv's bytecode, and the role-name pattern lives in",
    "`broker/names.py`.",
]

BOUNDS = [
    "## What bounds the missed targets",
    "",
    "Profiled with `python -m tests.bench.profile` (py-spy attached to the broker process:",
    "the threads holding the GIL, and every thread on CPU). Before issue 9's round, KV",
    "Issue→Release at concurrency 8 ran at 27.5/s; the profile showed, and this round",
    "changed (the profiles of the code as it now stands are in",
    "`docs/benchmarks/profile-*.txt`, taken while other test suites loaded the machine:",
    "read their proportions, not their rates):",
    "",
    "- **Cedar** was 15% of the GIL: cedarpy parsed the schema text on every decision",
    "  (1.0 of 1.1 ms). The schema is now parsed once (`broker/policy/engine.py`): 0.07 ms.",
    "- **The SQLite store** serialised everything: every transaction, reads included, began",
    "  `BEGIN IMMEDIATE`, and a waiting writer sleeps in SQLite's busy handler (1, 2, 5 ...",
    "  100 ms steps). Reads now run on WAL snapshots without the write lock, and writers of",
    "  one process queue on a lock that wakes them at once (`broker/store/engine.py`,",
    "  `broker/store/store.py`). Own-lease reads and the two cap counts take one trip to the",
    "  store's threads instead of two each.",
    "- **The audit trail** wrote and fsync'd each record alone on its one thread; records",
    "  that arrive while a write is on its way to disk are now group-committed (one write,",
    "  one fsync, in arrival order; each caller still waits for its own record, and a failed",
    "  write refuses every request of its batch) (`broker/service/common/audit_trail.py`,",
    "  `broker/audit/log.py`).",
    "- **The pod check** deserialised a whole Pod with the kubernetes client's models; it",
    "  reads the three fields it needs from the raw JSON (`broker/clusters/client.py`).",
    "",
    "What bounds the rest, in order:",
    "",
    "1. **Durable writes.** An Issue writes its pending row before Vault is asked and",
    "   completes it after (the crash-safety rule), and Release marks the row revoking",
    "   before revoking and revoked after: four store commits and three to five audit",
    "   records per Issue→Release, each commit an fsync of SQLite's WAL (about 3 ms here,",
    "   one writer at a time). Direct hvac against a dev-mode Vault writes nothing to disk.",
    "   This is the ceiling of the database and KV throughput ratios on the SQLite store.",
    "   {postgres}",
    "2. **One Python process on 2 shared cores.** Per call the broker verifies the token",
    "   (RSA), asks the cluster's API server for the pod, evaluates Cedar, runs 6-8",
    "   SQLAlchemy ORM transactions and builds pydantic models and protobufs; its CPU per",
    "   call is given beside each pair. The KV target (≤ 2 ms added at p50) is",
    "   below the cost of one durable commit plus one API-server round trip, so it cannot be",
    "   met while Issue keeps both; it is missed by design, not by accident.",
    "3. **Fan-out** is bounded by rotation, not by the push: each watcher's lease is rotated",
    "   (a pending row, a Vault read, a completion, audit) before its push, one lease after",
    "   another within each RotateLeases call. The push itself (reply → Ack) stays in",
    "   milliseconds.",
    "4. **The agent's memory** (within its target since issue 19's round) is its runtime's:",
    "   a bare Python interpreter is about 10 MiB resident here, and grpcio with the asyncio",
    "   it loads about 20 MiB more, most of it gRPC's core library mapped from its file. The",
    "   agent loads nothing else it does not use (tests/unit/test_agent_pieces.py): no broker",
    "   code, no pydantic (it reads its spec into dataclasses), no structlog or typer, no",
    "   protobuf (it writes and reads its six messages itself, injector/agent/messages.py),",
    "   and not Python's ssl (gRPC brings its own TLS; injector/agent/launch.py).",
    "",
]


def write(figures: dict[str, Any], page: str, out: Path) -> list[Path]:
    """The page, its JSON and its plots (in a folder named like the page); the plots' paths."""
    out.with_suffix(".json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    out.write_text(page + "\n" if not page.endswith("\n") else page)
    return draw_all(figures, out.with_suffix(""))
