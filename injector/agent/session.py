"""`keyferry agent run` as one object: issue every credential, write every file, then (sidecar
mode) hold Watch — swapping files on Rotated, signalling the app, Acking — until stopped, and
release every lease on the way out.

Retry rules: a broker that is away or cannot serve now (BrokerUnavailable: unreachable, or
UNAVAILABLE because its Vault is down), a cap or rate limit (BrokerLimited), a token not there
yet (TokenError) and a Watch the broker does not serve yet (WatchUnsupported) are retried
with full-jitter backoff, never sooner than the broker's RetryInfo when it sent one, keeping
the files already written. A refusal (BrokerRefused) or an unwritable format (FormatError) during
Issue stops the agent with exit 1 and a clear error; it is not retried, so the pod shows a
crash-looping agent instead of a silently waiting one.

Watch refused (PERMISSION_DENIED, or UNAUTHENTICATED before any event): the agent does not
sit at the maximum backoff. It Issues every credential again with the token read afresh:
a refusal there ends the agent with that error (the policy now denies the pod, or the pod
is gone); a success rewrites what changed and the Watch is tried again with backoff.
`WATCH_REFUSALS` refusals in a row despite working Issues end the agent with WatchDenied.

Expiry: every credential with an end (`expires_at`, kept current by Rotated, Renewed and
Expiring events) is kept while the broker is away, and its file is removed once that end
has passed, so `keyferry agent check` (the startup and readiness probes) fails: the pod is
reported not ready instead of serving a dead credential. An expired credential is issued
again when the broker answers.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from injector.terms import FileFormat, Mode

from . import tracing
from .backoff import Backoff
from .client import Ack, Expiring, Issued, Renewed, Revoked, Rotated, WatchEvent
from .errors import (
    BrokerError,
    BrokerRefused,
    BrokerUnavailable,
    TokenError,
    WatchDenied,
    WatchUnsupported,
)
from .formats import default_format, render
from .log import get_logger
from .procs import app_processes
from .restarts import Restarter, Rotation
from .spec import AgentSpec, CredentialRequest
from .writer import remove_stale_temps, write_atomic

log = get_logger("keyferry.agent")

RELEASE_TIMEOUT = 10.0
EXPIRY_CHECK_SECONDS = 1.0
"""How often the agent compares the credentials' ends with the clock."""
WATCH_REFUSALS = 3
"""Watch refusals in a row (each followed by a successful Issue) before the agent gives up."""


class Broker(Protocol):
    async def issue(self, credential_name: str, role: str) -> Issued: ...
    async def release(self, lease_id: str) -> None: ...
    def watch(self, acks: asyncio.Queue[Ack]) -> AsyncIterator[WatchEvent]: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Held:
    request: CredentialRequest
    format: FileFormat
    issued: Issued
    expires_at: datetime | None
    """The credential's end as last heard from the broker (aware, UTC); None: no end."""


