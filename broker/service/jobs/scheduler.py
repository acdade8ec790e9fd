"""The broker's periodic jobs and their scheduler, on APScheduler (3.x, AsyncIOScheduler on
the broker's event loop).

A job (`Periodic`) is a coroutine run every `interval`. `leader_only` jobs (revocations,
the pod sweep, JWKS refresh, audit checkpoints, reconcile, grant expiry) run on the one
replica that leads (leadership.py); the others run on every replica because they serve
what that replica holds (renewals of the pods whose Watch streams it serves, leadership
itself).

APScheduler 3 cannot share a job store between schedulers, so nothing about the work is
kept in APScheduler: each replica schedules the same jobs in memory, the lease table is
the work queue, and a `leader_only` job runs only while this replica leads. Every job
reads its due work from the lease table and every action on a lease is idempotent, so a
job that runs twice (two replicas in the moment a lead changes hands, a retry after a
crash) wastes work, never repeats an effect. When a replica becomes leader its leader
jobs run at once, so due work a dead leader left behind is picked up without waiting for
the next interval.

A job's failure is logged and the next run tries again: a job never dies of one bad pass.
Runs of one job never overlap (max_instances=1); missed runs collapse into one (coalesce).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from broker import tracing
from broker.errors import KeyferryError

from .leadership import Leadership

log = structlog.get_logger("keyferry.scheduler")
LEADERSHIP_JOB = "leadership"
Job = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Periodic:
    name: str
    interval: timedelta
    job: Job
    leader_only: bool = True
    at_once: bool = True  # first run at start and on taking the lead; else after `interval`


class JobScheduler:
    def __init__(
        self,
        jobs: list[Periodic],
        leadership: Leadership,
        *,
        jitter: float,
        leadership_interval: timedelta,
    ) -> None:
        self.jobs = jobs
        self.leadership = leadership
        self._jitter = jitter
        self._leadership_interval = leadership_interval
        self._on_leadership: Callable[[bool], None] | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._running: set[asyncio.Task[object]] = set()

    def on_leadership(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(leader)` when this replica takes or loses the lead."""
        self._on_leadership = callback

    def add(self, job: Periodic) -> None:
        """Schedule another job (also after start: registered clusters, other flows)."""
        self.jobs.append(job)
        if self._scheduler is not None:
            self._schedule(self._scheduler, job)

    def start(self) -> None:
        """Schedule every job on the running event loop; leadership is decided first."""
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(
            self._lead,
            IntervalTrigger(seconds=self._leadership_interval.total_seconds(), timezone=UTC),
            id=LEADERSHIP_JOB,
            next_run_time=datetime.now(UTC),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        for job in self.jobs:
            self._schedule(scheduler, job)
        scheduler.start()
        self._scheduler = scheduler
        self._report(self.leadership.is_leader)

    async def stop(self) -> None:
        """Stop scheduling, cancel running passes, give up the lead."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=False)  # runs on the loop's next turn: let it
            await asyncio.sleep(0)
        for task in list(self._running):
            task.cancel()
        for task in list(self._running):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.leadership.close()
        self._report(False)

    async def run_now(self, name: str) -> object:
        """Run one job's pass now, as its schedule would (tests, operators' triggers)."""
        job = next(j for j in self.jobs if j.name == name)
        return await self._pass(job)

    def _schedule(self, scheduler: AsyncIOScheduler, job: Periodic) -> None:
        seconds = job.interval.total_seconds()
        scheduler.add_job(
            self._pass,
            IntervalTrigger(seconds=seconds, jitter=seconds * self._jitter or None, timezone=UTC),
            args=[job],
            id=job.name,
            next_run_time=datetime.now(UTC) if job.at_once else datetime.now(UTC) + job.interval,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            replace_existing=True,
        )

    async def _pass(self, job: Periodic) -> object:
        if job.leader_only and not self.leadership.is_leader:
            return None
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 (called from a task: narrows the type for mypy)
        self._running.add(task)
        try:
            with tracing.span(f"job {job.name}", {"keyferry.job": job.name}):
                return await job.job()
        except KeyferryError as error:  # the store or Vault away: the next pass tries again
            log.warning("periodic job failed", job=job.name, error=error.message)
            return None
        except Exception:  # a bug: logged in full; the next pass tries again
            log.exception("periodic job failed", job=job.name)
            return None
        finally:
            self._running.discard(task)

    async def _lead(self) -> None:
        was = self.leadership.is_leader
        try:
            await self.leadership.check()
        except Exception:  # a broken check loses the lead; the next one tries again
            log.exception("leadership check failed")
        now = self.leadership.is_leader
        if now == was:
            return
        log.info("leadership changed", leader=now)
        self._report(now)
        if now and self._scheduler is not None:
            for job in self.jobs:
                if job.leader_only and job.at_once:
                    self._scheduler.modify_job(job.name, next_run_time=datetime.now(UTC))

    def _report(self, leader: bool) -> None:
        if self._on_leadership is not None:
            self._on_leadership(leader)
