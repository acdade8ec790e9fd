"""`keyferry agent run` as one object: issue every credential, write every file, then (sidecar
mode) hold Watch — swapping files on Rotated, signalling the app, Acking — until stopped, and
release every lease on the way out.

Retry rules: a broker that is away (BrokerUnavailable), a token not there yet (TokenError)
and a Watch the broker does not serve yet (WatchUnsupported) are retried with full-jitter
backoff, keeping the files already written. A refusal (BrokerRefused) or an unwritable
format (FormatError) during Issue stops the agent with exit 1 and a clear error; it is not
retried, so the pod shows a crash-looping agent instead of a silently waiting one.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from injector.contract import AgentSpec, CredentialRequest, FileFormat, Mode

from .backoff import Backoff
from .client import Expiring, Issued, Revoked, Rotated, WatchEvent
from .errors import BrokerError, BrokerRefused, BrokerUnavailable, TokenError, WatchUnsupported
from .formats import default_format, render
from .procs import app_processes
from .token import read_token
from .writer import remove_stale_temps, write_atomic

log = structlog.get_logger("keyferry.agent")

RELEASE_TIMEOUT = 10.0
TOKEN_POLL_SECONDS = 1.0
BACKOFF_AT_CAP = 6
"""Attempts after which the backoff's ceiling is its cap (1 s doubling: 32 s > 30 s)."""


class Broker(Protocol):
    async def issue(self, credential_name: str, role: str) -> Issued: ...
    async def release(self, lease_id: str) -> None: ...
    def watch(self, acks: asyncio.Queue[tuple[str, int]]) -> AsyncIterator[WatchEvent]: ...


@dataclass
class Held:
    request: CredentialRequest
    format: FileFormat
    issued: Issued


