"""`keyferry audit verify`: check the audit log against its transit-signed checkpoints;
`keyferry audit list`: read the trail, newest first, filtered.

With --config, verify runs beside the broker, with the broker's own config: the log file
(or, with `audit.sink: store`, the chain that every replica writes in the store), the
store that keeps the checkpoints (the second sink) and the Vault transit key that signed
them. Without it, verify and list ask the running broker through its admin listener
(audit_list.py) as the operator of the CLI context.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from broker.api.v1 import audit_pb2
from broker.errors import KeyferryError

from .audit_list import list_records, parse_time, verify_remote
from .config_file import load_or_exit
from .context import ContextOption
from .exits import CONFIG, FAILED
from .output import Output, OutputOption, emit_one

app = typer.Typer(
    name="audit",
    help="Read and verify the audit trail.",
    epilog=(
        "Examples:\n\n  keyferry audit verify --config /etc/keyferry/broker.yaml\n\n"
        "  keyferry audit list --action rotate --since 1h"
    ),
    no_args_is_help=True,
)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  keyferry audit verify --config /etc/keyferry/broker.yaml\n\n"
        "  keyferry audit verify --config broker.yaml --log /backup/audit.jsonl --output json\n\n"
        "  keyferry audit verify --context ~/.config/keyferry/context.yaml\n\n"
        "With --config it runs beside the broker on its config; with audit.sink: store "
        "(several replicas) the chain is read from the store, unless --log names a file to "
        "verify instead. Without --config the running broker verifies its own trail, asked "
        "through its admin listener as the CLI context's operator (Cedar action `audit`).\n\n"
        "Exit codes: 0 the chain and every checkpoint verify; 1 damage was found (the first "
        "damaged record or checkpoint is named) or Vault/the store did not answer; 2 the "
        "configuration is invalid or has no transit key."
    )
)
def verify(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="the broker's YAML config file: verify here, beside the broker",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    log: Annotated[
        Path | None,
        typer.Option(help="verify this copy of the log instead of the configured one"),
    ] = None,
    output: OutputOption = Output.TABLE,
    context: ContextOption = None,
) -> None:
    """Detect an edited, dropped, reordered or truncated audit log."""
    if config is None:
        if log is not None:
            typer.echo("--log needs --config: a copy is verified beside the broker", err=True)
            raise typer.Exit(CONFIG)
        verify_remote(context, output)
        return
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


@app.command(
    "list",
    epilog=(
        "Examples:\n\n"
        "  keyferry audit list --since 1h\n\n"
        "  keyferry audit list --action rotate --action revoke --principal alice -o json\n\n"
        "  keyferry audit list --lease 3f0c2a9e-... --limit 500\n\n"
        "Records come newest first from the running broker (AuditService, Cedar action "
        "`audit`), as the CLI context's operator. --since and --until take a duration ago "
        "(30m, 2h) or an ISO-8601 time. When there are more, the next page's token is "
        "printed on stderr; pass it with --page-token.\n\n"
        "Exit codes: 0 listed; 1 the broker refused; 2 an option or the context is invalid; "
        "3 the broker did not answer."
    ),
)
def list_(
    *,
    action: Annotated[
        list[str] | None,
        typer.Option("--action", help="only this audit action; repeat for several (at most 20)"),
    ] = None,
    principal: Annotated[
        str | None,
        typer.Option(help="only records of this principal (an operator's name...)"),
    ] = None,
    lease: Annotated[
        str | None, typer.Option("--lease", help="only records about this lease")
    ] = None,
    since: Annotated[str | None, typer.Option(help="from this time, or this long ago")] = None,
    until: Annotated[str | None, typer.Option(help="before this time, or this long ago")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="records per page")] = 50,
    page_token: Annotated[
        str | None, typer.Option(help="the token a previous page printed: the next, older page")
    ] = None,
    output: OutputOption = Output.TABLE,
    context: ContextOption = None,
) -> None:
    """List audit records, newest first, filtered by action, principal, lease and time."""
    now = datetime.now(UTC)
    request = audit_pb2.ListAuditRecordsRequest(
        actions=action or [],
        principal=principal or "",
        lease_id=lease or "",
        page_size=limit,
        page_token=page_token or "",
    )
    if since is not None:
        request.since.CopyFrom(parse_time("--since", since, now))
    if until is not None:
        request.until.CopyFrom(parse_time("--until", until, now))
    list_records(request, context, output)
