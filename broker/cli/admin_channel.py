"""Calling the broker's admin listener from a command: mutual TLS with the context's
operator certificate, one channel per call, and the broker's answers turned into the exit
codes every `keyferry` command shares."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import typer

from .context import CliContext, ContextInvalid, load_context
from .exits import CONFIG, FAILED, UNREACHABLE

T = TypeVar("T")
S = TypeVar("S")
TIMEOUT = 30.0


def call_admin(
    context_file: Path | None,
    make_stub: Callable[[grpc.aio.Channel], Any],
    call: Callable[[S], Awaitable[T]],
) -> T:
    """Run one call on a stub of the admin listener named by the context file; exit 2 when
    the context is unusable, 3 when nothing answers, 1 when the broker refused (its
    sentence is printed)."""
    from broker.server.status import reason_of  # noqa: PLC0415

    try:
        context, path = load_context(context_file)
        credentials = channel_credentials(context)
    except ContextInvalid as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(CONFIG) from None
    options = []
    if context.server_name:
        options.append(("grpc.ssl_target_name_override", context.server_name))

    async def run() -> T:
        async with grpc.aio.secure_channel(context.address, credentials, options) as channel:
            stub: S = make_stub(channel)
            return await call(stub)

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as exc:
        details = exc.details()
        if exc.code() == grpc.StatusCode.UNAVAILABLE and reason_of(exc) is None:
            typer.echo(
                f"the broker did not answer at {context.address} (context {path}): is it "
                "running, and was its admin certificate issued by the context's CA? "
                f"({details})",
                err=True,
            )
            raise typer.Exit(UNREACHABLE) from None
        typer.echo(f"the broker refused: {details}", err=True)
        raise typer.Exit(FAILED) from None


def channel_credentials(context: CliContext) -> grpc.ChannelCredentials:
    """The mutual-TLS credentials of the context: its CA, the operator's certificate and key;
    ContextInvalid when a file cannot be read."""
    try:
        ca, cert, key = (p.read_bytes() for p in (context.ca, context.cert, context.key))
    except OSError as exc:
        raise ContextInvalid(Path(exc.filename or "?"), f"cannot be read: {exc.strerror}") from exc
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
