"""`on-rotate: restart`: put rotated credentials in use by restarting the app's containers.

The session writes a rotated file first and hands the rotation here instead of Acking it.
Rotations are coalesced: the first one opens a window (`coalesce_seconds`) and every rotation
until it closes is put in use by the same restart. Restarts are spaced: the next one starts
at least `min_spacing_seconds` after the previous one ended the containers, so the kubelet
never meets two restarts close enough for its CrashLoopBackOff (docs/injector.md); a
rotation in between waits for it (queued), its file already written.

A restart ends each named container's main process (SIGTERM, SIGKILL after
`grace_seconds`), then waits until every one of them has a main process that started after
that (the kubelet started the container again, reading the new files), and only then
Acks the rotations, with the containers restarted: the broker revokes the old credentials on
that Ack. An app that never comes back is never Acked: the broker revokes the old credential
at the rotation's grace, and the agent reports it when that revocation reaches it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from .log import get_logger
from .messages import Ack
from .procs import MainProcess, boot_ticks, container_mains, started_at
from .spec import RestartSpec

log = get_logger("keyferry.agent")

POLL_SECONDS = 0.25
"""How often /proc is read while a container ends and while it comes back."""
CLOCK_MARGIN = 1.0
"""Seconds a process's start (boot time plus ticks) may differ from a file's mtime."""
SLOW_AFTER_SECONDS = 60.0
"""A container not back this long after it ended is reported once (`restart.slow`)."""


@dataclass(frozen=True)
class Rotation:
    """A rotated credential written to its file and waiting for a restart."""

    credential: str
    lease_id: str
    generation: int
    previous_lease_id: str
    """The superseded lease: the broker revokes it on the Ack or at the rotation's grace."""


@dataclass
class RestartSchedule:
    """When the next restart is due (pure: the caller passes the time, in seconds)."""

    coalesce: float
    spacing: float
    pending: list[Rotation] = field(default_factory=list)
    first_at: float | None = None
    ended_at: float | None = None
    """When the previous restart ended the containers."""

    def add(self, rotation: Rotation, now: float) -> None:
        """Queue a rotation; a newer generation of a queued credential replaces it."""
        if not self.pending:
            self.first_at = now
        self.pending = [r for r in self.pending if r.credential != rotation.credential]
        self.pending.append(rotation)

    def due_at(self) -> float | None:
        """None when nothing waits; else the end of the coalescing window, or later when the
        previous restart is closer than the spacing."""
        if self.first_at is None:
            return None
        due = self.first_at + self.coalesce
        if self.ended_at is not None:
            due = max(due, self.ended_at + self.spacing)
        return due

    def take(self, now: float) -> tuple[Rotation, ...]:
        """The rotations one restart puts in use, when due; nothing before."""
        due = self.due_at()
        if due is None or now < due:
            return ()
        batch, self.pending, self.first_at = tuple(self.pending), [], None
        return batch

    def ended(self, now: float) -> None:
        self.ended_at = now

    def waiting(self, lease_id: str, generation: int) -> bool:
        return any((r.lease_id, r.generation) == (lease_id, generation) for r in self.pending)


class Processes(Protocol):
    """The containers' main processes and the signals sent to them (/proc, or a fake)."""

    def mains(self, names: Iterable[str]) -> dict[str, MainProcess]: ...
    def kill(self, pid: int, signum: int) -> None: ...
    def started_at(self, main: MainProcess) -> float: ...
    def now(self) -> int: ...


class ProcTable:
    """The pod's /proc (shared process namespace)."""

    def mains(self, names: Iterable[str]) -> dict[str, MainProcess]:
        return container_mains(names)

    def kill(self, pid: int, signum: int) -> None:
        os.kill(pid, signum)

    def started_at(self, main: MainProcess) -> float:
        return started_at(main)

    def now(self) -> int:
        return boot_ticks()


