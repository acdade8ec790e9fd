"""Calling the broker's admin listener from a command: mutual TLS with the context's
operator certificate, one channel per call, and the broker's answers turned into the exit
codes every `keyferry` command shares.

With tracing on (the standard OTEL_* variables name a collector; broker.tracing) each
command is one trace: a root span for the command, a client span per call whose
traceparent goes to the broker in the call's metadata, so the broker's spans join it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import typer

from broker import tracing

from .context import CliContext, ContextInvalid, load_context
from .exits import CONFIG, FAILED, UNREACHABLE

T = TypeVar("T")
S = TypeVar("S")
TIMEOUT = 30.0
CLI_SERVICE = "keyferry-cli"


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
        async with grpc.aio.secure_channel(
            context.address, credentials, options, interceptors=[UnarySpans(), StreamSpans()]
        ) as channel:
            stub: S = make_stub(channel)
            with tracing.span("keyferry admin", {"keyferry.context": str(path)}):
                return await call(stub)

    try:
        traced = tracing.start(tracing.TracingSettings(service_name=CLI_SERVICE))
    except tracing.TracingUnavailable as exc:
        typer.echo(f"warning: {exc}; the call is not traced", err=True)
        traced = False
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
    finally:
        if traced:
            tracing.stop()


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


class UnarySpans(grpc.aio.UnaryUnaryClientInterceptor):
    """A client span per unary admin call, its traceparent in the call's metadata (tracing
    on). grpc.aio files an interceptor under its first kind only: one class per kind."""

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        with tracing.span(_label(client_call_details), kind="client"):
            call = await continuation(_traced(client_call_details), request)
            await call  # the span covers the answer
            return call


class StreamSpans(grpc.aio.UnaryStreamClientInterceptor):
    """The same for a server-streaming call (RotateSelected, RevokeSelected): the span
    covers starting the call."""

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        with tracing.span(_label(client_call_details), kind="client"):
            return await continuation(_traced(client_call_details), request)


def _label(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    service, _, name = method.lstrip("/").rpartition("/")
    return f"{service.rsplit('.', 1)[-1]}/{name}"


def _traced(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    carried = tracing.metadata()
    if not carried:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()), *carried)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )
