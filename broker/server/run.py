"""Run a broker until SIGTERM or SIGINT, then stop it gracefully."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import structlog

from broker import tracing
from broker.settings import BrokerSettings

from .app import DEFAULT_GRACE, BrokerServer, create_server

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
log = structlog.get_logger("keyferry.server")


async def serve(
    settings: BrokerSettings,
    *,
    ready: Callable[[BrokerServer], None] | None = None,
    grace: float = DEFAULT_GRACE,
) -> None:
    """Serve until a stop signal; running calls get `grace` seconds to finish. Traces are
    exported while it serves when `settings.tracing` (or the OTEL_* variables) turn them on."""
    if tracing.start(settings.tracing):
        log.info("tracing on", service=settings.tracing.service_name)
    server, _port = await create_server(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
        if ready is not None:
            ready(server)
        await stop.wait()
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        await server.stop(grace)
        tracing.stop()