@dataclass
class Restarter:
    spec: RestartSpec
    send_ack: Callable[[Ack], None]
    processes: Processes = field(default_factory=ProcTable)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    schedule: RestartSchedule = field(init=False)
    in_flight: tuple[Rotation, ...] = ()
    restarts: int = 0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.schedule = RestartSchedule(self.spec.coalesce_seconds, self.spec.min_spacing_seconds)

    def rotated(self, rotation: Rotation) -> None:
        self.schedule.add(rotation, self.clock())
        due = self.schedule.due_at()
        log.info(
            "restart.queued",
            credential=rotation.credential,
            lease_id=rotation.lease_id,
            generation=rotation.generation,
            containers=list(self.spec.containers),
            in_seconds=round(max((due or 0.0) - self.clock(), 0.0), 3),
        )
        self._wake.set()

    def started_before(self, written_at: float) -> bool:
        """Some named container runs a main process older than a file written at
        `written_at` (seconds since the epoch): it started with an earlier credential. How a
        restarted agent finds a restart its predecessor queued but did not do."""
        mains = self.processes.mains(self.spec.containers).values()
        return any(self.processes.started_at(m) + CLOCK_MARGIN < written_at for m in mains)

    def awaiting(self, lease_id: str, generation: int) -> bool:
        """This generation is Acked by a restart, not when the snapshot repeats it."""
        in_flight = any(
            (r.lease_id, r.generation) == (lease_id, generation) for r in self.in_flight
        )
        return in_flight or self.schedule.waiting(lease_id, generation)

    def revoked(self, lease_id: str) -> bool:
        """The broker revoked a superseded lease before its restart was Acked: that was the
        rotation's grace, and the agent says so (the app still running on the old credential
        when the restart is queued for the spacing, or not back yet when it is under way)."""
        queued = [r for r in self.schedule.pending if r.previous_lease_id == lease_id]
        waiting = [r for r in self.in_flight if r.previous_lease_id == lease_id]
        reports = [
            (
                "restart.queued_past_grace",
                queued,
                "the old credential was revoked at the rotation's grace while the restart "
                "waits for the minimum spacing; rotate with a longer grace",
            ),
            (
                "restart.not_back",
                waiting,
                "the old credential was revoked at the rotation's grace before the app came "
                "back with the new one",
            ),
        ]
        restart_in = round(max((self.schedule.due_at() or 0.0) - self.clock(), 0.0), 3)
        for event, rotations, detail in reports:
            for rotation in rotations:
                log.error(
                    event,
                    credential=rotation.credential,
                    previous_lease_id=lease_id,
                    lease_id=rotation.lease_id,
                    generation=rotation.generation,
                    containers=list(self.spec.containers),
                    restart_in=restart_in if rotations is queued else None,
                    detail=detail,
                )
        return bool(waiting or queued)

    async def run(self) -> None:
        """Restart whenever the schedule says, until cancelled."""
        while True:
            due = self.schedule.due_at()
            if due is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = self.clock()
            if now < due:
                await self.sleep(due - now)
                continue
            batch = self.schedule.take(now)
            self.in_flight = batch
            try:
                await self.restart(batch)
            except OSError:  # /proc unreadable: said, and the rotations stay un-Acked
                log.exception("restart.failed", containers=list(self.spec.containers))
                continue
            finally:
                self.in_flight = ()
            for rotation in batch:
                self.send_ack(Ack(rotation.lease_id, rotation.generation, self.spec.containers))

    async def restart(self, batch: tuple[Rotation, ...]) -> None:
        """End each named container's main process and wait until each is back."""
        names = self.spec.containers
        began = self.clock()
        before = self.processes.mains(names)
        log.info(
            "restart.begin",
            containers=list(names),
            pids={name: main.pid for name, main in before.items()},
            rotations=[f"{r.lease_id}/{r.generation}" for r in batch],
        )
        await self._end(before)
        ended = self.processes.now()
        self.schedule.ended(self.clock())
        self.restarts += 1
        back = await self._back(names, ended)
        log.info(
            "restart.done",
            containers=list(names),
            pids={name: main.pid for name, main in back.items()},
            rotations=[f"{r.lease_id}/{r.generation}" for r in batch],
            seconds=round(self.clock() - began, 3),
        )

    async def _end(self, before: dict[str, MainProcess]) -> None:
        self._signal(before, signal.SIGTERM)
        deadline = self.clock() + self.spec.grace_seconds
        running = before
        while running and self.clock() < deadline:
            await self.sleep(POLL_SECONDS)
            running = self._still(before)
        if running:
            log.warning(
                "restart.killed",
                containers=sorted(running),
                grace_seconds=self.spec.grace_seconds,
                detail="still running after SIGTERM and the grace: SIGKILL",
            )
            self._signal(running, signal.SIGKILL)

    def _still(self, before: dict[str, MainProcess]) -> dict[str, MainProcess]:
        now = self.processes.mains(before)
        return {name: main for name, main in before.items() if now.get(name) == main}

    def _signal(self, mains: dict[str, MainProcess], signum: int) -> None:
        for name, main in mains.items():
            try:
                self.processes.kill(main.pid, signum)
            except OSError as exc:  # ended meanwhile
                log.info("restart.signal_failed", container=name, pid=main.pid, error=str(exc))

    async def _back(self, names: tuple[str, ...], ended: int) -> dict[str, MainProcess]:
        """Until every container has a main process that started after the old ones ended
        (`ended`, in boot ticks): a new instance. A process exec'd into a dying instance
        started before, so it is never taken for the new main process."""
        since = self.clock()
        slow_reported = False
        while True:
            now = self.processes.mains(names)
            back = {name: main for name, main in now.items() if main.started > ended}
            if len(back) == len(names):
                return back
            if not slow_reported and self.clock() - since > SLOW_AFTER_SECONDS:
                slow_reported = True
                log.warning(
                    "restart.slow",
                    waiting_for=sorted(set(names) - back.keys()),
                    seconds=round(self.clock() - since, 3),
                )
            await self.sleep(POLL_SECONDS)
