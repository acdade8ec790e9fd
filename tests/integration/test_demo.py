"""The README's main job runs to a clear success line on this machine's real servers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_keyferry_demo_starts_every_server_and_says_so(tmp_path: Path) -> None:
    keyferry = shutil.which("keyferry", path=str(Path(sys.executable).parent))
    if keyferry is None:
        pytest.fail("the keyferry console script is not installed in this environment")
    result = subprocess.run(
        [keyferry, "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for server in (
        "vault-dev",
        "vault-persistent",
        "postgres",
        "mariadb",
        "moto",
        "etcd",
        "kube-a",
        "kube-b",
    ):
        assert f"  {server} " in result.stdout
    assert result.stdout.rstrip().endswith("bed: all servers healthy, and stopped")
