"""`keyferry admin`: the admin listener's PKI and the CLI context.

`init` creates the admin CA (in --dir), the broker's admin serving certificate with a copy
of the CA certificate (in --broker-dir, apart: the broker never reads the CA's folder), the
first operator's client certificate and a context file that `keyferry roles` and
`keyferry rotate` use; `issue-operator` signs further operators with that CA,
`renew-operator` signs a new short-lived certificate for one (same subject and identity),
and `revoke-operator` puts a certificate's serial on the broker's deny-list. The CA key
stays where it was written (mode 0600): keep it off the broker's hosts.
"""

from __future__ import annotations

import datetime as dt
import shutil
import socket
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509

from broker.errors import InvalidRequest
from broker.identity.admin_pki import (
    CA_CERT,
    CA_KEY,
    OPERATOR_VALIDITY,
    OPERATORS,
    SERVER_CERT,
    SERVER_KEY,
    AdminCa,
    PemPair,
    check_identity,
    check_operator,
    check_validity,
    create_ca,
)
from broker.identity.operators import parse_serials
from broker.models.durations import format_duration, parse_duration

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
        "  keyferry admin issue-operator bob --group platform --identity bob@example.com\n\n"
        "  keyferry admin renew-operator bob\n\n"
        "  keyferry admin revoke-operator bob --deny-list /etc/keyferry/revoked-operators"
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
IdentityOption = Annotated[
    str | None,
    typer.Option(
        help="the person behind the certificate (an email or an id), which approvals "
        "compare: give each person one identity, whatever their operator names; default: "
        "the operator's name",
    ),
]
ValidityOption = Annotated[
    str,
    typer.Option(
        help="how long the operator certificate lasts (5m to 7d); renew it with "
        "`keyferry admin renew-operator`",
    ),
]
DEFAULT_VALIDITY = format_duration(OPERATOR_VALIDITY)


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
    broker_dir: Annotated[
        Path | None,
        typer.Option(
            help="folder of what the broker reads (its admin certificate and key, a copy of "
            "ca.crt), apart from the CA's key; default: broker-admin beside --dir",
            show_default=False,
        ),
    ] = None,
    context_file: Annotated[
        Path | None,
        typer.Option(
            envvar=ENV,
            help="where to write the CLI context; default ~/.config/keyferry/context.yaml",
            show_default=False,
        ),
    ] = None,
    identity: IdentityOption = None,
    validity: ValidityOption = DEFAULT_VALIDITY,
    force: ForceOption = False,
) -> None:
    """Create the admin CA, the broker's admin certificate, the first operator and a context."""
    folder = folder or _default_dir()
    broker_dir = broker_dir or folder.parent / "broker-admin"
    context_file = context_file or default_context_file()
    groups = group or []
    hosts = host or _default_hosts(address)
    lasts = _check(operator, groups, address, identity, validity)
    if broker_dir.resolve() == folder.resolve():
        typer.echo(
            "--broker-dir must not be --dir: the broker must not read the CA's key", err=True
        )
        raise typer.Exit(CONFIG)
    targets = [
        folder / CA_CERT,
        folder / CA_KEY,
        broker_dir / SERVER_CERT,
        broker_dir / SERVER_KEY,
        broker_dir / CA_CERT,
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
    broker_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    server = ca.issue_server(hosts, force=True)
    server = PemPair(
        Path(shutil.move(server.cert_path, broker_dir / SERVER_CERT)),
        Path(shutil.move(server.key_path, broker_dir / SERVER_KEY)),
    )
    client_ca = Path(shutil.copyfile(ca.cert_path, broker_dir / CA_CERT))
    client = ca.issue_operator(operator, groups, identity=identity, validity=lasts, force=True)
    save_context(context_file, _context(address, ca, client))
    typer.echo(f"admin CA:            {ca.cert_path} (key {folder / CA_KEY}, mode 0600)")
    typer.echo(f"broker admin files:  {broker_dir} (certificate for {', '.join(hosts)})")
    typer.echo(
        f"operator {operator}: {client.cert_path} groups {groups or '(none)'}, valid "
        f"{format_duration(lasts)} (renew: keyferry admin renew-operator {operator})"
    )
    typer.echo(f"CLI context:         {context_file}")
    typer.echo(
        f"\nKeep {folder / CA_KEY} off the broker's hosts: give the broker {broker_dir} only."
    )
    typer.echo("\nAdd to the broker's config (broker.yaml):\n")
    typer.echo(_admin_section(address, client_ca, server))


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
    identity: IdentityOption = None,
    validity: ValidityOption = DEFAULT_VALIDITY,
    force: ForceOption = False,
) -> None:
    """Sign a client certificate for another operator with the admin CA."""
    folder = folder or _default_dir()
    groups = group or []
    lasts = _check(name, groups, address, identity, validity)
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
    client = ca.issue_operator(name, groups, identity=identity, validity=lasts, force=True)
    typer.echo(
        f"operator {name}: {client.cert_path} (key {client.key_path}) groups {groups}, "
        f"valid {format_duration(lasts)}"
    )
    if context_file is not None:
        save_context(context_file, _context(address, ca, client))
        typer.echo(f"CLI context: {context_file}")


