"""`on-rotate: restart` as pure logic on virtual time: rotations coalesced into one restart,
restarts spaced (the second queued), SIGTERM then SIGKILL after the grace, the Ack only once
every container has a new main process, no Ack for an app that never comes back (reported
when the broker revokes the old lease at the grace), and the session's side: the file first,
the Ack from the restarter, a snapshot repeat of a waiting generation not Acked."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from pathlib import Path

import pytest

from injector.agent.backoff import Backoff
from injector.agent.client import Ack, Issued, Revoked, Rotated, WatchEvent
from injector.agent.log import capture as capture_logs
from injector.agent.procs import MainProcess, container_mains, started_at
from injector.agent.restarts import Restarter, RestartSchedule, Rotation
from injector.agent.session import AgentSession
from injector.agent.spec import RestartSpec

from .samples import issued, signal_spec

SPACING, COALESCE, GRACE = 660.0, 2.0, 5
TICKS = 100


def rotation(credential: str, generation: int) -> Rotation:
    return Rotation(
        credential, f"{credential}-{generation}", generation, f"{credential}-{generation - 1}"
    )


# --- the schedule (pure) ------------------------------------------------------------------


def test_rotations_within_the_window_make_one_batch() -> None:
    schedule = RestartSchedule(coalesce=COALESCE, spacing=SPACING)
    assert schedule.due_at() is None
    schedule.add(rotation("db", 2), now=100.0)
    schedule.add(rotation("cache", 2), now=101.5)
    assert schedule.due_at() == 102.0
    assert schedule.take(101.9) == ()
    assert schedule.take(102.0) == (rotation("db", 2), rotation("cache", 2))
    assert schedule.due_at() is None
    assert schedule.take(500.0) == ()


def test_a_newer_generation_replaces_the_queued_one() -> None:
    schedule = RestartSchedule(coalesce=COALESCE, spacing=SPACING)
    schedule.add(rotation("db", 2), now=0.0)
    schedule.add(rotation("db", 3), now=1.0)
    assert schedule.waiting("db-3", 3)
    assert not schedule.waiting("db-2", 2)
    assert schedule.take(2.0) == (rotation("db", 3),)


def test_the_next_restart_waits_for_the_spacing() -> None:
    schedule = RestartSchedule(coalesce=COALESCE, spacing=SPACING)
    schedule.add(rotation("db", 2), now=0.0)
    assert schedule.take(2.0)
    schedule.ended(3.0)
    schedule.add(rotation("db", 3), now=10.0)
    assert schedule.due_at() == 3.0 + SPACING
    assert schedule.take(12.0) == ()
    assert schedule.take(3.0 + SPACING - 0.001) == ()
    assert schedule.take(3.0 + SPACING) == (rotation("db", 3),)
    schedule.ended(700.0)
    schedule.add(rotation("db", 4), now=2000.0)  # long after: only the window
    assert schedule.due_at() == 2000.0 + COALESCE


# --- the restarter on virtual time ------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class FakePod:
    """Containers' main processes as the kubelet keeps them: one ended is started again
    `restart_after` seconds later as a new process in a new mount namespace."""

    def __init__(
        self,
        clock: Clock,
        names: Iterable[str],
        *,
        ignores_sigterm: bool = False,
        comes_back: bool = True,
        restart_after: float = 1.0,
    ) -> None:
        self.clock = clock
        self.next_pid = 10
        self.running = {name: self._new() for name in names}
        self.down: dict[str, float] = {}
        self.signals: list[tuple[str, int]] = []
        self.ignores_sigterm = ignores_sigterm
        self.comes_back = comes_back
        self.restart_after = restart_after
        self.polls_while_down = 0

    def _new(self) -> MainProcess:
        """A new main process; its mount namespace's number is the same each time, as the
        kernel reuses a freed one's: only the start tells instances apart."""
        self.next_pid += 1
        return MainProcess(self.next_pid, "mnt:[4026532249]", self.now())

    def now(self) -> int:
        return int(self.clock() * TICKS)

    def mains(self, names: Iterable[str]) -> dict[str, MainProcess]:
        for name, since in list(self.down.items()):
            if self.comes_back and self.clock() - since >= self.restart_after:
                del self.down[name]
                self.running[name] = self._new()
        if self.down:
            self.polls_while_down += 1
        return {name: main for name, main in self.running.items() if name in set(names)}

    def started_at(self, main: MainProcess) -> float:
        return main.started / TICKS  # the fake boot was at the epoch

    def kill(self, pid: int, signum: int) -> None:
        name = next(n for n, m in self.running.items() if m.pid == pid)
        self.signals.append((name, signum))
        if signum == signal.SIGKILL or not self.ignores_sigterm:
            del self.running[name]
            self.down[name] = self.clock()


