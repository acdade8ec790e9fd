"""One etcd for all of the bed's Kubernetes clusters (each keeps its data under its own prefix)."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass

from .gobuild import ETCD
from .ports import LOOPBACK, free_port
from .process import ManagedProcess
from .workspace import Workspace

ETCD_VERSION = "v3.6.6"


@dataclass
class EtcdServer:
    client_port: int
    peer_port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.client_port}"

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:  # noqa: S310 (loopback http)
            body = json.load(response)
        return bool(body.get("health") == "true")

    def version(self) -> str:
        with urllib.request.urlopen(f"{self.url}/version", timeout=2) as response:  # noqa: S310 (loopback http)
            return f"v{json.load(response)['etcdserver']}"

    def describe(self) -> str:
        return f"{self.url} (etcd {ETCD_VERSION}, single member, no fsync)"

    def stop(self) -> None:
        self.process.stop()


def start_etcd(ws: Workspace, name: str = "etcd") -> EtcdServer:
    binary = ETCD.binary("etcd")
    data = ws.folder(name) / "data"
    client_port, peer_port = free_port(), free_port()
    client_url = f"http://{LOOPBACK}:{client_port}"
    peer_url = f"http://{LOOPBACK}:{peer_port}"
    process = ManagedProcess(
        name,
        [
            str(binary),
            "--name=bed",
            f"--data-dir={data}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=bed={peer_url}",
            "--initial-cluster-state=new",
            # A throw-away store: durability buys nothing here and fsync slows every write.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        ws.log(name),
    )
    server = EtcdServer(client_port, peer_port, process)
    process.start()
    process.wait_until(server.healthy, "healthy")
    return server