@dataclass
class AgentSession:
    spec: AgentSpec
    broker: Broker
    backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=30.0))
    signal_app: Callable[[int], list[int]] = field(default=lambda signum: signal_app(signum))  # noqa: PLW0108 - defined below
    held: dict[str, Held] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return Path(self.spec.directory)

    async def start(self) -> None:
        """Issue and write every credential; retries while the broker is away."""
        remove_stale_temps(self.directory)
        for request in self.spec.credentials:
            issued = await self._retrying(request)
            chosen = request.format or default_format(issued.reveal())
            held = Held(request, chosen, issued)
            self._write(held)
            self.held[request.name] = held
            log.info(
                "credential.written",
                credential=request.name,
                role=request.role,
                format=chosen.value,
                lease_id=issued.lease_id,
                generation=issued.generation,
            )
        log.info("agent.ready", credentials=len(self.held), directory=str(self.directory))

    async def _retrying(self, request: CredentialRequest) -> Issued:
        while True:
            try:
                issued = await self.broker.issue(request.name, request.role)
            except (BrokerUnavailable, TokenError) as exc:
                delay = self.backoff.next_delay()
                log.warning(
                    "issue.retry", credential=request.name, error=str(exc), retry_in=round(delay, 2)
                )
                await asyncio.sleep(delay)
                continue
            self.backoff.reset()
            return issued

    def _write(self, held: Held) -> None:
        data = render(held.format, held.request.name, held.issued.reveal())
        write_atomic(self.directory, held.request.name, data, self.spec.file_mode)

    async def hold(self) -> None:
        """Sidecar mode: keep a Watch stream open until cancelled, reconnecting by the rules of
        docs/api.md: at once when the broker ends a stream at its token's expiry, after the
        token file changes when the token is refused at open, with backoff otherwise."""
        if self.spec.mode is Mode.INIT_ONLY:
            return
        while True:
            acks: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
            events = 0
            token = self._token_text()
            try:
                async for event in self.broker.watch(acks):
                    events += 1
                    self.backoff.reset()
                    self._on_event(event, acks)
                log.info("watch.ended")
            except WatchUnsupported:
                log.info("watch.unsupported", detail="no pushed rotations; keeping the files")
            except BrokerRefused as exc:
                if exc.code == "UNAUTHENTICATED" and events:
                    log.info("watch.token_expired", detail="reconnecting with a fresh token")
                    continue
                log.warning("watch.refused", error=str(exc), code=exc.code, reason=exc.reason)
                if exc.code == "UNAUTHENTICATED":
                    await self._token_changed(token)
                    continue
                self.backoff.attempt = max(self.backoff.attempt, BACKOFF_AT_CAP)
            except (BrokerError, TokenError) as exc:
                log.warning("watch.failed", error=str(exc), code=getattr(exc, "code", ""))
            delay = self.backoff.next_delay()
            log.info("watch.reconnect", retry_in=round(delay, 2))
            await asyncio.sleep(delay)

    def _token_text(self) -> str:
        try:
            return read_token(Path(self.spec.token_path))
        except TokenError:
            return ""

    async def _token_changed(self, refused: str) -> None:
        """Wait until the kubelet has written a token other than the refused one."""
        while self._token_text() in ("", refused):
            await asyncio.sleep(TOKEN_POLL_SECONDS)

    def _on_event(self, event: WatchEvent, acks: asyncio.Queue[tuple[str, int]]) -> None:
        if isinstance(event, Rotated):
            self._rotate(event.issued, acks)
        elif isinstance(event, Revoked):
            self._revoked(event)
        elif isinstance(event, Expiring):
            log.warning("lease.expiring", lease_id=event.lease_id, expires_at=str(event.expires_at))

    def _rotate(self, issued: Issued, acks: asyncio.Queue[tuple[str, int]]) -> None:
        held = self.held.get(issued.credential_name)
        if held is None:
            log.warning("rotated.unknown", credential=issued.credential_name)
            return
        if issued.generation <= held.issued.generation:  # the snapshot, or a repeat
            acks.put_nowait((issued.lease_id, issued.generation))
            return
        renewed = Held(held.request, held.format, issued)
        self._write(renewed)
        self.held[issued.credential_name] = renewed
        signalled: list[int] = []
        if self.spec.on_rotate is not None:
            signalled = self.signal_app(int(signal.Signals[self.spec.on_rotate.value]))
        acks.put_nowait((issued.lease_id, issued.generation))
        log.info(
            "credential.rotated",
            credential=issued.credential_name,
            lease_id=issued.lease_id,
            generation=issued.generation,
            signalled=signalled,
        )

    def _revoked(self, event: Revoked) -> None:
        """A superseded generation needs nothing; the current lease's file is removed."""
        for name, held in list(self.held.items()):
            if held.issued.lease_id == event.lease_id:
                (self.directory / name).unlink(missing_ok=True)
                del self.held[name]
                log.warning(
                    "lease.revoked", credential=name, lease_id=event.lease_id, reason=event.reason
                )
                return
        log.info("lease.superseded", lease_id=event.lease_id, reason=event.reason)

    async def release(self) -> None:
        """Release every lease held (SIGTERM); failures are logged, never raised."""
        for held in self.held.values():
            failure = await _release(self.broker, held.issued.lease_id)
            fields = {"credential": held.request.name, "lease_id": held.issued.lease_id}
            if failure is None:
                log.info("lease.released", **fields)
            else:
                log.error("lease.release_failed", error=failure, **fields)


async def _release(broker: Broker, lease_id: str) -> str | None:
    """None when released, else why not."""
    try:
        await asyncio.wait_for(broker.release(lease_id), RELEASE_TIMEOUT)
    except (BrokerError, TokenError) as exc:
        return str(exc)
    except TimeoutError:
        return f"no answer within {RELEASE_TIMEOUT:.0f} s"
    return None


def signal_app(signum: int) -> list[int]:
    """Send `signum` to the app containers' main processes (see procs.py); their PIDs."""
    sent = []
    for pid in app_processes():
        try:
            os.kill(pid, signum)
        except OSError as exc:
            log.warning("signal.failed", pid=pid, error=exc.__class__.__name__)
            continue
        sent.append(pid)
    return sent