def restarter(
    pod: FakePod, clock: Clock, acks: list[Ack], containers: tuple[str, ...] = ("app",)
) -> Restarter:
    spec = RestartSpec(
        containers=containers,
        grace_seconds=GRACE,
        coalesce_seconds=COALESCE,
        min_spacing_seconds=SPACING,
    )
    return Restarter(spec, acks.append, pod, clock=clock, sleep=clock.sleep)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never met")


async def test_two_rotations_together_make_one_restart_then_both_acks() -> None:
    clock = Clock()
    pod = FakePod(clock, ["app", "worker", "other"])
    acks: list[Ack] = []
    restarts = restarter(pod, clock, acks, ("app", "worker"))
    first = {name: pod.running[name].pid for name in ("app", "worker", "other")}
    running = asyncio.ensure_future(restarts.run())
    restarts.rotated(rotation("db", 2))
    clock.now += 1.0
    restarts.rotated(rotation("cache", 2))
    assert restarts.awaiting("db-2", 2)
    await until(lambda: len(acks) == 2)
    running.cancel()
    assert pod.signals == [("app", signal.SIGTERM), ("worker", signal.SIGTERM)]
    assert restarts.restarts == 1
    assert acks == [Ack("db-2", 2, ("app", "worker")), Ack("cache-2", 2, ("app", "worker"))]
    assert pod.running["other"].pid == first["other"]  # not named: untouched
    assert pod.running["app"].pid != first["app"]
    assert pod.polls_while_down > 0  # the Acks waited for the kubelet's restart
    assert not restarts.awaiting("db-2", 2)


async def test_an_app_that_ignores_sigterm_gets_sigkill_after_the_grace() -> None:
    clock = Clock()
    pod = FakePod(clock, ["app"], ignores_sigterm=True)
    acks: list[Ack] = []
    restarts = restarter(pod, clock, acks)
    running = asyncio.ensure_future(restarts.run())
    restarts.rotated(rotation("db", 2))
    with capture_logs() as logs:
        await until(lambda: len(acks) == 1)
    running.cancel()
    assert pod.signals == [("app", signal.SIGTERM), ("app", signal.SIGKILL)]
    killed = next(e for e in logs if e["event"] == "restart.killed")
    assert killed["grace_seconds"] == GRACE


async def test_a_second_rotation_is_queued_for_the_spacing() -> None:
    clock = Clock()
    pod = FakePod(clock, ["app"])
    acks: list[Ack] = []
    restarts = restarter(pod, clock, acks)
    running = asyncio.ensure_future(restarts.run())
    restarts.rotated(rotation("db", 2))
    await until(lambda: len(acks) == 1)
    ended = restarts.schedule.ended_at
    assert ended is not None
    restarts.rotated(rotation("db", 3))  # a minute later, say: far inside the spacing
    with capture_logs() as logs:
        assert restarts.revoked("db-2")  # its grace ended before the spacing did
    (late,) = [e for e in logs if e["event"] == "restart.queued_past_grace"]
    assert late["lease_id"] == "db-3"
    assert 0 < late["restart_in"] <= SPACING
    await until(lambda: len(pod.signals) == 2)
    second_term = clock.now
    await until(lambda: len(acks) == 2)
    running.cancel()
    assert second_term >= ended + SPACING
    assert acks[1] == Ack("db-3", 3, ("app",))
    assert restarts.restarts == 2


async def test_an_app_that_never_comes_back_is_never_acked_and_is_reported() -> None:
    clock = Clock()
    pod = FakePod(clock, ["app"], comes_back=False)
    acks: list[Ack] = []
    restarts = restarter(pod, clock, acks)
    running = asyncio.ensure_future(restarts.run())
    restarts.rotated(rotation("db", 2))
    with capture_logs() as logs:
        await until(lambda: clock.now > 1000.0 + 600)
        assert restarts.revoked("db-1")  # the broker's Revoked at the rotation's grace
        assert not restarts.revoked("other-lease")
    running.cancel()
    assert acks == []
    assert restarts.awaiting("db-2", 2)
    events = [e["event"] for e in logs]
    assert "restart.slow" in events
    report = next(e for e in logs if e["event"] == "restart.not_back")
    assert (report["previous_lease_id"], report["lease_id"]) == ("db-1", "db-2")


# --- finding the main process in /proc ------------------------------------------------------


def fake_proc(root: Path, pid: int, parent: int, namespace: str, started: int, env: str) -> None:
    folder = root / str(pid)
    (folder / "ns").mkdir(parents=True)
    (folder / "ns" / "mnt").symlink_to(f"mnt:[{namespace}]")
    fields = ["S", str(parent), *["0"] * 17, str(started), "0"]
    (folder / "stat").write_text(f"{pid} (sh) {' '.join(fields)}\n")
    (folder / "environ").write_bytes(b"PATH=/bin\0" + env.encode() + b"\0HOME=/\0")


