"""The agent's entry point, `run`, as a function returning an exit code (`keyferry agent check`
is `injector.probe`, which imports nothing of this package).

`run` installs its SIGTERM/SIGINT handlers on the event loop: the signal cancels the
session task at its next await (a file write never awaits, so a write is never cut; and
writes are atomic anyway), then every lease is released and the exit code is 0.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from . import tracing
from .backoff import Backoff
from .errors import AgentError, BrokerError
from .log import get_logger
from .spec import AgentSpec, load_spec

if TYPE_CHECKING:
    from .client import BrokerClient
    from .session import AgentSession

log = get_logger("keyferry.agent")

EXIT_OK, EXIT_FAILED, EXIT_SPEC = 0, 1, 2


def run(environ: Mapping[str, str]) -> int:
    """Issue, write and (sidecar) hold the credentials until SIGTERM; the exit code."""
    try:
        spec = load_spec(environ)
    except AgentError as exc:
        _report(exc, 0)
        return EXIT_SPEC
    return asyncio.run(_run(spec, environ))


def agent_for(
    spec: AgentSpec, uniform: Callable[[float, float], float] = random.uniform
) -> tuple[BrokerClient, AgentSession]:
    """The channel and the session `run` uses: the spec's broker, token and backoff (its cap
    also the channel's reconnect cap), drawing from `uniform`. Call inside the event loop."""
    # Here, not at the top: `keyferry agent --help` and `check` need no gRPC and no stubs.
    from .client import BrokerClient  # noqa: PLC0415
    from .session import AgentSession  # noqa: PLC0415

    client = BrokerClient(
        spec.broker_address,
        spec.broker_ca_pem,
        Path(spec.token_path),
        reconnect_cap=spec.backoff_cap_seconds,
    )
    return client, AgentSession(spec, client, backoff=Backoff.for_spec(spec, uniform))


async def _run(spec: AgentSpec, environ: Mapping[str, str]) -> int:
    try:
        if tracing.start(environ):
            log.info("agent.tracing", detail="spans exported over OTLP (OTEL_* variables)")
    except tracing.TracingUnavailable as exc:  # the credentials matter more than their spans
        log.warning("agent.tracing_unavailable", error=str(exc))
    client, session = agent_for(spec)
    log.info(
        "agent.start",
        cluster=spec.cluster,
        mode=spec.mode.value,
        credentials=[c.name for c in spec.credentials],
        backoff=[spec.backoff_base_seconds, spec.backoff_cap_seconds],
    )
    stopping = asyncio.Event()

    def stop() -> None:
        if not stopping.is_set():
            stopping.set()
            worker.cancel()

    worker = asyncio.ensure_future(_work(session))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    try:
        code = await worker
    except asyncio.CancelledError:
        log.info("agent.stopping", leases=len(session.held))
        code = EXIT_OK
    finally:
        if stopping.is_set():
            await session.release()
        await client.close()
        tracing.stop()
    log.info("agent.exit", code=code)
    return code


async def _work(session: AgentSession) -> int:
    try:
        await session.start()
        await session.hold()
    except AgentError as exc:
        _report(exc, len(session.held))
        return EXIT_FAILED
    return EXIT_OK


def _report(exc: AgentError, issued: int) -> None:
    """One error line a person can act on: what failed, the status code and the reason."""
    if isinstance(exc, BrokerError):
        log.error("agent.refused", error=str(exc), code=exc.code, reason=exc.reason, issued=issued)
    else:
        log.error("agent.failed", error=str(exc), issued=issued)
