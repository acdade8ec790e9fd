"""`keyferry roles`: apply and list the role catalog through the broker's admin listener."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from broker.api.v1 import roles_pb2, roles_pb2_grpc
from broker.models import InvalidRoles, load_roles, parse_roles

from .admin_channel import TIMEOUT, call_admin
from .context import ContextOption
from .exits import CONFIG
from .output import Output, OutputOption, emit

if TYPE_CHECKING:
    from broker.api.v1.roles_pb2_grpc import RolesServiceAsyncStub

T = TypeVar("T")

app = typer.Typer(
    name="roles",
    help=(
        "Manage the role catalog: which keyferry role maps to which Vault backend.\n\n"
        "Talks to a running broker's admin listener (mutual TLS) as the operator of the CLI "
        "context (--context, KEYFERRY_CONTEXT, default ~/.config/keyferry/context.yaml; "
        "`keyferry admin init` writes it). Cedar decides each call as the action `grant` "
        "on the role."
    ),
    epilog=(
        "Examples:\n\n  keyferry roles apply -f docs/examples/roles.yaml\n\n"
        "  keyferry roles list --output yaml"
    ),
    no_args_is_help=True,
)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  keyferry roles apply -f roles.yaml\n\n"
        "  cat roles.yaml | keyferry roles apply -f - --output json\n\n"
        "  keyferry roles apply -f docs/examples/roles.yaml --context /tmp/kf/context.yaml\n\n"
        "The file is checked here first: every problem is listed with its line, role and "
        "field. Each role is created or replaced whole.\n\n"
        "Exit codes: 0 applied; 2 the file is invalid; 1 the broker refused it; "
        "3 the broker did not answer."
    )
)
def apply(
    file: Annotated[str, typer.Option("--file", "-f", help="a roles YAML file, or - for stdin")],
    context: ContextOption = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Create or replace every role in a roles.yaml."""
    from broker.server import convert  # noqa: PLC0415 - only this command needs it

    try:
        specs = parse_roles(sys.stdin.read(), "-") if file == "-" else load_roles(Path(file))
    except InvalidRoles as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(CONFIG) from None
    request = roles_pb2.ApplyRolesRequest(roles=[convert.spec_message(s) for s in specs])
    reply = _call(context, lambda stub: stub.ApplyRoles(request, timeout=TIMEOUT))
    if output is not Output.TABLE:
        emit([_record(r) for r in reply.roles], output)
        return
    for role in reply.roles:
        typer.echo(f"role {role.name} applied ({role.WhichOneof('backend')})")


@app.command(
    "list",
    epilog=(
        "Examples:\n\n  keyferry roles list\n\n"
        "  KEYFERRY_CONTEXT=/tmp/kf/context.yaml keyferry roles list\n\n"
        "  keyferry roles list --output json\n\n"
        "Only the roles the operator may see (Cedar `grant` on each role) are listed.\n\n"
        "Exit codes: 0 listed; 2 the context file is unusable; 1 the broker refused; "
        "3 the broker did not answer."
    ),
)
def list_roles(context: ContextOption = None, output: OutputOption = Output.TABLE) -> None:
    """List the roles, one per line: name, kind, where in Vault."""
    reply = _call(
        context, lambda stub: stub.ListRoles(roles_pb2.ListRolesRequest(), timeout=TIMEOUT)
    )
    emit(
        [_record(r) for r in reply.roles],
        output,
        empty="no roles yet; add some with `keyferry roles apply -f roles.yaml`",
    )


def _record(role: roles_pb2.Role) -> dict[str, str]:
    return {"name": role.name, "kind": role.WhichOneof("backend") or "", "vault": _target(role)}


def _target(role: roles_pb2.Role) -> str:
    kind = role.WhichOneof("backend")
    if kind == "kv":
        return f"{role.kv.mount}/{role.kv.path}"
    if kind == "database":
        return f"{role.database.mount}/creds/{role.database.vault_role}"
    if kind == "aws":
        return f"{role.aws.mount}/{role.aws.vault_role}"
    if kind == "pki":
        return f"{role.pki.mount}/issue/{role.pki.vault_role}"
    return ""


def _call(context: Path | None, call: Callable[[RolesServiceAsyncStub], Awaitable[T]]) -> T:
    return call_admin(context, roles_pb2_grpc.RolesServiceStub, call)
