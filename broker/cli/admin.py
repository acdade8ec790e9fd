"""`keyferry admin`: the admin listener's PKI and the CLI context.

`init` creates the admin CA, the broker's admin serving certificate, the first operator's
client certificate and a context file that `keyferry roles` and `keyferry rotate` use;
`issue-operator` signs further operators with that CA. The CA key stays where it was
written (mode 0600): keep it off the broker's hosts once the certificates exist.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from broker.errors import InvalidRequest
from broker.identity.admin_pki import (
    CA_CERT,
    CA_KEY,
    OPERATORS,
    SERVER_CERT,
    SERVER_KEY,
    AdminCa,
    PemPair,
    check_operator,
    create_ca,
)

from .context import ENV, CliContext, default_context_file, save_context
from .exits import CONFIG

DEFAULT_ADDRESS = "127.0.0.1:8444"

app = typer.Typer(
    name="admin",
    help=(
        "Bootstrap and extend the admin listener's PKI: CA, broker certificate, operator "
        "certificates and the CLI context.\n\n"
        "An operator certificate's subject is the operator: CN = name, one O per group "
        '(Cedar sees `Operator::"NAME" in Group::"GROUP"`).'
    ),
    epilog=(
        "Examples:\n\n  keyferry admin init --operator alice --group security\n\n"
        "  keyferry admin issue-operator bob --group platform"
    ),
    no_args_is_help=True,
)


def _default_dir() -> Path:
    return default_context_file().parent / "admin-ca"


DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="folder of the admin CA and certificates; default ~/.config/keyferry/admin-ca",
        show_default=False,
    ),
]
GroupOption = Annotated[
    list[str] | None,
    typer.Option("--group", "-g", help="a group of the operator (certificate O); repeat"),
]
AddressOption = Annotated[
    str, typer.Option(help="host:port of the broker's admin listener, for the context file")
]
ForceOption = Annotated[bool, typer.Option("--force", help="replace files that exist")]


@app.command(
    epilog=(
        "Examples:\n\n"
        "  keyferry admin init --operator alice --group security\n\n"
        "  keyferry admin init --operator ops --group platform --group security "
        "--address broker.internal:8444 --host broker.internal --dir /secure/kf-admin "
        "--context-file ./context.yaml\n\n"
        "Then add the printed admin: section to the broker's config, start it, and run "
        "`keyferry roles list`.\n\n"
        "Refuses to replace an existing CA (or any file it would write) without --force. "
        "Exit codes: 0 written; 2 an option is invalid or a file exists."
    )
)
def init(
    *,
    operator: Annotated[str, typer.Option(help="the first operator's name (certificate CN)")],
    group: GroupOption = None,
    address: AddressOption = DEFAULT_ADDRESS,
    host: Annotated[
        list[str] | None,
        typer.Option(
            help="a name or IP address of the broker on its admin certificate; repeat "
            "(default: localhost, 127.0.0.1, this host and the host of --address)"
        ),
    ] = None,
    folder: DirOption = None,
    context_file: Annotated[
        Path | None,
        typer.Option(
            envvar=ENV,
            help="where to write the CLI context; default ~/.config/keyferry/context.yaml",
            show_default=False,
        ),
    ] = None,
    force: ForceOption = False,
) -> None:
    """Create the admin CA, the broker's admin certificate, the first operator and a context."""
    folder = folder or _default_dir()
    context_file = context_file or default_context_file()
    groups = group or []
    hosts = host or _default_hosts(address)
    _check(operator, groups, address)
    targets = [
        folder / CA_CERT,
        folder / CA_KEY,
        folder / SERVER_CERT,
        folder / SERVER_KEY,
        *_operator_files(folder, operator),
        context_file,
    ]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        typer.echo(
            "not written: these files exist (pass --force to replace them, which makes a "
            "new CA that the broker and every operator must switch to):\n  "
            + "\n  ".join(existing),
            err=True,
        )
        raise typer.Exit(CONFIG)
    ca = create_ca(folder, force=True)
    server = ca.issue_server(hosts, force=True)
    client = ca.issue_operator(operator, groups, force=True)
    save_context(context_file, _context(address, ca, client))
    typer.echo(f"admin CA:            {ca.cert_path} (key {folder / CA_KEY}, mode 0600)")
    typer.echo(f"broker admin cert:   {server.cert_path} for {', '.join(hosts)}")
    typer.echo(f"operator {operator}: {client.cert_path} groups {groups or '(none)'}")
    typer.echo(f"CLI context:         {context_file}")
    typer.echo("\nAdd to the broker's config (broker.yaml):\n")
    typer.echo(_admin_section(address, ca, server))


@app.command(
    "issue-operator",
    epilog=(
        "Examples:\n\n"
        "  keyferry admin issue-operator bob --group platform\n\n"
        "  keyferry admin issue-operator carol -g security --dir /secure/kf-admin "
        "--context-file carol-context.yaml --address broker.internal:8444\n\n"
        "Writes operators/NAME.crt and NAME.key (mode 0600) under --dir; give them to the "
        "operator with a context file. Exit codes: 0 written; 2 invalid or exists."
    ),
)
def issue_operator(
    name: Annotated[str, typer.Argument(help="the operator's name (certificate CN)")],
    *,
    group: GroupOption = None,
    folder: DirOption = None,
    context_file: Annotated[
        Path | None,
        typer.Option(help="also write a CLI context for this operator here"),
    ] = None,
    address: AddressOption = DEFAULT_ADDRESS,
    force: ForceOption = False,
) -> None:
    """Sign a client certificate for another operator with the admin CA."""
    folder = folder or _default_dir()
    groups = group or []
    _check(name, groups, address)
    targets = [*_operator_files(folder, name), *([context_file] if context_file else [])]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        typer.echo(
            "not written: these files exist (pass --force):\n  " + "\n  ".join(existing),
            err=True,
        )
        raise typer.Exit(CONFIG)
    try:
        ca = AdminCa.load(folder)
    except InvalidRequest as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(CONFIG) from None
    client = ca.issue_operator(name, groups, force=True)
    typer.echo(f"operator {name}: {client.cert_path} (key {client.key_path}) groups {groups}")
    if context_file is not None:
        save_context(context_file, _context(address, ca, client))
        typer.echo(f"CLI context: {context_file}")


def _check(name: str, groups: list[str], address: str) -> None:
    try:
        check_operator(name, groups)
        _split(address)
    except InvalidRequest as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(CONFIG) from None


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequest("address", f"{address!r}: write host:port, like {DEFAULT_ADDRESS}")
    return host.strip("[]"), int(port)


def _default_hosts(address: str) -> list[str]:
    host = address.rpartition(":")[0].strip("[]")
    return list(dict.fromkeys(["localhost", "127.0.0.1", socket.gethostname(), host]))


def _operator_files(folder: Path, name: str) -> list[Path]:
    return [folder / OPERATORS / f"{name}.crt", folder / OPERATORS / f"{name}.key"]


def _context(address: str, ca: AdminCa, client: PemPair) -> CliContext:
    return CliContext(
        address=address,
        ca=ca.cert_path.resolve(),
        cert=client.cert_path.resolve(),
        key=client.key_path.resolve(),
    )


def _admin_section(address: str, ca: AdminCa, server: PemPair) -> str:
    return (
        "admin:\n"
        f"  port: {_split(address)[1]}\n"
        f"  tls_cert: {server.cert_path.resolve()}\n"
        f"  tls_key: {server.key_path.resolve()}\n"
        f"  client_ca: {ca.cert_path.resolve()}\n"
    )
