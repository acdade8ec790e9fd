"""The node's network: one Linux bridge per bed, with an address pods reach the host by.

The bed creates the bridge before any server starts, so the servers pods must reach (the
API server of cluster a, PostgreSQL, ...) can listen on its address as well as on
127.0.0.1, never on 0.0.0.0. The CNI bridge plugin later attaches pods to this same bridge
(it finds it by name and keeps its address as the gateway). Each bed takes a free /24 in
POD_SUPERNET and names its bridge after its own pid, so beds side by side never share one,
and a bridge left by a bed that died is found by name and removed.

Nothing here leaves the machine: the bridge has no uplink and no route but its own subnet.
Creating it needs root (CAP_NET_ADMIN); without root the bed has no node network and every
server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import ServerUnavailable
from .gobuild import _locked

POD_SUPERNET = ipaddress.IPv4Network("10.244.0.0/16")
BRIDGE_PREFIX = "kfbed"  # + the bed's pid: at most 15 characters, the kernel's limit
LOCK = Path("/run/keyferry-bed-net.lock")


@dataclass(frozen=True)
class NodeNetwork:
    """A bridge `name` holding `address` (the pods' gateway) in the pod subnet `pod_cidr`."""

    name: str
    pod_cidr: str
    address: str

    def remove(self) -> None:
        _ip("link", "delete", self.name, check=False)

    def describe(self) -> str:
        return f"bridge {self.name} {self.address} (pod CIDR {self.pod_cidr})"

    def stop(self) -> None:
        self.remove()


def can_create() -> bool:
    return os.geteuid() == 0 and _which_ip()


def create_network() -> NodeNetwork:
    """Create this bed's bridge in a free /24 of POD_SUPERNET, up and addressed."""
    if not can_create():
        raise ServerUnavailable(
            "node network", "creating a bridge needs root and iproute2", "run the tests as root"
        )
    with _locked(LOCK):
        _remove_orphans()
        subnet = _free_subnet()
        name = f"{BRIDGE_PREFIX}{os.getpid()}"
        address = str(next(subnet.hosts()))
        _ip("link", "add", name, "type", "bridge")
        _ip("addr", "add", f"{address}/{subnet.prefixlen}", "dev", name)
        _ip("link", "set", name, "up")
    return NodeNetwork(name, str(subnet), address)


def _free_subnet() -> ipaddress.IPv4Network:
    used = [
        ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
        for link in json.loads(_ip("-j", "addr", "show"))
        for a in link.get("addr_info", [])
        if a.get("family") == "inet"
    ]
    for subnet in POD_SUPERNET.subnets(new_prefix=24):
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise ServerUnavailable(
        "node network", f"no free /24 left in {POD_SUPERNET}", "remove stale bridges"
    )


def _remove_orphans() -> None:
    """Delete bridges named BRIDGE_PREFIX<pid> whose bed process is gone."""
    for link in json.loads(_ip("-j", "link", "show")):
        name = str(link.get("ifname", ""))
        pid = name.removeprefix(BRIDGE_PREFIX)
        if name.startswith(BRIDGE_PREFIX) and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _ip("link", "delete", name, check=False)


def _which_ip() -> bool:
    return any(Path(d, "ip").exists() for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"))


def _ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise ServerUnavailable(
            "node network", f"`ip {' '.join(args)}` failed: {result.stderr.strip()}", "run as root"
        )
    return result.stdout
