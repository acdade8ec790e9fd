"""Atomic writes: mode 0440, replace over a read-only file, and no torn file even when the
writer is killed at random moments (SIGKILL is harsher than SIGTERM: no handler runs)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from injector.agent.writer import TEMP_PREFIX, remove_stale_temps, write_atomic

WRITER = """
import sys
from pathlib import Path
from injector.agent.writer import write_atomic
folder = Path(sys.argv[1])
n = 0
while True:
    n += 1
    write_atomic(folder, "db", (str(n % 10) * 4_000_000).encode(), 0o440)
"""


def test_writes_mode_0440_and_replaces_a_read_only_file(tmp_path: Path) -> None:
    write_atomic(tmp_path, "db", b"one", 0o440)
    path = write_atomic(tmp_path, "db", b"two", 0o440)
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o440
    assert [p.name for p in tmp_path.iterdir()] == ["db"]


def test_a_writer_killed_mid_write_never_leaves_a_torn_file(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    for attempt in range(8):
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], env=env)
        time.sleep(0.3 + attempt * 0.037)
        process.send_signal(signal.SIGKILL if attempt % 2 else signal.SIGTERM)
        process.wait()
        data = (tmp_path / "db").read_bytes()
        assert len(data) == 4_000_000
        assert len(set(data)) == 1, "a torn file"
    remove_stale_temps(tmp_path)
    assert not list(tmp_path.glob(f"{TEMP_PREFIX}*"))
    assert [p.name for p in tmp_path.iterdir()] == ["db"]
