"""Finding the app's processes from the sidecar, to signal them after a rotation.

With `shareProcessNamespace: true` every container of the pod sees every process of the pod
in /proc. PID 1 is the pod's pause process. Each container has its own mount namespace
(`/proc/<pid>/ns/mnt`), so the agent tells containers apart by that link: the app's main
processes are those in a mount namespace other than the agent's whose parent is not in the
same namespace (each container's first process; its children are left to it, as with
`docker kill`). The agent's own namespace is skipped, so its probes (`python3 -I -m
injector.probe`) are never signalled. Reading another process's `ns/mnt` needs the same UID,
which the webhook guarantees when `on-rotate: signal:…` is accepted (the agent runs as the
app's UID; without CAP_KILL it could not signal another UID anyway).

`on-rotate: restart` needs one container's main process, not every container's: the webhook
marks each restartable container with `KEYFERRY_CONTAINER=<name>` in its environment, and
`container_mains` finds it by that entry in /proc/<pid>/environ (readable under the same
rule as `ns/mnt`). An environment variable, rather than /proc/<pid>/cgroup (which, with a
cgroup namespace, shows only `/`) or the container ID (which only the API knows), needs no
API token and survives restarts: every instance of the container gets it again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from injector.terms import RESTART_MARKER_ENV

PROC = Path("/proc")


def app_processes(proc: Path = PROC, self_pid: int | None = None) -> list[int]:
    """The PIDs of the other containers' main processes, ascending."""
    me = self_pid if self_pid is not None else os.getpid()
    own = _mount_namespace(proc, me)
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in (1, me):
            continue
        pid = int(entry.name)
        namespace = _mount_namespace(proc, pid)
        if namespace is None or namespace == own:
            continue
        parent = _parent(proc, pid)
        if parent is None or _mount_namespace(proc, parent) != namespace:
            found.append(pid)
    return sorted(found)


def _mount_namespace(proc: Path, pid: int) -> str | None:
    try:
        return os.readlink(proc / str(pid) / "ns" / "mnt")
    except OSError:  # gone, or another UID's process
        return None


def _parent(proc: Path, pid: int) -> int | None:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


@dataclass(frozen=True)
class MainProcess:
    """One container instance's main process, as the agent sees it in the shared PID namespace."""

    pid: int
    namespace: str
    """The instance's mount namespace. Not an identity over time: the kernel gives a new
    namespace the inode number of one just freed, so a restarted container's is often the
    same; an instance is told by its main process's start (`started`)."""
    started: int
    """Start time in clock ticks after boot (/proc/<pid>/stat field 22)."""


def container_mains(names: Iterable[str], proc: Path = PROC) -> dict[str, MainProcess]:
    """The main process of each app container named, by the marker the webhook put in its
    environment (`KEYFERRY_CONTAINER=<name>`, read from /proc/<pid>/environ), for those running.

    A container's processes all carry the marker, and so do the processes `kubectl exec` and
    exec probes start in it, whose parent is outside the container as the main process's is.
    So the main process is the oldest process with the marker whose parent is in another
    mount namespace (the shim's, outside the pod, shows as parent 0)."""
    wanted = {f"{RESTART_MARKER_ENV}={name}".encode(): name for name in names}
    found: dict[str, MainProcess] = {}
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in (1, me):
            continue
        pid = int(entry.name)
        name = _marker(proc, pid, wanted)
        if name is None:
            continue
        namespace = _mount_namespace(proc, pid)
        stat = _stat(proc, pid)
        if namespace is None or stat is None:
            continue
        parent, started = stat
        if _mount_namespace(proc, parent) == namespace:
            continue  # a child: the container's main process (or an exec) is its ancestor
        current = found.get(name)
        if current is None or started < current.started:
            found[name] = MainProcess(pid, namespace, started)
    return found


def started_at(main: MainProcess, proc: Path = PROC) -> float:
    """When `main` started, in seconds since the epoch (boot time plus its start ticks)."""
    boot = next(
        int(line.split()[1])
        for line in (proc / "stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return boot + main.started / os.sysconf("SC_CLK_TCK")


def boot_ticks() -> int:
    """Now, in the clock ticks after boot that /proc/<pid>/stat's start time counts."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))


def _marker(proc: Path, pid: int, wanted: dict[bytes, str]) -> str | None:
    try:
        environ = (proc / str(pid) / "environ").read_bytes()
    except OSError:  # gone, or another UID's process
        return None
    for entry in environ.split(b"\0"):
        if entry in wanted:
            return wanted[entry]
    return None


def _stat(proc: Path, pid: int) -> tuple[int, int] | None:
    """(parent PID, start time in ticks)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state)
    return int(fields[1]), int(fields[19])
