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
"""

from __future__ import annotations

import os
from pathlib import Path

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
