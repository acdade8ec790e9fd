"""The authorize-and-audit gate: the decision is recorded before the gate answers, a deny
is refused with the flow's sentence, and no other module asks the policy engine."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from broker.errors import PermissionDenied
from broker.policy import Action, PolicyEngine, RoleResource, Workload
from broker.policy import Decision as PolicyDecision
from broker.service.common.gate import PolicyGate

BROKER = Path(__file__).parents[2] / "broker"
APP = Workload(cluster="a", namespace="orders", service_account="app", pod="app-1", pod_uid="u1")
ROLE = RoleResource(name="orders-db-ro", backend="database")
CTX = {"credential_name": "db"}
PERMIT = '@id("orders")\npermit (principal, action == Action::"issue", resource);'


class Recorder:
    def __init__(self) -> None:
        self.decisions: list[PolicyDecision] = []

    async def __call__(self, decision: PolicyDecision) -> None:
        self.decisions.append(decision)


async def test_an_allowed_call_is_recorded_with_its_policy() -> None:
    record = Recorder()
    decision = await PolicyGate(PolicyEngine(PERMIT)).require(
        APP, Action.ISSUE, ROLE, record, "never shown", context=CTX
    )
    assert decision.allowed
    assert record.decisions == [decision]
    assert decision.policy_ids == ("orders",)


async def test_a_deny_is_recorded_then_refused_with_the_flows_sentence() -> None:
    record = Recorder()
    with pytest.raises(PermissionDenied, match="no policy permits app"):
        await PolicyGate(PolicyEngine("")).require(
            APP, Action.ISSUE, ROLE, record, "no policy permits app", context=CTX
        )
    assert [d.allowed for d in record.decisions] == [False]


async def test_decide_answers_a_deny_without_raising_and_a_dry_run_records_nothing() -> None:
    record = Recorder()
    gate = PolicyGate(PolicyEngine(""))
    assert not (await gate.decide(APP, Action.ISSUE, ROLE, record, CTX)).allowed
    assert not (await gate.decide(APP, Action.ISSUE, ROLE, None, CTX)).allowed
    assert len(record.decisions) == 1


def _asks_the_policy(path: Path) -> bool:
    """A call of `<something named policy>.decide(...)`."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = node.func.value
            name = receiver.attr if isinstance(receiver, ast.Attribute) else None
            name = receiver.id if isinstance(receiver, ast.Name) else name
            if node.func.attr == "decide" and name is not None and "policy" in name.lower():
                return True
    return False


def test_only_the_gate_asks_the_policy_engine() -> None:
    outside = [
        path.relative_to(BROKER).as_posix()
        for path in sorted(BROKER.rglob("*.py"))
        if path.relative_to(BROKER).as_posix() != "service/common/gate.py"
        and _asks_the_policy(path)
    ]
    assert outside == [], "ask through broker/service/common/gate.py (PolicyGate)"


def test_the_scan_sees_a_direct_call() -> None:
    assert _asks_the_policy(BROKER / "service" / "common" / "gate.py")
