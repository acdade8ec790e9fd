"""Pure pieces of the bed: ports, process control, build cache keys."""

import os
import sys
from pathlib import Path

import pytest

from tests.bed.errors import ServerFailed
from tests.bed.gobuild import ALL, GoBuild
from tests.bed.ports import free_port, is_listening
from tests.bed.process import ManagedProcess

SLEEPER = "import time; time.sleep(60)"
PARENT_OF_SLEEPER = (
    f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', '{SLEEPER}']); "
    "time.sleep(60)"
)


def test_free_port_is_not_listening() -> None:
    port = free_port()
    assert 1024 < port < 65536
    assert not is_listening(port)


def test_a_process_that_dies_fails_with_its_log(tmp_path: Path) -> None:
    proc = ManagedProcess(
        "dies", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"], tmp_path / "dies.log"
    )
    proc.start()
    with pytest.raises(ServerFailed, match="exited with 3") as failed:
        proc.wait_until(lambda: False, "healthy", timeout=10)
    assert "boom" in str(failed.value)


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    proc = ManagedProcess("tree", [sys.executable, "-c", PARENT_OF_SLEEPER], tmp_path / "tree.log")
    proc.start()
    assert proc.running()
    proc.stop(timeout=5)
    assert not proc.running()
    assert proc.pid is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


def test_build_key_changes_with_the_targets() -> None:
    vault = ALL["vault"]
    other = GoBuild(vault.wrapper, {"vault2": "github.com/hashicorp/vault"})
    assert vault.key() == ALL["vault"].key()
    assert vault.key() != other.key()
    assert all((build.module_dir / "go.sum").exists() for build in ALL.values())
