"""The broker's periodic jobs, as the scheduler (scheduler.py) runs them.

A job is a coroutine run every `interval`. `leader_only` jobs (revocations, the pod
sweep, JWKS refresh, audit checkpoints, reconcile, grant expiry) run on the one replica
that leads (leadership.py); the others run on every replica because they serve what that
replica holds (renewals of the pods whose Watch streams it serves, leadership itself).

Every job reads its due work from the lease table and every action on a lease is
idempotent, so a job that runs twice (two replicas in the moment a lead changes hands, a
retry after a crash) wastes work, never repeats an effect; and a new leader finds
whatever its predecessor left undone in the table, so nothing due is missed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

Job = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Periodic:
    name: str
    interval: timedelta
    job: Job
    leader_only: bool = True
    at_once: bool = True  # first run at start and on taking the lead; else after `interval`
