"""What importing some modules loads, in a fresh interpreter (`python -I`): for code that
runs as a new process in every pod (the agent, its probes), where each import is paid again."""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import importlib, sys
before = set(sys.modules)
for name in sys.argv[1:]:
    importlib.import_module(name)
print(" ".join(sorted(set(sys.modules) - before)))
"""


def modules_loaded_by(*modules: str) -> set[str]:
    """The modules a fresh interpreter holds after importing `modules` that it did not hold
    before (its site and the virtualenv's .pth files are left out: they are not theirs)."""
    done = subprocess.run(
        [sys.executable, "-I", "-c", _SCRIPT, *modules], capture_output=True, text=True, check=True
    )
    return set(done.stdout.split())
