"""keyferry's container images, built here with no registry and no daemon.

- The base is a minimal Debian bookworm with python3.11 (tests/bed/debian.py), imported into
  buildah as ``localhost/keyferry/bookworm-python`` and passed to charts/images/Dockerfile as
  its base arguments (``PYTHON_IMAGE`` and the imported image's ``PYTHON_DIGEST``).
- broker, webhook and agent are that Dockerfile's targets, built by buildah (daemonless,
  chroot isolation, its own storage under the cache); pip in the build stage uses this
  machine's pip configuration (index, CA bundle), bind-mounted read-only into the build.
- ``app`` is the end-to-end tests' application: Debian's psql, openssl and awscli.

Each image is written as an OCI archive whose reference is the one the chart renders by default
(``localhost/keyferry/broker:0.1.0``: a name with an explicit domain, which a CRI runtime takes as
it is), so ``ctr images import`` loads it under the name a pod asks for and nothing is ever pulled.
Archives are cached under ``<cache>/images/<name>-<key>/`` keyed by a hash of their inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from .debian import AptSources, Rootfs, apt_sources
from .errors import ServerUnavailable
from .gobuild import _locked, cache_root
from .progress import say

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "charts" / "images" / "Dockerfile"
DOCKERIGNORE = REPO / "charts" / "images" / "Dockerfile.dockerignore"
CHART = REPO / "charts" / "keyferry"
TARGETS = ("broker", "webhook", "agent")
# What charts/images/Dockerfile COPYs into its build stage (its .dockerignore lets only these in).
BUILD_INPUTS = ("pyproject.toml", "README.md", "tests/constraints.txt", "broker", "injector")

# What the official python:3.11-slim image has beyond the interpreter and keyferry's wheels need:
# grpcio's wheel links libstdc++; TLS needs the CA store; netbase gives /etc/services.
BASE = Rootfs(
    "bookworm-python",
    ("python3.11", "python3.11-venv", "libstdc++6", "ca-certificates", "netbase", "tzdata"),
)
BASE_NAME = "localhost/keyferry/bookworm-python"
# The Dockerfile's base arguments: FROM ${PYTHON_IMAGE}@${PYTHON_DIGEST}.
BASE_IMAGE_ARG, BASE_DIGEST_ARG = "PYTHON_IMAGE", "PYTHON_DIGEST"
APP = Rootfs("app", ("postgresql-client", "openssl", "awscli", "ca-certificates"))
APP_REFERENCE = "localhost/keyferry/e2e-app:bookworm"
USER = "65532:65532"
# The environment Debian's own images set; an image made from a bare root filesystem has none.
ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")
BASE_CMD = ["python3"]
APP_CMD = ["sleep", "infinity"]
# pip settings that name a file or folder on this machine, mounted into the build as they are.
_PIP_PATH_KEYS = ("cert", "client-cert", "find-links")


@dataclass(frozen=True)
class Image:
    """One built image: its CRI reference and the OCI archive that carries it."""

    name: str
    reference: str
    archive: Path

    @property
    def size(self) -> int:
        return self.archive.stat().st_size


class ShortImageName(ValueError):
    """An image name without a domain: a CRI runtime would resolve it against a registry."""


def cri_reference(repository: str, tag: str) -> str:
    """The reference a CRI runtime looks up for ``repository:tag``, which must name its domain.

    A short name (``keyferry/broker``) is completed by the runtime with a public registry's
    domain, so an archive imported under any other name would not be found and the node would
    try to pull: the bed refuses short names instead of guessing that domain.
    """
    first, _, rest = repository.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        raise ShortImageName(
            f"image repository {repository!r} has no domain: name it with one "
            f"(localhost/{repository} for an image built here) so the node finds it imported"
        )
    return f"{repository}:{tag}"


def chart_references(chart: Path = CHART) -> dict[str, str]:
    """Each target's image as charts/keyferry renders it by default, in CRI terms."""
    values = yaml.safe_load((chart / "values.yaml").read_text())
    app_version = str(yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"])
    references = {}
    for target in TARGETS:
        image = values["images"][target]
        references[target] = cri_reference(image["repository"], image["tag"] or app_version)
    return references


class ImageBuilder:
    """Builds (or finds in the cache) the base, keyferry's three images and the app image."""

    def __init__(self, cache: Path | None = None) -> None:
        self.root = (cache or cache_root()) / "images"
        self.work = self.root / "work"
        self._sources: AptSources | None = None
        self.seconds: dict[str, float] = {}  # build time of each image built by this builder
        self._since = time.monotonic()

    # ---- what the tests and the node use ----

    def all(self) -> list[Image]:
        """Every image the bed needs, built when not cached, with their sizes printed."""
        images = [*self.keyferry(), self.app()]
        for image in images:
            built = self.seconds.get(image.name)
            how = f"built in {built:.0f}s" if built is not None else "cached"
            say(f"image {image.reference}: {_mb(image.size)}, {how} ({image.archive})")
        return images

    def keyferry(self) -> list[Image]:
        """broker, webhook and agent from charts/images/Dockerfile on the Debian base."""
        references = chart_references()
        folder = self.root / f"keyferry-{self._keyferry_key()}"
        images = [Image(t, references[t], folder / f"{t}.tar") for t in TARGETS]
        if all(image.archive.exists() for image in images):
            return images
        with _locked(self.root / ".build.lock"):
            base = self._base()
            for image in images:
                if not image.archive.exists():
                    self._build_target(image, base)
            self._prune("keyferry-", keep=folder, local=base)
        return images

    def app(self) -> Image:
        """The end-to-end tests' application image: psql, openssl, aws (Debian packages)."""
        key = self._import_key(APP, APP_CMD, USER)
        # The archive carries its reference: a new reference is a new archive.
        folder = hashlib.sha256(f"{key}\0{APP_REFERENCE}".encode()).hexdigest()[:16]
        image = Image("app", APP_REFERENCE, self.root / f"app-{folder}" / "app.tar")
        if image.archive.exists():
            return image
        local = f"localhost/keyferry/e2e-app:{key}"
        with _locked(self.root / ".build.lock"):
            if not image.archive.exists():
                if not self._has_image(local):
                    self._import_rootfs(APP, local, APP_CMD, USER)
                self._export(local, image)
            self._prune("app-", keep=image.archive.parent, local=local)
        return image

    # ---- the base ----

    def _base(self) -> str:
        """The base's tagged local name, imported into buildah's storage when missing."""
        local = f"{BASE_NAME}:{self._import_key(BASE, BASE_CMD, None)}"
        if not self._has_image(local):
            self._import_rootfs(BASE, local, BASE_CMD, None)
        return local

    def _import_key(self, rootfs: Rootfs, cmd: list[str], user: str | None) -> str:
        """The root filesystem's key and the configuration the image gets on import."""
        inputs = repr((rootfs.key(self._apt()), ENV, cmd, user))
        return hashlib.sha256(inputs.encode()).hexdigest()[:16]

    def _import_rootfs(self, rootfs: Rootfs, local: str, cmd: list[str], user: str | None) -> None:
        tarball = self.root / f"{rootfs.name}-{rootfs.key(self._apt())}.tar"
        if not tarball.exists():
            rootfs.build(tarball, self._apt(), self.work)
        say(f"{rootfs.name}: importing the root filesystem into buildah as {local}")
        container = self._buildah("from", "--pull=never", "scratch").strip()
        try:
            self._buildah("add", container, str(tarball), "/")
            config = [*(f"--env={variable}" for variable in ENV), "--cmd", json.dumps(cmd)]
            if user:
                config += ["--user", user]
            self._buildah("config", *config, container)
            self._buildah("commit", "--rm", container, local)
        except BaseException:
            self._buildah("rm", container, check=False)
            raise

    # ---- keyferry's images ----

    def _build_target(self, image: Image, base: str) -> None:
        digest = self._buildah("images", "--digests", "--format", "{{.Digest}}", base).split()[0]
        local = f"localhost/keyferry/{image.name}:build"
        argv = [
            "build",
            "--isolation",
            "chroot",
            "--pull=never",
            "--layers",
            "--file",
            str(DOCKERFILE),
            "--ignorefile",
            str(DOCKERIGNORE),
            "--target",
            image.name,
            "--build-arg",
            f"{BASE_IMAGE_ARG}={base.rsplit(':', 1)[0]}",
            "--build-arg",
            f"{BASE_DIGEST_ARG}={digest}",
            *self._pip_mounts(),
            "--tag",
            local,
            str(REPO),
        ]
        say(f"{image.name}: buildah build --target {image.name} on {base}@{digest[:19]}")
        self._stream(argv, self.work / f"{image.name}-build.log", image.name)
        self._export(local, image)

    def _pip_mounts(self) -> list[str]:
        """This machine's pip configuration as a pip.conf, and the files it names, read-only."""
        listed = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        settings: dict[str, str] = {}
        for line in listed.splitlines():
            name, _, value = line.partition("=")
            section, _, key = name.rpartition(".")
            if key and section in {"global", ":env:", "install"}:
                settings[key] = value.strip().strip("'\"")
        mounts: list[str] = []
        for key in _PIP_PATH_KEYS:
            path = settings.get(key, "")
            if path.startswith("/") and Path(path).exists():
                mounts += ["--volume", f"{path}:{path}:ro"]
            else:
                settings.pop(key, None)
        conf = self.work / "pip.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(settings.items())))
        return [*mounts, "--volume", f"{conf}:/etc/pip.conf:ro"]

    def _keyferry_key(self) -> str:
        digest = hashlib.sha256()
        digest.update(self._import_key(BASE, BASE_CMD, None).encode())
        for path in _files((DOCKERFILE, DOCKERIGNORE, *(REPO / p for p in BUILD_INPUTS))):
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
        digest.update(repr(sorted(chart_references().items())).encode())
        return digest.hexdigest()[:16]

    # ---- buildah ----

    def _export(self, local: str, image: Image) -> None:
        """Write ``local`` as ``image``'s archive; its build time runs from the previous export."""
        image.archive.parent.mkdir(parents=True, exist_ok=True)
        partial = image.archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        self._buildah("push", local, f"oci-archive:{partial}:{image.reference}")
        os.replace(partial, image.archive)
        now = time.monotonic()
        self.seconds[image.name] = now - self._since
        self._since = now
        unpacked = self._buildah("images", "--format", "{{.Size}}", local).strip()
        say(f"{image.name}: exported {image.reference}: {_mb(image.size)}, {unpacked} unpacked")

    def _prune(self, prefix: str, keep: Path, local: str) -> None:
        """Drop archives of older inputs, older tags of ``local``'s repository, and the
        build layers no tag uses any more."""
        for folder in self.root.glob(f"{prefix}*"):
            if folder != keep and folder.is_dir():
                shutil.rmtree(folder)
        # The storage is the bed's own and the lock is held: a working container left
        # here is a failed build's, and it would keep its layers from being pruned.
        self._buildah("rm", "--all", check=False)
        repository = local.rsplit(":", 1)[0]
        listed = self._buildah(
            "images", "--format", "{{.Name}}:{{.Tag}}", f"--filter=reference={repository}"
        )
        for name in listed.split():
            if name != local:
                self._buildah("rmi", name, check=False)
        self._buildah("rmi", "--prune", check=False)

    def _has_image(self, local: str) -> bool:
        return bool(self._buildah("images", "--quiet", local, check=False).strip())

    def _storage(self) -> list[str]:
        buildah = shutil.which("buildah")
        if buildah is None:
            raise ServerUnavailable(
                "images",
                "buildah is not installed",
                "apt-get install buildah mmdebstrap (tests/run setup does it as root)",
            )
        if os.geteuid() != 0:
            raise ServerUnavailable(
                "images", "buildah and mmdebstrap run as root here", "build the images as root"
            )
        containers = self.root / "containers"
        return [
            buildah,
            "--root",
            str(containers / "storage"),
            "--runroot",
            str(containers / "run"),
            "--storage-driver",
            "overlay",
        ]

    def _buildah(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            [*self._storage(), *args], capture_output=True, text=True, check=False
        )
        if check and done.returncode != 0:
            raise ServerUnavailable(
                "images",
                f"`buildah {' '.join(args)}` failed: {done.stderr.strip()[-2000:]}",
                "see the error; buildah needs root and an overlay-capable file system",
            )
        return done.stdout

    def _stream(self, args: list[str], log: Path, name: str) -> None:
        """Run a long buildah command: every STEP line as progress, the rest in ``log``."""
        started = time.monotonic()
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            proc = subprocess.Popen(
                [*self._storage(), *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                if " STEP " in line:
                    say(f"{name}: {time.monotonic() - started:4.0f}s {line.strip()[:110]}")
        if proc.wait() != 0:
            tail = "\n".join(log.read_text().splitlines()[-30:])
            raise ServerUnavailable(
                name, f"buildah build failed (log {log}):\n{tail}", "fix the build"
            )
        say(f"{name}: built in {time.monotonic() - started:.0f}s")

    def _apt(self) -> AptSources:
        if self._sources is None:
            self._sources = apt_sources()
        return self._sources


def _files(paths: Iterable[Path]) -> list[Path]:
    """Every file under ``paths``, sorted, without bytecode caches."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        else:
            found.append(path)
    return sorted(found)


def archive_config(archive: Path) -> dict[str, object]:
    """The image configuration (user, entrypoint, cmd, env) inside an OCI archive."""
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> dict[str, object]:
            algorithm, _, hexdigest = digest.partition(":")
            member = tar.extractfile(f"blobs/{algorithm}/{hexdigest}")
            assert member is not None
            loaded: dict[str, object] = json.load(member)
            return loaded

        index_file = tar.extractfile("index.json")
        assert index_file is not None
        index = json.load(index_file)
        manifest = blob(index["manifests"][0]["digest"])
        config = blob(manifest["config"]["digest"])  # type: ignore[index]
    inner: dict[str, object] = config["config"]  # type: ignore[assignment]
    return inner


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"
