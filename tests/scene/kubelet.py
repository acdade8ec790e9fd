"""The kubelet's part, played honestly for pods no node will ever run.

Given a pod as the API server stored it (after every mutating webhook), `PodRunner`:

- makes each volume: an `emptyDir` is a fresh directory (mode 0777, or group `fsGroup` with
  the setgid bit, as the kubelet does); a projected `serviceAccountToken` is minted with the
  TokenRequest API, bound to this pod (name and UID), for the audience and expiry the
  volume source names, written at the source's `path`, and minted again at 80 % of its
  lifetime (the kubelet's rule). Other projected sources (the API server's root CA, the
  namespace) are not needed by keyferry and not materialised; any other volume kind is an
  error, so a test never silently runs a pod it cannot model.
- runs a container as a local process from nothing but the pod's JSON: its `command` and
  `args` (`keyferry` resolves to the venv's console script through PATH), its `env`
  (literal values only), its `volumeMounts` (bound at their `mountPath` inside a private
  mount namespace, read-only when asked) and its user (`runAsUser`/`runAsGroup` of the
  container, else of the pod, with `fsGroup` as a supplemental group). See launch.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from tests.bed.kube import KubeCluster

LAUNCH = Path(__file__).with_name("launch.py")
VENV_BIN = Path(sys.executable).parent
REFRESH_AT = 0.8


class PodSpecUnsupported(Exception):
    """The pod needs something this harness does not model (a volume kind, env from a ref)."""


@dataclass
class PodRunner:
    cluster: KubeCluster
    pod: dict[str, Any]
    root: Path
    volumes: dict[str, Path] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    token_writes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _refresher: threading.Thread | None = None

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    def container(self, name: str) -> dict[str, Any]:
        spec = self.pod["spec"]
        for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
            if container["name"] == name:
                return dict(container)
        raise KeyError(f"pod {self.name} has no container {name}")

    # --- volumes ----------------------------------------------------------------------------

    def prepare_volumes(self) -> None:
        tokens: list[tuple[Path, dict[str, Any]]] = []
        fs_group = (self.pod["spec"].get("securityContext") or {}).get("fsGroup")
        for volume in self.pod["spec"].get("volumes") or []:
            folder = self.root / "volumes" / volume["name"]
            folder.mkdir(parents=True)
            self.volumes[volume["name"]] = folder
            if "emptyDir" in volume:
                folder.chmod(0o777)
                if fs_group is not None:
                    os.chown(folder, -1, fs_group)
                    folder.chmod(0o2777)
            elif "projected" in volume:
                folder.chmod(0o755)
                for source in volume["projected"]["sources"]:
                    if "serviceAccountToken" in source:
                        tokens.append((folder, source["serviceAccountToken"]))
            else:
                raise PodSpecUnsupported(f"volume {volume['name']}: {sorted(volume)}")
        for folder, source in tokens:
            self._write_token(folder, source)
        if tokens:
            self._refresher = threading.Thread(
                target=self._refresh, args=(tokens,), name=f"tokens-{self.name}", daemon=True
            )
            self._refresher.start()

    def _write_token(self, folder: Path, source: dict[str, Any]) -> float:
        """Mint and write one projected token; its lifetime in seconds."""
        seconds = int(source.get("expirationSeconds", 3600))
        audiences = [source["audience"]] if source.get("audience") else None
        request = k8s.AuthenticationV1TokenRequest(
            spec=k8s.V1TokenRequestSpec(
                audiences=audiences,
                expiration_seconds=seconds,
                bound_object_ref=k8s.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=self.name, uid=self.pod["metadata"]["uid"]
                ),
            )
        )
        account = self.pod["spec"].get("serviceAccountName") or "default"
        with self.cluster.api_client() as api:
            issued: Any = k8s.CoreV1Api(api).create_namespaced_service_account_token(
                account, self.namespace, request
            )
        path = folder / source["path"]
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text(issued.status.token)
        temp.chmod(0o644)
        temp.replace(path)  # as the kubelet's atomic writer: never a half-written token
        self.token_writes += 1
        return float(seconds)

    def _refresh(self, tokens: list[tuple[Path, dict[str, Any]]]) -> None:
        lifetime = min(float(s.get("expirationSeconds", 3600)) for _, s in tokens)
        while not self._stop.wait(lifetime * REFRESH_AT):
            for folder, source in tokens:
                self._write_token(folder, source)

    # --- containers -------------------------------------------------------------------------

    def plan(self, name: str) -> dict[str, Any]:
        """How to run container `name`: argv, env, mounts and user, from the pod JSON only."""
        container = self.container(name)
        env: dict[str, str] = {}
        for entry in container.get("env") or []:
            if "value" not in entry:
                raise PodSpecUnsupported(f"{name}: env {entry['name']} is not a literal")
            env[entry["name"]] = entry["value"]
        env.setdefault("PATH", f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin")
        mounts = []
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in self.volumes:
                raise PodSpecUnsupported(f"{name}: mount of unknown volume {mount['name']}")
            mounts.append(
                {
                    "source": str(self.volumes[mount["name"]]),
                    "target": mount["mountPath"],
                    "read_only": bool(mount.get("readOnly")),
                }
            )
        pod_security = self.pod["spec"].get("securityContext") or {}
        security = {**pod_security, **(container.get("securityContext") or {})}
        fs_group = pod_security.get("fsGroup")
        return {
            "argv": [*(container.get("command") or []), *(container.get("args") or [])],
            "env": env,
            "mounts": mounts,
            "uid": security.get("runAsUser"),
            "gid": security.get("runAsGroup"),
            "groups": [fs_group] if fs_group is not None else [],
        }

    def start(self, name: str, argv: list[str] | None = None) -> subprocess.Popen[bytes]:
        """Start container `name` (or, like a probe's exec, `argv` in that container)."""
        plan = self.plan(name)
        if argv is not None:
            plan["argv"] = argv
        if not plan["argv"]:
            raise PodSpecUnsupported(f"{name}: no command (the image's entrypoint is unknown)")
        path = self.root / f"plan-{name}-{len(self.processes)}.json"
        path.write_text(json.dumps(plan))
        process = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                sys.executable,
                str(LAUNCH),
                str(path),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.processes.append(process)
        return process

    def probe(self, name: str) -> int:
        """Run the container's startupProbe exec command once; its exit code. A probe that
        outlives its timeout is killed and fails, as the kubelet's would: left running, it
        would be one more process of the pod's UID in a mount namespace of its own, which an
        agent looking for the app's main processes takes for one."""
        probe = self.container(name)["startupProbe"]
        process = self.start(name, list(probe["exec"]["command"]))
        try:
            return process.wait(timeout=max(int(probe.get("timeoutSeconds", 1)), 30))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return -1

    def stop(self) -> None:
        self._stop.set()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def resident_kib(pid: int) -> int:
    """VmRSS of a running process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for {pid}")
