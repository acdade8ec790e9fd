"""Root filesystems made from Debian packages with mmdebstrap, through this machine's apt sources.

The images' bases are built here instead of pulled: mmdebstrap installs a package list into
a tarball with no registry and no daemon. It reads the same Debian mirror apt uses on this
machine (the bookworm entries of /etc/apt/sources.list and sources.list.d), so no mirror
host is written in the repository.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ServerUnavailable
from .progress import say

SUITE = "bookworm"
APT_ETC = Path("/etc/apt")
# Documentation, manuals and translations are dropped: nothing in a container reads them.
_EXCLUDED = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")


@dataclass(frozen=True)
class AptSources:
    """This machine's entries for the suite, in the two formats apt reads."""

    one_line: str
    deb822: str

    def digest(self) -> str:
        return hashlib.sha256(f"{self.one_line}\0{self.deb822}".encode()).hexdigest()

    def write(self, folder: Path) -> list[Path]:
        """The files mmdebstrap takes as mirrors (a path argument is read as a sources file)."""
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in (("bed.list", self.one_line), ("bed.sources", self.deb822)):
            if text:
                path = folder / name
                path.write_text(text)
                written.append(path)
        return written


def apt_sources(etc: Path = APT_ETC, suite: str = SUITE) -> AptSources:
    """The machine's apt entries for ``suite`` and its updates/security suites."""
    lines: list[str] = []
    stanzas: list[str] = []
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        if path.suffix == ".list":
            for line in path.read_text().splitlines():
                words = line.split("#", 1)[0].split()
                if words[:1] == ["deb"] and _suite_matches(_one_line_suite(words), suite):
                    lines.append(" ".join(words))
        elif path.suffix == ".sources":
            for stanza in path.read_text().split("\n\n"):
                fields = _deb822_fields(stanza)
                suites = fields.get("suites", "").split()
                enabled = fields.get("enabled", "yes").lower() != "no"
                wanted = any(_suite_matches(s, suite) for s in suites)
                if enabled and wanted and "deb" in fields.get("types", "").split():
                    stanzas.append(stanza.strip())
    if not lines and not stanzas:
        raise ServerUnavailable(
            "debian-rootfs",
            f"no apt source for Debian {suite} in {etc}",
            f"configure apt with a Debian {suite} mirror",
        )
    return AptSources("".join(f"{line}\n" for line in lines), "".join(f"{s}\n\n" for s in stanzas))


def _one_line_suite(words: list[str]) -> str:
    rest = words[1:]
    if rest and rest[0].startswith("["):  # deb [signed-by=... arch=...] uri suite components
        while rest and not rest[0].endswith("]"):
            rest = rest[1:]
        rest = rest[1:]
    return rest[1] if len(rest) > 1 else ""


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or not line.strip() or line[0].isspace():
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    return fields


def _suite_matches(candidate: str, suite: str) -> bool:
    return candidate == suite or candidate.startswith(f"{suite}-")


@dataclass(frozen=True)
class Rootfs:
    """A minimal Debian root filesystem: the Essential packages plus ``packages``."""

    name: str
    packages: tuple[str, ...]

    def key(self, sources: AptSources) -> str:
        digest = hashlib.sha256()
        digest.update(repr((SUITE, self.packages, _EXCLUDED)).encode())
        digest.update(sources.digest().encode())
        return digest.hexdigest()[:16]

    def build(self, dest: Path, sources: AptSources, work: Path) -> None:
        """Write the root filesystem as a tarball at ``dest`` (replaced only when complete)."""
        mmdebstrap = shutil.which("mmdebstrap")
        if mmdebstrap is None:
            raise ServerUnavailable(
                f"{self.name} root filesystem",
                "mmdebstrap is not installed",
                "apt-get install mmdebstrap (tests/run setup does it as root)",
            )
        argv = [
            mmdebstrap,
            "--variant=essential",
            # Bookworm's init-system-helpers wants usrmerge (and with it perl) unless
            # usr-is-merged is there: the merged-usr hook makes the links and installs it.
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
            f"--include={','.join(self.packages)}",
            *(f"--dpkgopt=path-exclude={pattern}" for pattern in _EXCLUDED),
            SUITE,
            str(dest.with_suffix(".partial.tar")),
            *(str(path) for path in sources.write(work / f"{self.name}-apt")),
        ]
        say(f"{self.name}: mmdebstrap {SUITE} with {', '.join(self.packages)} (about 1-2 minutes)")
        started = time.monotonic()
        log = work / f"{self.name}-mmdebstrap.log"
        with log.open("w") as out:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-30:])
            raise ServerUnavailable(
                f"{self.name} root filesystem",
                f"mmdebstrap failed (log {log}):\n{tail}",
                "check the apt sources and that this runs as root",
            )
        os.replace(dest.with_suffix(".partial.tar"), dest)
        took = time.monotonic() - started
        say(f"{self.name}: root filesystem {_mb(dest.stat().st_size)} in {took:.0f}s")


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"