@app.command(
    "renew-operator",
    epilog=(
        "Examples:\n\n"
        "  keyferry admin renew-operator bob\n\n"
        "  keyferry admin renew-operator bob --dir /secure/kf-admin --validity 8h\n\n"
        "Signs a new key and certificate with the subject (name, groups) and identity of the "
        "operator's current certificate under --dir (expired or not), replacing both files. "
        "Run it where the CA key is; hand the operator the new files.\n\n"
        "Exit codes: 0 written; 2 no such operator, or an invalid option."
    ),
)
def renew_operator(
    name: Annotated[str, typer.Argument(help="the operator's name (certificate CN)")],
    *,
    folder: DirOption = None,
    validity: ValidityOption = DEFAULT_VALIDITY,
) -> None:
    """Sign a new short-lived certificate for an operator: same name, groups and identity."""
    folder = folder or _default_dir()
    try:
        lasts = _validity(validity)
        client = AdminCa.load(folder).renew_operator(name, lasts)
    except InvalidRequest as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(CONFIG) from None
    cert = x509.load_pem_x509_certificate(client.cert_path.read_bytes())
    typer.echo(
        f"operator {name}: {client.cert_path} (key {client.key_path}), serial "
        f"{cert.serial_number:x}, valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    )


@app.command(
    "revoke-operator",
    epilog=(
        "Examples:\n\n"
        "  keyferry admin revoke-operator bob --deny-list /etc/keyferry/revoked-operators\n\n"
        "  keyferry admin revoke-operator --serial 5f3a... --deny-list revoked-operators\n\n"
        "Appends the serial of the operator's current certificate (under --dir), or the one "
        "given, to the deny-list file that the broker's admin.revoked_operators names; the "
        "broker reads the file again when it changes and refuses that certificate from the "
        "next call on (UNAUTHENTICATED). Copy the file to every replica's host.\n\n"
        "Exit codes: 0 listed (or already listed); 2 no such operator or serial, or the "
        "deny-list does not parse."
    ),
)
def revoke_operator(
    name: Annotated[
        str | None, typer.Argument(help="the operator whose current certificate to revoke")
    ] = None,
    *,
    serial: Annotated[
        str | None, typer.Option(help="a certificate serial (hexadecimal) instead of a name")
    ] = None,
    deny_list: Annotated[
        Path, typer.Option(help="the deny-list file (the broker's admin.revoked_operators)")
    ],
    folder: DirOption = None,
) -> None:
    """Put an operator certificate's serial on the broker's deny-list."""
    if (name is None) == (serial is None):
        typer.echo("give an operator's name or --serial, not both", err=True)
        raise typer.Exit(CONFIG)
    try:
        number = _serial_of(name, serial, folder or _default_dir())
        listed = parse_serials(deny_list.read_text()) if deny_list.exists() else frozenset()
    except (InvalidRequest, ValueError, OSError) as exc:
        typer.echo(getattr(exc, "message", str(exc)), err=True)
        raise typer.Exit(CONFIG) from None
    if number in listed:
        typer.echo(f"serial {number:x} is already on {deny_list}")
        return
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with deny_list.open("a", encoding="utf-8") as out:
        out.write(f"{number:x}  # {name or 'by serial'}, revoked {when}\n")
    typer.echo(f"serial {number:x} added to {deny_list}")


def _serial_of(name: str | None, serial: str | None, folder: Path) -> int:
    if serial is not None:
        found = parse_serials(serial)
        if len(found) != 1:
            raise InvalidRequest("serial", "give one certificate serial, in hexadecimal")
        return next(iter(found))
    assert name is not None  # noqa: S101 (checked by the caller)
    path = folder / OPERATORS / f"{name}.crt"
    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).serial_number
    except (OSError, ValueError) as exc:
        raise InvalidRequest(
            "name", f"no certificate of operator {name!r} at {path} ({exc})"
        ) from exc


def _check(
    name: str, groups: list[str], address: str, identity: str | None, validity: str
) -> dt.timedelta:
    try:
        check_operator(name, groups)
        _split(address)
        if identity is not None:
            check_identity(identity)
        return _validity(validity)
    except InvalidRequest as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(CONFIG) from None


def _validity(text: str) -> dt.timedelta:
    try:
        lasts = parse_duration(text)
    except ValueError as exc:
        raise InvalidRequest("validity", f"{text!r} is not a duration like 12h ({exc})") from None
    check_validity(lasts)
    return lasts


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


def _admin_section(address: str, client_ca: Path, server: PemPair) -> str:
    return (
        "admin:\n"
        f"  port: {_split(address)[1]}\n"
        f"  tls_cert: {server.cert_path.resolve()}\n"
        f"  tls_key: {server.key_path.resolve()}\n"
        f"  client_ca: {client_ca.resolve()}\n"
    )
