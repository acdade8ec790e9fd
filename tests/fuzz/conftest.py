"""Hypothesis profiles for the fuzz targets, and the count of inputs they ran.

The corpus lives in tests/fuzz/corpus: `seeds.json`, kept by hand, holds the interesting
inputs (every crash found so far among them) and is replayed as explicit examples by every
run; Hypothesis' example database beside it records any failing input a run finds, and is
replayed first by later runs. Commit what a fuzz run adds there.

The default profile (every test run) tries KEYFERRY_FUZZ_EXAMPLES (200) generated inputs
per target and only reads the database. `tests/run fuzz` selects the `fuzz` profile:
KEYFERRY_FUZZ_EXAMPLES per target, 110,000 unless set, so about 1,100,000 inputs over the
ten targets, and writes the database. At the end the number of inputs the targets saw is
printed; in the fuzz profile a total below KEYFERRY_FUZZ_MIN_INPUTS (1,000,000) fails the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase, ReadOnlyDatabase

from .targets import INPUTS

CORPUS = Path(__file__).parent / "corpus"
PROFILE = os.environ.get("KEYFERRY_FUZZ_PROFILE", "default")
FULL_PER_TARGET = 110_000  # ten targets: 1,100,000 inputs

_BASE = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile(
    "default",
    parent=_BASE,
    max_examples=int(os.environ.get("KEYFERRY_FUZZ_EXAMPLES", "200")),
    database=ReadOnlyDatabase(DirectoryBasedExampleDatabase(CORPUS)),
)
settings.register_profile(
    "fuzz",
    parent=_BASE,
    max_examples=int(os.environ.get("KEYFERRY_FUZZ_EXAMPLES", str(FULL_PER_TARGET))),
    database=DirectoryBasedExampleDatabase(CORPUS),
)


def pytest_configure(config: pytest.Config) -> None:
    settings.load_profile(PROFILE)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not INPUTS:
        return
    total = sum(INPUTS.values())
    terminalreporter.write_line(
        f"keyferry fuzz ({PROFILE} profile): {total:,} inputs in all: "
        + ", ".join(f"{name} {count:,}" for name, count in sorted(INPUTS.items()))
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if PROFILE != "fuzz" or exitstatus != 0:
        return
    wanted = int(os.environ.get("KEYFERRY_FUZZ_MIN_INPUTS", "1000000"))
    if sum(INPUTS.values()) < wanted:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
