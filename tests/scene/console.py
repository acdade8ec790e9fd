"""`keyferry console` as a test runs it: a real process (uvicorn on loopback) started with
a CLI context file, the URL with its one-time token read from its first line, and stopped
with SIGINT as Ctrl-C would. The process never shares the test's event loop, so a browser
driven from a thread and a broker serving in the test's loop do not wait on each other."""

from __future__ import annotations

import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_BOUND = 60.0  # seconds to wait for the URL; generous, never asserted
ENTRY = "from broker.cli.entry import main; main()"  # the `keyferry` script of this venv
URL = re.compile(r"^http://127\.0\.0\.1:(\d+)/\?token=([A-Za-z0-9_-]+)$")


@dataclass(frozen=True)
class Console:
    url: str
    port: int
    token: str
    process: subprocess.Popen[str]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def running_console(context: Path) -> Iterator[Console]:
    """A console for the operator of `context`, stopped (Ctrl-C) afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-c", ENTRY, "console", "--context", str(context)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = _first_line(process)
        found = URL.match(line)
        assert found is not None, f"keyferry console printed {line!r}, not its URL"
        yield Console(line, int(found.group(1)), found.group(2), process)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_BOUND
        while time.monotonic() < deadline:
            if selector.select(0.5):
                return process.stdout.readline().strip()
            if process.poll() is not None:
                raise AssertionError(f"keyferry console exited with {process.returncode}")
    raise AssertionError("keyferry console printed no URL")
