"""Rotations and revocations the console started: each runs as a task on the server's
event loop, reading the broker's stream, and its progress is kept for the job's page
(which reloads itself until the job ends). At most MAX_JOBS are kept, the oldest dropped."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

from broker.api.v1 import rotation_pb2

from .admin import AdminClient, Refused

MAX_JOBS = 20
OUTCOMES = {
    rotation_pb2.OUTCOME_PLANNED: "planned",
    rotation_pb2.OUTCOME_ROTATED: "rotated",
    rotation_pb2.OUTCOME_ALREADY_ROTATED: "already rotated",
    rotation_pb2.OUTCOME_REVOKED: "revoked",
    rotation_pb2.OUTCOME_QUEUED: "queued for retry",
    rotation_pb2.OUTCOME_FAILED: "failed",
}


def outcome_row(event: rotation_pb2.LeaseOutcome) -> dict[str, Any]:
    lease = event.lease
    return {
        "lease": lease.id,
        "cluster": lease.cluster,
        "namespace": lease.namespace,
        "pod": lease.pod,
        "role": lease.role,
        "generation": lease.generation,
        "outcome": OUTCOMES.get(event.outcome, "unknown"),
        "successor": event.successor.id if event.HasField("successor") else "",
        "error": event.error,
    }


@dataclass
class Job:
    verb: str
    selector: str
    ident: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    matched: int | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, int] | None = None
    error: str | None = None
    finished: bool = False


class Jobs:
    def __init__(self, admin: AdminClient) -> None:
        self._admin = admin
        self._jobs: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, ident: str) -> Job | None:
        return self._jobs.get(ident)

    def start(self, verb: str, selector: rotation_pb2.LeaseSelector, described: str) -> Job:
        job = Job(verb, described)
        self._jobs[job.ident] = job
        while len(self._jobs) > MAX_JOBS:
            self._jobs.pop(next(iter(self._jobs)))
        task = asyncio.get_running_loop().create_task(self._run(job, selector))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(self, job: Job, selector: rotation_pb2.LeaseSelector) -> None:
        try:
            async for event in self._admin.selected(job.verb, selector, dry_run=False):
                kind = event.WhichOneof("event")
                if kind == "plan":
                    job.matched = event.plan.matched
                elif kind == "lease":
                    job.rows.append(outcome_row(event.lease))
                elif kind == "summary":
                    s = event.summary
                    job.summary = {
                        "matched": s.matched,
                        "done": s.done,
                        "failed": s.failed,
                        "pending": s.pending,
                    }
        except Refused as refusal:
            job.error = refusal.message
        finally:
            job.finished = True

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