@dataclass
class AgentSession:
    spec: AgentSpec
    broker: Broker
    backoff: Backoff = field(default_factory=Backoff)
    signal_app: Callable[[int], list[int]] = field(default=lambda signum: signal_app(signum))  # noqa: PLW0108 - defined below
    clock: Callable[[], datetime] = utc_now
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    held: dict[str, Held] = field(default_factory=dict)
    expired: set[str] = field(default_factory=set)
    """Credentials whose file was removed at their end; issued again when the broker answers."""
    refusals: int = 0
    restarter: Restarter | None = None
    """`on-rotate: restart`: rotations are Acked by it, once the app is back."""
    acks: asyncio.Queue[Ack] | None = None
    """The open Watch stream's Acks; None between streams."""

    def __post_init__(self) -> None:
        if self.restarter is None and self.spec.restart is not None:
            self.restarter = Restarter(self.spec.restart, self._send_ack)

    def _send_ack(self, ack: Ack) -> None:
        """An Ack from the restarter. With no stream open it is dropped: the next stream's
        snapshot repeats the generation, and that repeat is Acked."""
        if self.acks is not None:
            self.acks.put_nowait(ack)

    @property
    def directory(self) -> Path:
        return Path(self.spec.directory)

    async def start(self) -> None:
        """Issue and write every credential; retries while the broker is away."""
        remove_stale_temps(self.directory)
        written = _written_at(self.directory, self.spec.credentials)
        for request in self.spec.credentials:
            with tracing.span("agent issue", {"keyferry.credential": request.name}):
                self._keep(request, await self._retrying(request))
        log.info("agent.ready", credentials=len(self.held), directory=str(self.directory))
        self._resume_restarts(written)

    def _resume_restarts(self, written: dict[str, float]) -> None:
        """A file a predecessor of this agent wrote after the app started (a rotation it
        queued a restart for, and died): restart for it now, as for a rotation."""
        if self.restarter is None:
            return
        for name, when in written.items():
            held = self.held.get(name)
            if held is not None and self.restarter.started_before(when):
                issued = held.issued
                self.restarter.rotated(Rotation(name, issued.lease_id, issued.generation, ""))

    def _keep(self, request: CredentialRequest, issued: Issued) -> None:
        chosen = request.format or default_format(issued.reveal())
        held = Held(request, chosen, issued, _aware(issued.expires_at))
        self._write(held)
        self.held[request.name] = held
        self.expired.discard(request.name)
        log.info(
            "credential.written",
            credential=request.name,
            role=request.role,
            format=chosen.value,
            lease_id=issued.lease_id,
            generation=issued.generation,
        )

    async def _retrying(self, request: CredentialRequest) -> Issued:
        # Its own attempts: a working Issue says nothing about whether Watch will work.
        backoff = replace(self.backoff, attempt=0)
        while True:
            try:
                issued = await self.broker.issue(request.name, request.role)
            except (BrokerUnavailable, TokenError) as exc:
                delay = _at_least_hint(backoff.next_delay(), exc)
                log.warning(
                    "issue.retry",
                    credential=request.name,
                    error=str(exc),
                    code=getattr(exc, "code", ""),
                    retry_in=round(delay, 3),
                )
                await self.sleep(delay)
                continue
            return issued

    def _write(self, held: Held) -> None:
        data = render(held.format, held.request.name, held.issued.reveal())
        write_atomic(self.directory, held.request.name, data, self.spec.file_mode)

    async def hold(self) -> None:
        """Sidecar mode: keep a Watch stream open until cancelled, reconnecting by the rules of
        docs/api.md; meanwhile remove files whose credential has ended. BrokerRefused ends it."""
        if self.spec.mode is Mode.INIT_ONLY:
            return
        expiring = asyncio.ensure_future(self._expire_forever())
        restarting = asyncio.ensure_future(self.restarter.run()) if self.restarter else None
        try:
            await self._watch_forever()
        finally:
            expiring.cancel()
            if restarting is not None:
                restarting.cancel()

    async def _watch_forever(self) -> None:
        while True:
            if self.expired:
                await self._issue_expired()
            acks: asyncio.Queue[Ack] = asyncio.Queue()
            self.acks = acks
            events = 0
            failure: Exception | None = None
            try:
                async for event in self.broker.watch(acks):
                    events += 1
                    self.refusals = 0
                    self.backoff.reset()
                    self._on_event(event, acks)
                log.info("watch.ended")
            except WatchUnsupported:
                log.info("watch.unsupported", detail="no pushed rotations; keeping the files")
            except BrokerRefused as exc:
                if exc.code == "UNAUTHENTICATED" and events:
                    log.info("watch.token_expired", detail="reconnecting with a fresh token")
                    continue
                await self._refused(exc)
            except (BrokerError, TokenError) as exc:
                log.warning("watch.failed", error=str(exc), code=getattr(exc, "code", ""))
                failure = exc
            finally:
                self.acks = None
            delay = _at_least_hint(self.backoff.next_delay(), failure)
            log.info("watch.reconnect", retry_in=round(delay, 3))
            await self.sleep(delay)

    async def _refused(self, exc: BrokerRefused) -> None:
        """Watch refused: Issue again with the token read afresh; a refusal there (or too
        many refusals of Watch alone) ends the agent."""
        self.refusals += 1
        log.warning(
            "watch.refused",
            error=str(exc),
            code=exc.code,
            reason=exc.reason,
            refusals=self.refusals,
        )
        for request in self.spec.credentials:
            if request.name in self.held or request.name in self.expired:
                self._reissued(request, await self._retrying(request))
        if self.refusals >= WATCH_REFUSALS:
            raise WatchDenied(
                f"Broker.Watch refused {self.refusals} times in a row ({exc.code} {exc.reason}) "
                "while Issue succeeds: the policy must permit action watch on the pod's own "
                "leases (see docs/examples/policies.cedar)",
                exc.code,
                exc.reason,
            )

    def _reissued(self, request: CredentialRequest, issued: Issued) -> None:
        held = self.held.get(request.name)
        if held is None or (held.issued.lease_id, held.issued.generation) != (
            issued.lease_id,
            issued.generation,
        ):
            self._keep(request, issued)
        else:
            held.expires_at = _later(held.expires_at, issued.expires_at)

    async def _issue_expired(self) -> None:
        for request in self.spec.credentials:
            if request.name not in self.expired:
                continue
            issued = await self._retrying(request)
            end = _aware(issued.expires_at)
            if end is not None and end <= self.clock():
                log.warning("credential.issued_expired", credential=request.name)
                continue
            self._keep(request, issued)

    async def _expire_forever(self) -> None:
        while True:
            self.expire_due()
            await self.sleep(EXPIRY_CHECK_SECONDS)

    def expire_due(self) -> list[str]:
        """Remove the files of credentials whose end has passed; their names."""
        now = self.clock()
        ended = [
            name
            for name, held in self.held.items()
            if held.expires_at is not None and held.expires_at <= now
        ]
        for name in ended:
            held = self.held.pop(name)
            (self.directory / name).unlink(missing_ok=True)
            self.expired.add(name)
            log.warning(
                "credential.expired",
                credential=name,
                lease_id=held.issued.lease_id,
                expires_at=str(held.expires_at),
                detail="file removed; the pod is not ready until the broker issues it again",
            )
        return ended

    def _on_event(self, event: WatchEvent, acks: asyncio.Queue[Ack]) -> None:
        """Handle one event inside its span: the child of the broker's push span, so the
        Ack it sends (carrying this span) continues the broker's trace."""
        kind = type(event).__name__.lower()
        lease_id = event.issued.lease_id if isinstance(event, Rotated) else event.lease_id
        attributes = {"keyferry.event": kind, "keyferry.lease_id": lease_id}
        with tracing.span(f"watch {kind}", attributes, parent=event.trace or None):
            self._handle(event, acks)

    def _handle(self, event: WatchEvent, acks: asyncio.Queue[Ack]) -> None:
        if isinstance(event, Rotated):
            self._rotate(event.issued, acks)
        elif isinstance(event, Revoked):
            self._revoked(event)
        elif isinstance(event, Renewed):
            self._new_end(event.lease_id, event.expires_at)
        elif isinstance(event, Expiring):
            log.warning("lease.expiring", lease_id=event.lease_id, expires_at=str(event.expires_at))
            self._new_end(event.lease_id, event.expires_at)

    def _new_end(self, lease_id: str, expires_at: datetime | None) -> None:
        for held in self.held.values():
            if held.issued.lease_id == lease_id and expires_at is not None:
                held.expires_at = _aware(expires_at)

    def _rotate(self, issued: Issued, acks: asyncio.Queue[Ack]) -> None:
        held = self.held.get(issued.credential_name)
        if held is None:
            request = self._request(issued.credential_name)
            if request is None or issued.credential_name not in self.expired:
                log.warning("rotated.unknown", credential=issued.credential_name)
                return
            self._keep(request, issued)  # a new generation of an expired credential
            acks.put_nowait(Ack(issued.lease_id, issued.generation, trace=tracing.traceparent()))
            return
        if issued.generation <= held.issued.generation:  # the snapshot, or a repeat
            if issued.lease_id == held.issued.lease_id:
                held.expires_at = _later(held.expires_at, issued.expires_at)
            if not (self.restarter and self.restarter.awaiting(issued.lease_id, issued.generation)):
                acks.put_nowait(
                    Ack(issued.lease_id, issued.generation, trace=tracing.traceparent())
                )
            return
        renewed = Held(held.request, held.format, issued, _aware(issued.expires_at))
        self._write(renewed)
        self.held[issued.credential_name] = renewed
        if self.restarter is not None:  # the file first; the restart, then the Ack, later
            self.restarter.rotated(
                Rotation(
                    issued.credential_name,
                    issued.lease_id,
                    issued.generation,
                    previous_lease_id=held.issued.lease_id,
                )
            )
            log.info(
                "credential.rotated",
                credential=issued.credential_name,
                lease_id=issued.lease_id,
                generation=issued.generation,
                restart="queued",
            )
            return
        signalled: list[int] = []
        if self.spec.on_rotate is not None:
            signalled = self.signal_app(int(signal.Signals[self.spec.on_rotate.value]))
        acks.put_nowait(Ack(issued.lease_id, issued.generation, trace=tracing.traceparent()))
        log.info(
            "credential.rotated",
            credential=issued.credential_name,
            lease_id=issued.lease_id,
            generation=issued.generation,
            signalled=signalled,
        )

    def _request(self, name: str) -> CredentialRequest | None:
        return next((r for r in self.spec.credentials if r.name == name), None)

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
        if self.restarter is not None and self.restarter.revoked(event.lease_id):
            return  # reported as restart.not_back
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


def _written_at(directory: Path, credentials: tuple[CredentialRequest, ...]) -> dict[str, float]:
    """The mtime of each credential file already there (a predecessor wrote it)."""
    found = {}
    for request in credentials:
        try:
            found[request.name] = (directory / request.name).stat().st_mtime
        except FileNotFoundError:
            continue
    return found


def _at_least_hint(delay: float, error: Exception | None) -> float:
    """The backoff's `delay`, or the broker's RetryInfo when that is longer."""
    if isinstance(error, BrokerUnavailable) and error.retry_after is not None:
        return max(delay, error.retry_after)
    return delay


def _aware(moment: datetime | None) -> datetime | None:
    """Timestamps from protobuf are naive UTC; compare them as aware ones."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _later(current: datetime | None, heard: datetime | None) -> datetime | None:
    heard = _aware(heard)
    if current is None or heard is None:
        return current if heard is None else heard
    return max(current, heard)


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
