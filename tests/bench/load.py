"""Load processes: the benchmark's keyferry clients and its direct-hvac baseline run here,
never in the process that started the broker (which runs as `keyferry broker serve`).

`python -m tests.bench.load` is one load process. It reads one job a line on stdin (JSON,
`Job`), warms up (channels, TLS, first calls), prints `ready`, waits for a `go` line, runs
the timed part and prints what it measured (`Done`). `LoadPool` starts a few of these,
splits a job's pods or workers over them, starts them together and reads the broker
process's CPU time around the timed part.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import TracebackType
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter

from tests.scene.kube_helpers import BoundToken

from .served import BrokerProcess
from .workloads import Run, db_creds_and_revoke, direct, keyferry_issue_release, kv_read

WORKERS_PER_PROCESS = 16
MAX_PROCESSES = 4
READY, GO = "ready", "go"
ROOT = Path(__file__).parents[2]


class KeyferryJob(BaseModel):
    """Issue→Release through the broker's workload listener, one pod per channel."""

    kind: Literal["keyferry"] = "keyferry"
    port: int
    ca: Path
    tokens: list[BoundToken]
    per_worker: int
    role: str
    credential: str


class DirectJob(BaseModel):
    """The same credential straight from Vault with hvac, one client per worker thread."""

    kind: Literal["direct"] = "direct"
    vault_addr: str
    vault_token: str
    workers: int
    per_worker: int
    step: Literal["kv_read", "db_creds_and_revoke"]
    mount: str
    target: str  # the KV path, or the Vault database role


Job = Annotated[KeyferryJob | DirectJob, Field(discriminator="kind")]
JOB: TypeAdapter[KeyferryJob | DirectJob] = TypeAdapter(Job)


class Done(BaseModel):
    total: list[float]
    first: list[float]
    errors: int
    started: float
    ended: float


def processes_for(concurrency: int) -> int:
    return max(1, min(MAX_PROCESSES, -(-concurrency // WORKERS_PER_PROCESS)))


def _split(count: int, parts: int) -> list[int]:
    return [count // parts + (1 if i < count % parts else 0) for i in range(parts)]


# --- one load process ------------------------------------------------------------------------


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _execute(job: KeyferryJob | DirectJob) -> Run:
    if isinstance(job, KeyferryJob):

        async def gate() -> None:
            _say(READY)
            await asyncio.to_thread(sys.stdin.readline)

        return await keyferry_issue_release(
            job.port, job.ca, job.tokens, job.per_worker, job.role, job.credential, gate
        )

    def sync_gate() -> None:
        _say(READY)
        sys.stdin.readline()

    step = (
        kv_read(job.mount, job.target)
        if job.step == "kv_read"
        else db_creds_and_revoke(job.mount, job.target)
    )
    return await asyncio.to_thread(
        direct, job.vault_addr, job.vault_token, job.workers, job.per_worker, step, sync_gate
    )


async def _serve() -> None:
    while line := await asyncio.to_thread(sys.stdin.readline):
        run = await _execute(JOB.validate_json(line))
        done = Done(
            total=run.total,
            first=run.first,
            errors=run.errors,
            started=run.started,
            ended=run.ended,
        )
        _say(done.model_dump_json())


# --- the pool, in the benchmark's process ----------------------------------------------------


class LoadPool:
    """`size` load processes; each run starts them together and watches `broker`'s CPU."""

    def __init__(self, size: int, broker: BrokerProcess) -> None:
        self.size = size
        self.broker = broker
        self._processes: list[asyncio.subprocess.Process] = []

    async def __aenter__(self) -> LoadPool:
        for _ in range(self.size):
            self._processes.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "tests.bench.load",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    cwd=ROOT,
                )
            )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for process in self._processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in self._processes:
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()

    async def keyferry(
        self, tokens: list[BoundToken], per_worker: int, role: str, credential: str
    ) -> Run:
        """Issue→Release from every pod in `tokens`, the pods spread over the processes."""
        broker, parts = self.broker, min(self.size, len(tokens))
        shares = _split(len(tokens), parts)
        jobs: list[KeyferryJob | DirectJob] = []
        begin = 0
        for share in shares:
            chunk = tokens[begin : begin + share]
            begin += share
            jobs.append(
                KeyferryJob(
                    port=broker.port,
                    ca=broker.ca,
                    tokens=chunk,
                    per_worker=per_worker,
                    role=role,
                    credential=credential,
                )
            )
        return await self.run(jobs)

    async def direct(
        self,
        vault_addr: str,
        vault_token: str,
        workers: int,
        per_worker: int,
        step: Literal["kv_read", "db_creds_and_revoke"],
        mount: str,
        target: str,
    ) -> Run:
        """The direct baseline with `workers` hvac clients spread over the processes."""
        jobs: list[KeyferryJob | DirectJob] = [
            DirectJob(
                vault_addr=vault_addr,
                vault_token=vault_token,
                workers=share,
                per_worker=per_worker,
                step=step,
                mount=mount,
                target=target,
            )
            for share in _split(workers, min(self.size, workers))
        ]
        return await self.run(jobs)

    async def run(self, jobs: list[KeyferryJob | DirectJob]) -> Run:
        """Each job to its own process; once all are warm, go together; the joined run."""
        working = self._processes[: len(jobs)]
        for process, job in zip(working, jobs, strict=True):
            self._send(process, job.model_dump_json())
        for process in working:
            await self._expect(process, READY)
        cpu = self.broker.cpu_seconds()
        for process in working:
            self._send(process, GO)
        dones = [Done.model_validate_json(await self._line(process)) for process in working]
        run = Run(broker_cpu=self.broker.cpu_seconds() - cpu)
        for done in dones:
            run.total += done.total
            run.first += done.first
            run.errors += done.errors
        run.started = min(d.started for d in dones)
        run.ended = max(d.ended for d in dones)
        run.wall = run.ended - run.started
        return run

    @staticmethod
    def _send(process: asyncio.subprocess.Process, line: str) -> None:
        assert process.stdin is not None
        process.stdin.write(line.encode() + b"\n")

    async def _line(self, process: asyncio.subprocess.Process) -> str:
        assert process.stdout is not None
        line = await process.stdout.readline()
        if not line:
            code = await process.wait()
            raise RuntimeError(f"a load process exited ({code}) mid-run: its error is above")
        return line.decode().strip()

    async def _expect(self, process: asyncio.subprocess.Process, wanted: str) -> None:
        line = await self._line(process)
        if line != wanted:
            raise RuntimeError(f"a load process said {line[:200]!r}, not {wanted!r}")


if __name__ == "__main__":
    asyncio.run(_serve())
