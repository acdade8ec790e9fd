"""Only the lease engine calls the store's lifecycle steps, so no flow writes the invariant
(pending row → Vault → complete → undo; mark, audit, revoke, settle) a second time.

import-linter sees modules, not method calls, so this test reads the broker's source: any
attribute access named like a lifecycle step outside the engine's modules fails it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from broker.store import LeaseRepository

BROKER = Path(__file__).parents[2] / "broker"
LIFECYCLE_STEPS = frozenset(
    {
        "begin_issue",
        "admit_issue",
        "begin_rotation",
        "begin_rotations",
        "complete_issue",
        "complete_issues",
        "mark_failed",
        "mark_revoking",
        "end_at_once",
        "mark_revoked",
        "settle_revoked",
        "record_revoke_failure",
    }
)
ENGINE = frozenset(
    {
        "store/leases.py",  # where the steps are written
        "store/async_store.py",  # the same steps, awaitable: forwarded, not called
        "service/engine/lease_engine.py",  # tracked issue, replay, undo, end
        "service/engine/revoker.py",  # the Revoker: revoke at Vault and settle, and its queue
    }
)


def _calls(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in LIFECYCLE_STEPS
    }


def test_every_step_named_is_a_step_of_the_store() -> None:
    assert all(callable(getattr(LeaseRepository, step, None)) for step in LIFECYCLE_STEPS)


def test_only_the_lease_engine_calls_the_lifecycle_steps() -> None:
    outside = {}
    for path in sorted(BROKER.rglob("*.py")):
        name = path.relative_to(BROKER).as_posix()
        if name.startswith("api/") or name in ENGINE:
            continue
        used = _calls(path)
        if used:
            outside[name] = sorted(used)
    assert outside == {}, "call these through broker/service/engine/lease_engine.py"
