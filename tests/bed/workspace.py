"""A bed run's scratch space: one temporary folder holding each server's data and log."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Workspace:
    root: Path

    @classmethod
    def create(cls, keep: bool = False) -> Workspace:
        root = Path(tempfile.mkdtemp(prefix="keyferry-bed-"))
        root.chmod(0o755)  # servers that drop root (postgres) must traverse it
        return cls(root)

    def folder(self, name: str, owner: str | None = None) -> Path:
        """A fresh folder for one server; chowned to `owner` when we run as root."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        if owner and os.geteuid() == 0:
            entry = pwd.getpwnam(owner)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return path

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
