"""The broker as deployed: `keyferry broker serve` in its own host process (no pod, no CPU
limit), with its CPU time and resident set read from /proc. The scene's broker, the
footprint's and the soak's are all one of these."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import grpc
import yaml

from broker.settings import BrokerSettings, load_settings
from broker.store import Store
from tests.scene.admin_helpers import SECURITY, admin_channel

KEYFERRY = Path(sys.executable).parent / "keyferry"
TICKS = os.sysconf("SC_CLK_TCK")
READY = 60.0


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """The process's resident set (or `field` of /proc/<pid>/status: RssAnon, RssFile)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {field} for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (the machine is shared: say so)."""
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class BrokerProcess:
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int | None
    ca: Path
    log: Path
    config: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @cached_property
    def settings(self) -> BrokerSettings:
        return load_settings(self.config)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def store(self) -> Store:
        """The broker's store, opened from this process (as an operator's tool would)."""
        return Store.open(self.settings.store)

    def admin_channel(
        self, operator: str = SECURITY
    ) -> AbstractAsyncContextManager[grpc.aio.Channel]:
        return admin_channel(self.settings, self.admin_port, operator)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it lingers; the exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)


def broker_process(data: dict[str, Any], folder: Path, log_level: str = "warning") -> BrokerProcess:
    """`keyferry broker serve` with config `data` (changed in place: its own data dir, audit
    log and metrics port in `folder`; the store is the config's), logging at `log_level`
    to folder/broker.log."""
    folder.mkdir(parents=True)
    data["data_dir"] = str(folder / "data")
    data["audit"]["log"] = str(folder / "audit.jsonl")
    data["metrics"] = {"host": "127.0.0.1", "port": 0}
    config = folder / "broker.yaml"
    config.write_text(yaml.safe_dump(data))
    log = folder / "broker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(KEYFERRY), "broker", "serve", "--config", str(config), "--log-level", log_level],
            stdout=out,
            stderr=out,
        )
    deadline = time.monotonic() + READY
    while time.monotonic() < deadline:
        text = log.read_bytes()
        found = re.search(rb"workload listener on port (\d+)", text)
        admin = re.search(rb"admin listener on port (\d+)", text)
        if found and (admin or b"no admin listener" in text):
            ca = folder / "data" / "workload-tls" / "tls.crt"
            admin_port = int(admin.group(1)) if admin else None
            return BrokerProcess(process, int(found.group(1)), admin_port, ca, log, config)
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"broker did not start: {log.read_text()[-2000:]}")
