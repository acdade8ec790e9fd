"""Calling the broker's admin socket from a command: one channel per call, and the broker's
answers turned into the exit codes every `keyferry` command shares."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
import typer

from broker.settings import DEFAULT_DATA_DIR

from .exits import FAILED, UNREACHABLE

T = TypeVar("T")
S = TypeVar("S")
DEFAULT_SOCKET = DEFAULT_DATA_DIR / "admin.sock"
TIMEOUT = 30.0

SocketOption = Annotated[
    Path,
    typer.Option("--socket", envvar="KEYFERRY_ADMIN__SOCKET", help="the broker's admin socket"),
]


def call_admin(
    socket: Path, make_stub: Callable[[grpc.aio.Channel], Any], call: Callable[[S], Awaitable[T]]
) -> T:
    """Run one call on a stub of the admin socket; exit 3 when nothing answers there, 1 when
    the broker refused (its sentence is printed)."""
    from broker.server.status import reason_of  # noqa: PLC0415

    async def run() -> T:
        async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
            stub: S = make_stub(channel)
            return await call(stub)

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as exc:
        details = exc.details()
        if exc.code() == grpc.StatusCode.UNAVAILABLE and reason_of(exc) is None:
            typer.echo(
                f"the broker did not answer on {socket}: is it running, and is --socket "
                f"its admin.socket? ({details})",
                err=True,
            )
            raise typer.Exit(UNREACHABLE) from None
        typer.echo(f"the broker refused: {details}", err=True)
        raise typer.Exit(FAILED) from None
