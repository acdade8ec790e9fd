"""Audit actions are a contract with the people reading the trail: one documented member
each, and the table in docs/security.md is exactly the enum."""

from __future__ import annotations

import re
from pathlib import Path

from broker.audit import AuditAction, AuditEvent, Principal, PrincipalKind
from broker.policy import Action
from broker.service.common.audit_trail import decided

SECURITY = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
ROW = re.compile(r"^\| `([a-z0-9_.]+)` \| (.+) \|$")


def test_every_action_has_a_description() -> None:
    assert all(action.description.strip() for action in AuditAction)


def test_the_docs_table_is_the_enum_in_order() -> None:
    table = [ROW.match(line) for line in SECURITY.splitlines()]
    rows = [(m.group(1), m.group(2)) for m in table if m is not None]
    assert rows == [(action.value, action.description) for action in AuditAction]


def test_every_action_is_a_valid_record_action() -> None:
    who = Principal(kind=PrincipalKind.SYSTEM, name="test")
    for action in AuditAction:
        assert AuditEvent(who=who, action=action).model_dump(mode="json")["action"] == action


def test_the_decided_cedar_actions_have_an_audit_action() -> None:
    for action in (Action.ISSUE, Action.WATCH, Action.RELEASE, Action.RENEW):
        assert decided(action) == action.value
    for action in (Action.ROTATE, Action.REVOKE, Action.ROTATE_ROOT):
        assert decided(action) == action.value
