"""keyferry's test bed: real servers on free loopback ports, started by the project itself.

Used as pytest fixtures (tests/conftest.py, one bed per test session) and from the CLI
(``python -m tests.bed --help``). Every server gets its own folder in one temporary
workspace; the bed stops only the processes it started, by pid.
"""

from __future__ import annotations

from .bed import Bed
from .errors import BedError, ServerFailed, ServerUnavailable

__all__ = ["Bed", "BedError", "ServerFailed", "ServerUnavailable"]