def test_the_main_process_is_the_oldest_marked_one_with_a_parent_outside(tmp_path: Path) -> None:
    fake_proc(tmp_path, 1, 0, "pause", 1, "")
    fake_proc(tmp_path, 7, 0, "1", 50, "KEYFERRY_CONTAINER=app")  # app's main process
    fake_proc(tmp_path, 8, 7, "1", 51, "KEYFERRY_CONTAINER=app")  # its child
    fake_proc(tmp_path, 30, 0, "1", 90, "KEYFERRY_CONTAINER=app")  # kubectl exec, later
    fake_proc(tmp_path, 9, 0, "2", 60, "KEYFERRY_CONTAINER=worker")
    fake_proc(tmp_path, 10, 0, "3", 20, "KEYFERRY_CONTAINER=application")  # not a match
    fake_proc(tmp_path, 11, 0, "4", 10, "OTHER=KEYFERRY_CONTAINER=app")  # not a match
    found = container_mains(["app", "worker"], tmp_path)
    assert found == {
        "app": MainProcess(7, "mnt:[1]", 50),
        "worker": MainProcess(9, "mnt:[2]", 60),
    }
    assert container_mains(["absent"], tmp_path) == {}
    (tmp_path / "stat").write_text("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n")
    assert started_at(MainProcess(7, "mnt:[1]", 250), tmp_path) == 1700000000 + 250 / os.sysconf(
        "SC_CLK_TCK"
    )


# --- the session with a restarter -----------------------------------------------------------


class StreamBroker:
    """Sends its events, then holds the stream open and collects the Acks."""

    def __init__(self, events: list[WatchEvent], current: Issued | None = None) -> None:
        self.events = events
        self.current = current or issued(1, "one", lease="db-1")
        self.acks: list[Ack] = []

    async def issue(self, credential_name: str, role: str) -> Issued:
        return self.current

    async def release(self, lease_id: str) -> None:
        return None

    async def watch(self, acks: asyncio.Queue[Ack]) -> AsyncIterator[WatchEvent]:
        for event in self.events:
            yield event
        while True:
            self.acks.append(await acks.get())


def restarting_session(
    tmp_path: Path, broker: StreamBroker, pod: FakePod, clock: Clock
) -> AgentSession:
    restart = RestartSpec(containers=("app",), grace_seconds=GRACE)
    spec = replace(signal_spec(tmp_path), on_rotate=None, restart=restart)
    session = AgentSession(spec, broker, backoff=Backoff(base=0.001, cap=0.002))
    assert session.restarter is not None
    session.restarter.processes = pod
    session.restarter.clock = clock
    session.restarter.sleep = clock.sleep
    return session


@pytest.mark.parametrize("repeat", [False, True])
async def test_the_session_writes_first_and_acks_only_after_the_restart(
    tmp_path: Path, repeat: bool
) -> None:
    one, two = issued(1, "one", lease="db-1"), issued(2, "two", lease="db-2")
    events: list[WatchEvent] = [Rotated(issued=one), Rotated(issued=two)]
    if repeat:  # the generation repeated (a reconnect's snapshot) while its restart waits
        events.append(Rotated(issued=two))
    events.append(Revoked(lease_id="db-1", reason="rotated"))
    broker = StreamBroker(events)
    clock = Clock()
    pod = FakePod(clock, ["app"], restart_after=30.0)
    session = restarting_session(tmp_path, broker, pod, clock)
    await session.start()
    holding = asyncio.ensure_future(session.hold())
    await until(lambda: (tmp_path / "db").read_text() == "user='u' password='two'\n")
    assert broker.acks == [Ack("db-1", 1)]  # the snapshot only: the restart has not run
    assert pod.signals == []
    await until(lambda: len(broker.acks) == 2)
    holding.cancel()
    assert pod.signals == [("app", signal.SIGTERM)]
    assert broker.acks == [Ack("db-1", 1), Ack("db-2", 2, ("app",))]


@pytest.mark.parametrize(("written", "restarted"), [(500.0, False), (2000.0, True)])
async def test_a_restarted_agent_restarts_an_app_older_than_its_files(
    tmp_path: Path, written: float, restarted: bool
) -> None:
    """The predecessor wrote generation 2 (at `written`) and died before restarting the app,
    whose main process started at 1000 s. Written before the app started: no
    restart, the snapshot is Acked; after: restarted, then Acked."""
    (tmp_path / "db").write_text("user='u' password='two'\n")
    os.utime(tmp_path / "db", (written, written))
    clock = Clock()
    pod = FakePod(clock, ["app"])
    two = issued(2, "two", lease="db-2")
    broker = StreamBroker([Rotated(issued=two)], current=two)
    pod.running["app"] = MainProcess(11, "mnt:[1]", 1000 * TICKS)  # started at 1000 s
    session = restarting_session(tmp_path, broker, pod, clock)
    await session.start()
    holding = asyncio.ensure_future(session.hold())
    await until(lambda: len(broker.acks) == 1)
    holding.cancel()
    if restarted:
        assert pod.signals == [("app", signal.SIGTERM)]
        assert broker.acks == [Ack("db-2", 2, ("app",))]
    else:
        assert pod.signals == []
        assert broker.acks == [Ack("db-2", 2)]
