"""What the node changes outside its workspace, and how the bed undoes it when it stops.

The kubelet and kube-proxy write `KUBE-*` chains into the machine's iptables (one drops
non-loopback traffic to 127.0.0.0/8); the kubelet links each container's log under
/var/log/containers and makes `kubepods` cgroups; the kubelet ("kernel tunables") and the
CNI bridge plugin (forwarding, for a gateway) change kernel settings. One node runs per
machine (node.py's lock), so the `KUBE-*` chains and `kubepods` cgroups are this node's.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

CONTAINER_LOGS = Path("/var/log/containers")  # the kubelet's links, a fixed path
CGROUPS = Path("/sys/fs/cgroup")
KUBEPODS = "kubepods"  # the kubelet's cgroup (cgroupfs driver) in each hierarchy
# Saved before the node starts, put back when it stops.
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
)


def remove_kube_chains() -> None:
    """Remove the KUBE-* chains the kubelet and kube-proxy made, and the rules jumping to
    them, in every table of iptables and ip6tables."""
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            for chain in _kube_chains(tool, table):
                quiet([tool, "-t", table, "-F", chain])
            for rule in _rules_jumping_to_kube(tool, table):
                quiet([tool, "-t", table, "-D", *rule])
            for chain in _kube_chains(tool, table):
                quiet([tool, "-t", table, "-X", chain])


def _kube_chains(tool: str, table: str) -> list[str]:
    listing = _output([tool, "-t", table, "-S"])
    return [line.split()[1] for line in listing if line.startswith("-N KUBE-")]


def _rules_jumping_to_kube(tool: str, table: str) -> Iterator[list[str]]:
    for line in _output([tool, "-t", table, "-S"]):
        words = line.split()
        jumps_to = words[words.index("-j") + 1] if "-j" in words else ""
        if words[:1] == ["-A"] and jumps_to.startswith("KUBE-"):
            yield shlex.split(line)[1:]  # comments are quoted


def _output(argv: list[str]) -> list[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    return result.stdout.splitlines() if result.returncode == 0 else []


def quiet(argv: list[str]) -> None:
    subprocess.run(argv, capture_output=True, check=False, timeout=60)


def remove_log_links(pod_logs: Path) -> None:
    """The kubelet links each container's log in /var/log/containers; remove ours."""
    with contextlib.suppress(OSError):
        for link in CONTAINER_LOGS.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(str(pod_logs)):
                    link.unlink()


def read_sysctls() -> dict[str, str]:
    values = {}
    for name in SYSCTLS:
        with contextlib.suppress(OSError):
            values[name] = Path("/proc/sys", name).read_text().strip()
    return values


def write_sysctls(values: dict[str, str]) -> None:
    for name, value in values.items():
        with contextlib.suppress(OSError):
            path = Path("/proc/sys", name)
            if path.read_text().strip() != value:
                path.write_text(value + "\n")


def remove_kubepods_cgroups() -> None:
    """Remove the kubelet's `kubepods` cgroups, deepest first, once their pods are gone
    (a cgroup that still holds a process is left alone: rmdir refuses it)."""
    for top in CGROUPS.glob(f"*/{KUBEPODS}"):
        folders = [p for p in top.rglob("*") if p.is_dir()]
        for folder in [*sorted(folders, key=lambda p: len(p.parts), reverse=True), top]:
            with contextlib.suppress(OSError):
                folder.rmdir()
