"""The testcontainers provider's side of a Docker engine: pinned images, the engine check,
and `ContainerRunner`, a container behind the same `Runner` interface as a local process.

None of this runs on this project's machines or on CI: they have no Docker engine.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from testcontainers.core.container import DockerContainer
from testcontainers.core.docker_client import DockerClient

from .errors import ServerUnavailable
from .readiness import DEFAULT_START_TIMEOUT, DEFAULT_STOP_TIMEOUT, poll_until

# The images, in one place. Each matches the version the process provider runs; none has
# been pulled here (no engine), so the tags are unverified on this project's machines.
POSTGRES_IMAGE = "postgres:15"
MARIADB_IMAGE = "mariadb:10.11"
VAULT_IMAGE = "hashicorp/vault:1.13.2"
MOTO_IMAGE = "motoserver/moto:5.2.5"
# The k3s release of the Kubernetes version the bed builds (v1.34.4); unverified here.
K3S_IMAGE = "rancher/k3s:v1.34.4-k3s1"

ENGINE_TIMEOUT = 10  # seconds for the engine to answer a ping
NO_ENGINE_FIX = (
    "start a Docker engine on this machine (or point DOCKER_HOST at one), or unset "
    "KEYFERRY_BED_PROVIDER to run the servers as local processes"
)


def require_engine() -> None:
    """Return when a Docker engine answers; else raise ServerUnavailable saying none does."""
    try:
        client = DockerClient(timeout=ENGINE_TIMEOUT)  # testcontainers' own client
        try:
            client.client.ping()
        finally:
            client.client.close()
    except Exception as exc:  # docker raises DockerException, requests' errors, OSError, ...
        raise ServerUnavailable(
            "Docker engine",
            "KEYFERRY_BED_PROVIDER=containers, but no Docker engine answers "
            f"({type(exc).__name__}: {exc})",
            NO_ENGINE_FIX,
        ) from exc


def host_network(container: DockerContainer) -> DockerContainer:
    """Share the host's network: the server listens on 127.0.0.1:<free port> as a process does.

    So every address the bed hands out is the same in both providers, and a Vault container
    reaches the PostgreSQL, MariaDB and moto containers at 127.0.0.1 (Linux engines).
    """
    return container.with_kwargs(network_mode="host")


@dataclass
class ContainerRunner:
    """One container the bed started, with ManagedProcess's start/stop/kill/wait_until."""

    name: str
    container: DockerContainer
    log_path: Path
    created: bool = field(default=False, init=False)

    def start(self) -> None:
        """Create and start the container; after `stop()`, start the same container again."""
        if self.created:
            self.container.get_wrapped_container().start()
        else:
            self.created = True
            self.container.start()

    def running(self) -> bool:
        if not self.created:
            return False
        wrapped = self.container.get_wrapped_container()
        wrapped.reload()
        return bool(wrapped.status == "running")

    def wait_until(
        self,
        healthy: Callable[[], bool],
        what: str,
        timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        """Poll `healthy` until true; fail with the log tail if the container ends first."""
        poll_until(self.name, healthy, what, timeout, ended=self._ended, log_tail=self.log_tail)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT, sig: int = signal.SIGTERM) -> None:
        """Send `sig` to the container's main process, then SIGKILL it if it lingers."""
        if not self.running():
            return
        wrapped = self.container.get_wrapped_container()
        wrapped.kill(signal=int(sig))
        try:
            wrapped.wait(timeout=timeout)
        except Exception:  # the engine's wait timed out
            if self.running():
                wrapped.kill(signal=int(signal.SIGKILL))
                wrapped.wait(timeout=timeout)

    def kill(self) -> None:
        """kill -9, for crash tests."""
        self.stop(sig=signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            logs: bytes = self.container.get_wrapped_container().logs(tail=lines)
        except Exception:
            return ""
        return logs.decode(errors="replace")

    def remove(self) -> None:
        """Save the container's log to `log_path`, then remove it and its anonymous volumes."""
        if not self.created:
            return
        with contextlib.suppress(Exception):  # a container that never got created has no log
            logs: bytes = self.container.get_wrapped_container().logs()
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_bytes(logs)
        self.created = False
        self.container.stop()  # testcontainers: remove, forced, with volumes

    def _ended(self) -> str | None:
        if self.running():
            return None
        if not self.created:
            return "not started"
        state = self.container.get_wrapped_container().attrs.get("State", {})
        return f"container {state.get('Status', 'gone')} (exit code {state.get('ExitCode')})"
