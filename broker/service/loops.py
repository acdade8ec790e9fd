"""The broker's periodic jobs on its own event loop: renewals and due revocations.

One replica for now, so each job simply runs every `interval`. With several replicas on
PostgreSQL one will lead the periodic jobs (the scheduler issue); the jobs are idempotent
already, so running one twice is wasted work, not harm. A job's failure is logged and the
next run tries again: a periodic job must never die with one bad pass.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta

import structlog

log = structlog.get_logger("keyferry.loops")


class Periodic:
    def __init__(
        self, name: str, interval: timedelta, job: Callable[[], Awaitable[object]]
    ) -> None:
        self.name = name
        self._interval = interval.total_seconds()
        self._job = job
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"keyferry-{self.name}")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._job()
            except Exception:  # logged; the next pass tries again
                log.exception("periodic job failed", job=self.name)
            await asyncio.sleep(self._interval)
