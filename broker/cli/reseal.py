"""`keyferry admin reseal`: move every sealed credential and row MAC to the current key of
the sealing key ring, beside running brokers, so an old key can leave the ring.

It runs on the broker's config (the store and `sealing.keys`), not through the admin
listener: it touches rows, one transaction per row (broker/store/rekey.py), and a broker
changing the same row meanwhile is safe. `--check` only counts, by key id, what each key
still protects.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from broker.errors import KeyferryError

if TYPE_CHECKING:
    from broker.service.common.sealing import StoreReseal
    from broker.settings import BrokerSettings
    from broker.store import Store, TableReport

from .config_file import load_or_exit
from .exits import FAILED

EPILOG = (
    "Examples:\n\n"
    "  keyferry admin reseal --config /etc/keyferry/broker.yaml\n\n"
    "  keyferry admin reseal --config broker.yaml --check\n\n"
    "Rotating the sealing key (docs/operations.md): give every replica the ring "
    "[OLD, NEW], then [NEW, OLD]; run this; check; then [NEW]. Re-seals the credentials of "
    "leases, clusters and cluster requests and re-MACs role, cluster and cluster-request "
    "rows under the first key of sealing.keys, each row in its own transaction; safe while "
    "brokers run. Progress goes to stderr, the counts to stdout.\n\n"
    "Exit codes: 0 every row is under the current key; 1 some rows were refused (they do "
    "not open or verify under the ring: named), or with --check some rows are under "
    "another key, or the store did not answer; 2 the configuration is invalid."
)


def reseal(
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            "-c",
            help="the broker's YAML config file (its store and sealing.keys)",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    check: Annotated[
        bool, typer.Option("--check", help="only count what each key protects; change nothing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the counts as JSON")] = False,
) -> None:
    """Re-seal credentials and re-MAC rows under the current sealing key."""
    settings = load_or_exit(config)
    try:
        ok = _check(settings, as_json) if check else _reseal(settings, as_json)
    except KeyferryError as exc:
        typer.echo(f"reseal could not finish: {exc.message}", err=True)
        raise typer.Exit(FAILED) from None
    if not ok:
        raise typer.Exit(FAILED)


def _open(settings: BrokerSettings) -> tuple[Store, StoreReseal, str]:
    from broker.service.common.sealing import CredentialSealer, StoreReseal  # noqa: PLC0415
    from broker.store import RowSigner, Store  # noqa: PLC0415

    ring = settings.sealing.ring()
    store = Store.open(settings.store, rows=RowSigner(ring.derive("rows")))
    return store, StoreReseal(CredentialSealer(ring)), ring.current.name


def _reseal(settings: BrokerSettings, as_json: bool) -> bool:
    store, resealer, current = _open(settings)
    try:
        typer.echo(f"re-sealing under key {current}", err=True)

        def progress(report: TableReport) -> None:
            done = report.current + report.resealed + report.changed + report.refused
            typer.echo(f"  {report.table}: {done} rows ({report.resealed} re-sealed)", err=True)

        reports = store.rekey(resealer).run(progress)
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps({"key": current, "tables": [vars(r) for r in reports]}))
    else:
        typer.echo(f"{'table':<18}{'re-sealed':>10}{'current':>10}{'changed':>10}{'refused':>10}")
        for r in reports:
            typer.echo(
                f"{r.table:<18}{r.resealed:>10}{r.current:>10}{r.changed:>10}{r.refused:>10}"
            )
        for r in reports:
            for line in r.named:
                typer.echo(f"refused: {r.table} {line}")
    return all(r.refused == 0 for r in reports)


def _check(settings: BrokerSettings, as_json: bool) -> bool:
    store, resealer, current = _open(settings)
    try:
        counts = Counter((use.table, use.kid or "none") for use in store.rekey(resealer).uses())
    finally:
        store.close()
    if as_json:
        rows = [{"table": t, "key": k, "count": n} for (t, k), n in sorted(counts.items())]
        typer.echo(json.dumps({"current": current, "uses": rows}))
    else:
        typer.echo(f"current key: {current} (key none: written before key ids)")
        for (table, key), count in sorted(counts.items()):
            mark = "" if key == current else "  <- not the current key"
            typer.echo(f"{table:<18}{key:<10}{count:>8}{mark}")
    return all(key == current for (_, key) in counts)
