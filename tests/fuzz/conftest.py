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
With pytest-xdist (`tests/run fuzz` runs `-n auto`) each worker hands its count to the
controller, which prints and checks the sum.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase, ReadOnlyDatabase

from .targets import INPUTS

CORPUS = Path(__file__).parent / "corpus"
PROFILE = os.environ.get("KEYFERRY_FUZZ_PROFILE", "default")
FULL_PER_TARGET = 110_000  # ten targets: 1,100,000 inputs
WORKER_COUNTS = "keyferry_fuzz_inputs"

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """At length a target runs for many minutes: the suite's per-test timeout (600 s) would
    fire inside Hypothesis, which reports it as a flaky failure of the target."""
    if PROFILE == "fuzz":
        for item in items:
            item.add_marker(pytest.mark.timeout(0))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not INPUTS:
        return
    total = sum(INPUTS.values())
    terminalreporter.write_line(
        f"keyferry fuzz ({PROFILE} profile): {total:,} inputs in all: "
        + ", ".join(f"{name} {count:,}" for name, count in sorted(INPUTS.items()))
    )
    if PROFILE == "fuzz" and total < _wanted():
        terminalreporter.write_line(
            f"keyferry fuzz: FAILED: {total:,} inputs, fewer than KEYFERRY_FUZZ_MIN_INPUTS "
            f"({_wanted():,}); raise KEYFERRY_FUZZ_EXAMPLES (inputs per target)",
            red=True,
        )


def _wanted() -> int:
    return int(os.environ.get("KEYFERRY_FUZZ_MIN_INPUTS", "1000000"))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """An xdist worker is done (`tests/run fuzz` spreads the targets over processes): add
    the inputs its targets saw to this process's count."""
    INPUTS.update(node.workeroutput.get(WORKER_COUNTS, {}))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    worker_output = getattr(session.config, "workeroutput", None)
    if worker_output is not None:  # an xdist worker: its controller sums and checks
        worker_output[WORKER_COUNTS] = dict(INPUTS)
        return
    if PROFILE != "fuzz" or exitstatus != 0:
        return
    if sum(INPUTS.values()) < _wanted():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
