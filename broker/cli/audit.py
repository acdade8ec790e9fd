"""`keyferry audit verify`: check the audit log against its transit-signed checkpoints.

Runs beside the broker, with the broker's own config: the log file (or, with
`audit.sink: store`, the chain that every replica writes in the store), the store that
keeps the checkpoints (the second sink) and the Vault transit key that signed them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from broker.errors import KeyferryError

from .config_file import ConfigFile, load_or_exit
from .exits import CONFIG, FAILED
from .output import Output, OutputOption, emit_one

app = typer.Typer(
    name="audit",
    help="Read and verify the audit trail.",
    epilog="Examples:\n\n  keyferry audit verify --config /etc/keyferry/broker.yaml",
    no_args_is_help=True,
)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  keyferry audit verify --config /etc/keyferry/broker.yaml\n\n"
        "  keyferry audit verify --config broker.yaml --log /backup/audit.jsonl --output json\n\n"
        "With audit.sink: store (several replicas) the chain is read from the store, unless "
        "--log names a file to verify instead.\n\n"
        "Exit codes: 0 the chain and every checkpoint verify; 1 damage was found (the first "
        "damaged record or checkpoint is named) or Vault/the store did not answer; 2 the "
        "configuration is invalid or has no transit key."
    )
)
def verify(
    config: ConfigFile,
    log: Annotated[
        Path | None,
        typer.Option(help="verify this copy of the log instead of the configured one"),
    ] = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Detect an edited, dropped, reordered or truncated audit log."""
    settings = load_or_exit(config)
    audit = settings.audit
    if audit.transit_mount is None or audit.transit_key is None:
        typer.echo(
            "audit.transit_mount and audit.transit_key are not set: without signed "
            "checkpoints a truncated log cannot be told from a short one. Set both "
            "in the config and let the broker write checkpoints.",
            err=True,
        )
        raise typer.Exit(CONFIG)
    try:
        from_store = log is None and audit.sink == "store"
        report = asyncio.run(_verify(settings, log or audit.log, from_store=from_store))
    except KeyferryError as exc:
        typer.echo(f"audit verify could not finish: {exc.message}", err=True)
        raise typer.Exit(FAILED) from None
    summary: dict[str, Any] = report.model_dump(mode="json")
    summary["ok"] = report.ok
    if output is not Output.TABLE:
        emit_one(summary, output)
    else:
        typer.echo(f"records:              {report.records}")
        typer.echo(f"checkpoints verified: {report.checkpoints_verified}")
        typer.echo(f"head:                 {report.head}")
        if report.damage is None:
            typer.echo("result:               OK, the chain and its checkpoints verify")
        else:
            damage = report.damage
            where = (
                f"record {damage.index}"
                if damage.index is not None
                else (f"checkpoint {damage.checkpoint}")
            )
            typer.echo(f"result:               DAMAGED ({damage.kind}) at {where}: {damage.detail}")
    if not report.ok:
        raise typer.Exit(FAILED)


async def _verify(settings: Any, log: Path, *, from_store: bool) -> Any:
    from broker.audit import StoreChainLog, StoreCheckpointSink, read_log  # noqa: PLC0415
    from broker.audit import verify as verify_log  # noqa: PLC0415
    from broker.backends import VaultClient  # noqa: PLC0415
    from broker.backends.transit import TransitSigner  # noqa: PLC0415
    from broker.store import Store  # noqa: PLC0415

    if not from_store and not log.exists():
        raise KeyferryError(f"the audit log {log} does not exist")
    store = await asyncio.to_thread(Store.open, settings.store)
    vault = VaultClient(settings.vault)
    try:
        checkpoints = await asyncio.to_thread(
            StoreCheckpointSink(store.checkpoints).list, settings.audit.chain
        )
        if from_store:
            chain = StoreChainLog(store.audit_chain, chain=settings.audit.chain)
            lines = await asyncio.to_thread(chain.lines)
        else:
            lines = await asyncio.to_thread(read_log, log)
        mount, key = settings.audit.transit_mount, settings.audit.transit_key

        def check(client: Any) -> Any:
            return verify_log(lines, checkpoints, TransitSigner(client, key, mount))

        return await vault.call(check)
    finally:
        vault.close()
        store.close()
