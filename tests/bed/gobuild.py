"""Build the bed's servers from Go modules, cached outside the repository.

Each server is built from a small wrapper module under tests/bed/go/<name>/ whose go.mod
and go.sum are committed: the wrapper pins every module (and, for Kubernetes, maps each
staging module to its published version), so a build is reproducible. Binaries are
cached under ``$KEYFERRY_CACHE`` (default ``$XDG_CACHE_HOME/keyferry``) in a folder keyed
by the hash of the wrapper's go.mod, go.sum, the Go version and the build flags.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ServerUnavailable
from .progress import say

WRAPPERS = Path(__file__).parent / "go"
PROGRESS_EVERY = 20.0  # seconds between progress lines while the Go compiler works


def cache_root() -> Path:
    explicit = os.environ.get("KEYFERRY_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "keyferry"


@dataclass(frozen=True)
class GoBuild:
    """A wrapper module and the main packages built from it (binary name -> package)."""

    wrapper: str
    targets: Mapping[str, str]
    ldflags: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def module_dir(self) -> Path:
        return WRAPPERS / self.wrapper

    def key(self) -> str:
        digest = hashlib.sha256()
        for name in ("go.mod", "go.sum"):
            digest.update((self.module_dir / name).read_bytes())
        for source in sorted(self.module_dir.glob("*.go")):  # a wrapper's own main package
            digest.update(source.name.encode() + source.read_bytes())
        digest.update(_go_version().encode())
        digest.update(
            repr((sorted(self.targets.items()), self.ldflags, sorted(self.env.items()))).encode()
        )
        return digest.hexdigest()[:16]

    def out_dir(self) -> Path:
        return cache_root() / "bin" / f"{self.wrapper}-{self.key()}"

    def binary(self, name: str) -> Path:
        """The path of one built binary, building the wrapper first when it is not cached."""
        path = self.out_dir() / name
        if not path.exists():
            self.build()
        return path

    def build(self) -> None:
        out = self.out_dir()
        with _locked(cache_root() / "bin" / f".{self.wrapper}.lock"):
            missing = [name for name in self.targets if not (out / name).exists()]
            if not missing:
                return
            tmp = out.with_name(out.name + ".partial")
            tmp.mkdir(parents=True, exist_ok=True)
            for name in missing:
                self._build_one(name, tmp / name)
            out.mkdir(parents=True, exist_ok=True)
            for name in missing:
                os.replace(tmp / name, out / name)
            shutil.rmtree(tmp, ignore_errors=True)

    def _build_one(self, name: str, dest: Path) -> None:
        package = self.targets[name]
        argv = ["go", "build", "-v", "-trimpath", "-o", str(dest)]
        flags = ["-s", "-w", *self.ldflags]
        argv += ["-ldflags", " ".join(flags), package]
        env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0", **self.env}
        say(
            f"building {name} from {package} (wrapper tests/bed/go/{self.wrapper}); "
            "the first build takes minutes, later runs use the cache"
        )
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=self.module_dir,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        except FileNotFoundError as exc:
            raise ServerUnavailable(
                name,
                "the go command is not installed",
                "install Go 1.26 or later and put it on PATH",
            ) from exc
        assert proc.stdout is not None
        compiled, last_report, lines = 0, started, []
        for line in proc.stdout:
            lines.append(line.rstrip())
            if not line.startswith(("go: ", "#", " ")):
                compiled += 1
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY:
                say(f"building {name}: {compiled} packages compiled, {now - started:.0f}s")
                last_report = now
        if proc.wait() != 0:
            output = "\n".join(lines[-40:])
            raise ServerUnavailable(
                name,
                f"`go build {package}` failed:\n{output}",
                f"fix the wrapper module tests/bed/go/{self.wrapper}",
            )
        say(f"built {name} in {time.monotonic() - started:.0f}s")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_GO_VERSION: str | None = None


def _go_version() -> str:
    global _GO_VERSION  # noqa: PLW0603 - cached once per process
    if _GO_VERSION is None:
        try:
            _GO_VERSION = subprocess.run(
                ["go", "env", "GOVERSION"], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError) as exc:
            raise ServerUnavailable(
                "go",
                "the go command is not installed or broken",
                "install Go 1.26 or later and put it on PATH",
            ) from exc
    return _GO_VERSION


K8S_VERSION = "v1.34.4"
_K8S_LDFLAGS = tuple(
    f"-X {pkg}.{var}={value}"
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
    for var, value in (
        ("gitVersion", K8S_VERSION),
        ("gitMajor", "1"),
        ("gitMinor", "34"),
        ("gitTreeState", "clean"),
    )
)

VAULT = GoBuild("vault", {"vault": "github.com/hashicorp/vault"})
KUBERNETES = GoBuild(
    "kubernetes",
    {
        "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
        "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
        "kubectl": "k8s.io/kubernetes/cmd/kubectl",
        # The node of cluster a (node.py): built from the same wrapper, sharing its packages.
        "kubelet": "k8s.io/kubernetes/cmd/kubelet",
        "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
        "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
    },
    ldflags=_K8S_LDFLAGS,
)
ETCD = GoBuild("etcd", {"etcd": "go.etcd.io/etcd/server/v3"})
HELM_VERSION = "v3.19.5"
# What helm's Makefile stamps in; without it `helm version` says "v3.19" and templates
# see Kubernetes v1.20 as .Capabilities.KubeVersion (helm v3.19.5 is built on client-go v0.34).
_HELM_LDFLAGS = (
    f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
    "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1",
    "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=34",
    "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1",
    "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=34",
)
HELM = GoBuild("helm", {"helm": "helm.sh/helm/v3/cmd/helm"}, ldflags=_HELM_LDFLAGS)
BUF = GoBuild("buf", {"buf": "github.com/bufbuild/buf/cmd/buf"})
COREDNS_VERSION = "v1.15.0"
# The wrapper's own main.go imports only the plugins the node's Corefile uses (dns.py).
COREDNS = GoBuild("coredns", {"coredns": "keyferry.test/bed/coredns"})

# The trace receiver (jaeger.py): Jaeger v2, an OpenTelemetry Collector distribution, as the
# tool module its release is served as (`go get -tool .../cmd/jaeger@v1.75.0`).
JAEGER = GoBuild("jaeger", {"jaeger": "github.com/jaegertracing/jaeger/cmd/jaeger"})

ALL = {build.wrapper: build for build in (VAULT, ETCD, KUBERNETES, HELM, BUF, COREDNS, JAEGER)}
