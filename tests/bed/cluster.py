"""What every bed cluster offers, whichever provider started it: access as admin and readiness.

`KubeCluster` (kube.py, API server + controller manager as local processes) and
`K3sCluster` (k3s.py, a k3s container) both derive from `Cluster`: the same kubeconfig
layout (one context named after the cluster, the admin certificate by file path), the same
clients (Python, kubectl, helm) and the same readiness probes.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client import ApiException

from .errors import BedError
from .gobuild import HELM, KUBERNETES
from .pki import KeyPair
from .readiness import Runner

ADMIN_USER = "keyferry-bed-admin"
START_TIMEOUT = 120.0
TOOL_TIMEOUT = 120.0


class ToolFailed(BedError):
    """kubectl or helm exited non-zero; its output is in the message."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        super().__init__(f"`{' '.join(argv)}` exited with {returncode}:\n{output[-4000:]}")
        self.returncode = returncode
        self.output = output


@dataclass
class Cluster(ABC):
    """A running cluster as the bed hands it out; its API server listens on host:port."""

    name: str
    host: str  # the address the API server listens on: 127.0.0.1, or the node's (node.py)
    port: int
    issuer: str
    api_audiences: tuple[str, ...]
    folder: Path
    ca_path: Path
    kubeconfig: Path
    admin: KeyPair
    _ssl: ssl.SSLContext | None = field(default=None, init=False, repr=False)

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.port}"

    def api_client(self) -> Any:
        """A fresh `kubernetes.client.ApiClient` for the admin user, from the kubeconfig."""
        return k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig), context=self.name
        )

    def get(self, path: str, timeout: float = 5.0) -> bytes:
        """GET a raw API path as the admin user (for /readyz, /openid/v1/jwks, ...)."""
        request = urllib.request.Request(self.server + path)  # noqa: S310 (loopback https)
        with urllib.request.urlopen(request, timeout=timeout, context=self._context()) as response:  # noqa: S310 (loopback https)
            body: bytes = response.read()
            return body

    def jwks(self) -> dict[str, Any]:
        keys: dict[str, Any] = json.loads(self.get("/openid/v1/jwks"))
        return keys

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """Run the built kubectl against this cluster and return its stdout."""
        cache = self.folder / "kubectl-cache"
        argv = [str(KUBERNETES.binary("kubectl")), f"--kubeconfig={self.kubeconfig}"]
        return _tool([*argv, f"--cache-dir={cache}", *args], self._tool_env(), stdin)

    def helm(self, *args: str, stdin: str | None = None) -> str:
        """Run the built helm with this cluster's kubeconfig and a private helm home."""
        return _tool([str(HELM.binary("helm")), *args], self._tool_env(), stdin)

    def ready(self) -> bool:
        return self.get("/readyz") == b"ok"

    def has_default_service_account(self) -> bool:
        with self.api_client() as api:
            try:
                k8s.CoreV1Api(api).read_namespaced_service_account("default", "default")
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
        return True

    def wait_serving(self, runner: Runner, timeout: float = START_TIMEOUT) -> None:
        """Wait, on `runner`, for the API server's /readyz."""
        runner.wait_until(self.ready, "ready (/readyz)", timeout)

    def wait_default_service_account(self, runner: Runner, timeout: float = START_TIMEOUT) -> None:
        """Wait, on `runner`, for the controllers to create ServiceAccount default/default."""
        runner.wait_until(
            self.has_default_service_account,
            "creating the default ServiceAccount in namespace default",
            timeout,
        )

    @abstractmethod
    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Block until the cluster serves and its controllers run."""

    def describe(self) -> str:
        return f"{self.server} issuer={self.issuer} kubeconfig={self.kubeconfig}"

    @abstractmethod
    def stop(self) -> None:
        """Stop what runs this cluster (its processes or its container)."""

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context(cafile=str(self.ca_path))
            context.load_cert_chain(str(self.admin.cert), str(self.admin.key))
            self._ssl = context
        return self._ssl

    def _tool_env(self) -> dict[str, str]:
        home = self.folder / "tool-home"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "HELM_"))}
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            HOME=str(home),
            HELM_CACHE_HOME=str(home / "helm-cache"),
            HELM_CONFIG_HOME=str(home / "helm-config"),
            HELM_DATA_HOME=str(home / "helm-data"),
        )
        return env


def write_kubeconfig(path: Path, name: str, server: str, ca: Path, admin: KeyPair) -> None:
    """A kubeconfig (JSON is valid YAML) whose only context is named after the cluster."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [
            {
                "name": ADMIN_USER,
                "user": {"client-certificate": str(admin.cert), "client-key": str(admin.key)},
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": ADMIN_USER}}],
        "current-context": name,
        "preferences": {},
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


def _tool(argv: Sequence[str], env: Mapping[str, str], stdin: str | None) -> str:
    result = subprocess.run(
        list(argv),
        input=stdin,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise ToolFailed(argv, result.returncode, result.stdout + result.stderr)
    return result.stdout
