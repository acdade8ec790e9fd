"""A keyferry broker as its own process (`keyferry broker serve`), so a test can kill it
with SIGKILL and start it again on the same config, store and ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from broker.settings import BrokerSettings, load_settings
from tests.bed.ports import free_port

READY = "admin listener on port"
START_TIMEOUT = 60.0


class BrokerProcess:
    """One config, many lives: `start`, `kill` (SIGKILL, no goodbye), `start` again."""

    def __init__(self, data: dict[str, Any], folder: Path) -> None:
        data["workload"] = {"host": "127.0.0.1", "port": free_port()}
        data["admin"] = {**data["admin"], "port": free_port()}
        data["metrics"] = {"host": "127.0.0.1", "port": None}
        self.config = folder / "broker.yaml"
        self.config.write_text(yaml.safe_dump(data))
        self.settings: BrokerSettings = load_settings(self.config)
        self.folder = folder
        self.port: int = data["workload"]["port"]
        self.admin_port: int = data["admin"]["port"]
        self._process: subprocess.Popen[bytes] | None = None
        self._lives = 0

    @property
    def ca(self) -> Path:
        """The workload listener's generated certificate (kept in data_dir across lives)."""
        return self.settings.data_dir / "workload-tls" / "tls.crt"

    def start(self) -> None:
        self._lives += 1
        log = self.folder / f"broker-{self._lives}.log"
        keyferry = Path(sys.executable).parent / "keyferry"
        with log.open("wb") as out:
            self._process = subprocess.Popen(
                [str(keyferry), "broker", "serve", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while READY not in log.read_text(errors="replace"):
            if self._process.poll() is not None:
                raise AssertionError(f"the broker exited at start:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the broker did not start:\n{log.read_text()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no graceful stop, no final checkpoint, calls cut mid-way."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGKILL)
        self._process.wait(10)
        self._process = None

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        self._process = None
