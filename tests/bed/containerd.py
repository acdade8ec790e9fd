"""The node's container runtime: Debian's containerd with a config, root, state and socket of
its own, so it never touches a containerd the machine may run.

Two settings are not defaults, both needed on this kind of machine (docs/testbed.md):
`restrict_oom_score_adj = true` (the bed's processes lack CAP_SYS_RESOURCE, so runc cannot
set the negative oom_score_adj the kubelet asks for: every sandbox fails with "can't get
final child's PID from pipe: EOF"), and runc with `SystemdCgroup = false` (no systemd here;
the kubelet uses the cgroupfs driver to match). CNI plugins come from Debian's
containernetworking-plugins in /usr/lib/cni, not containerd's default /opt/cni/bin.

Images are imported from OCI archives with `ctr images import` into the CRI's namespace,
under the exact name a pod spec resolves to: the node never pulls.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from .errors import ServerUnavailable
from .ports import LOOPBACK, free_port
from .process import ManagedProcess, run
from .workspace import Workspace

CNI_BIN_DIR = Path("/usr/lib/cni")
CRI_NAMESPACE = "k8s.io"
SHIM = "containerd-shim-runc-v2"


def config_toml(folder: Path, socket: Path, sandbox_image: str, cni_conf_dir: Path) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{folder / "root"}"
state = "{folder / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  level = "warn"

[{cri}]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  enable_selinux = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{cni_conf_dir}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{folder / "opt"}"
"""


def require_runtime() -> None:
    """Fail with the reason when this machine cannot run the node's containers."""
    if os.geteuid() != 0:
        raise ServerUnavailable("node", "a kubelet and containerd need root", "run as root")
    for tool in ("containerd", "ctr", "runc", SHIM, "iptables"):
        if shutil.which(tool) is None:
            raise ServerUnavailable(
                "node",
                f"`{tool}` is not installed",
                "apt-get install containerd runc iptables (tests/run does this as root)",
            )
    for plugin in ("bridge", "host-local", "loopback"):
        if not (CNI_BIN_DIR / plugin).exists():
            raise ServerUnavailable(
                "node",
                f"the CNI plugin {CNI_BIN_DIR / plugin} is missing",
                "apt-get install containernetworking-plugins",
            )
    for controller in ("cpu", "memory", "pids"):
        if not _has_cgroup(controller):
            raise ServerUnavailable(
                "node",
                f"the {controller} cgroup controller is not mounted",
                "run on a machine with cgroups (v1 or v2) mounted under /sys/fs/cgroup",
            )


def _has_cgroup(controller: str) -> bool:
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.exists():
        return controller in v2.read_text().split()
    return Path("/sys/fs/cgroup", controller).is_dir()


@dataclass
class Containerd:
    folder: Path
    socket: Path
    process: ManagedProcess

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def ctr(self, *args: str, timeout: float = 120.0) -> str:
        return run(
            ["ctr", f"--address={self.socket}", f"--namespace={CRI_NAMESPACE}", *args],
            timeout=timeout,
        )

    def load(self, archive: Path, ref: str) -> None:
        """Import an OCI archive whose image is named `ref` (index.json's ref.name
        annotation) and check it is there under that exact name."""
        self.ctr("images", "import", str(archive), timeout=600)
        names = self.ctr("images", "list", "--quiet").split()
        if ref not in names:
            raise ServerUnavailable(
                "node image",
                f"{archive} imported, but no image is named {ref} (found: {', '.join(names)})",
                "name the image in the archive's index.json (org.opencontainers.image.ref.name)",
            )

    def healthy(self) -> bool:
        self.ctr("version", timeout=5)
        return True

    def shim_pids(self) -> list[int]:
        """The runc shims this containerd started (they outlive it: found by our socket)."""
        pids = []
        marker = str(self.socket).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if argv and argv[0].endswith(SHIM.encode()) and marker in argv:
                    pids.append(int(proc.name))
        return pids

    def stop(self) -> None:
        """Stop containerd, then its shims (and so their containers), then unmount what
        they mounted under this containerd's folder."""
        self.process.stop()
        for pid in self.shim_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        unmount_under(self.folder)


def unmount_under(folder: Path) -> None:
    """Lazily unmount every mount point under `folder`, deepest first."""
    prefix = str(folder.resolve()) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) or point == prefix.rstrip("/"):
            points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        run_quiet(["umount", "-l", point])


def run_quiet(argv: list[str]) -> None:
    with contextlib.suppress(Exception):
        run(argv, timeout=30)


def start_containerd(ws: Workspace, sandbox_image: str, cni_conf_dir: Path) -> Containerd:
    require_runtime()
    folder = ws.folder("containerd")
    socket = folder / "containerd.sock"
    config = folder / "config.toml"
    config.write_text(config_toml(folder, socket, sandbox_image, cni_conf_dir))
    # The node never pulls: a pull that is tried anyway goes to a proxy that is not there
    # and fails at once, instead of leaving the machine.
    nowhere = f"http://{LOOPBACK}:{free_port()}"
    env = {**os.environ, "HTTP_PROXY": nowhere, "HTTPS_PROXY": nowhere, "NO_PROXY": ""}
    process = ManagedProcess(
        "containerd", ["containerd", f"--config={config}"], ws.log("containerd"), env=env
    )
    server = Containerd(folder, socket, process)
    process.start()
    process.wait_until(server.healthy, "answering on its socket")
    return server
