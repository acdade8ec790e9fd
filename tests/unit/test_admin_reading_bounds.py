"""The bounds of the admin API's reading calls, checked before Cedar or the store is asked:
each refusal names its field and the fix (broker/service/admin/{audit_reading,lease_listing})."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from broker.errors import InvalidRequest
from broker.service import audit_requests, lease_requests
from broker.store import LIVE_STATES, LeaseState

AT = datetime(2026, 12, 7, tzinfo=UTC)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: audit_requests.page_size(0), "page_size"),
        (lambda: audit_requests.page_size(501), "page_size"),
        (lambda: audit_requests.record_filter(["a"] * 21, None, None, None, None), "actions"),
        (lambda: audit_requests.record_filter(["Rotate"], None, None, None, None), "actions[0]"),
        (lambda: audit_requests.record_filter([], "x" * 254, None, None, None), "principal"),
        (lambda: audit_requests.record_filter([], None, "", None, None), "lease_id"),
        (lambda: audit_requests.record_filter([], None, None, AT, AT), "until"),
        (lambda: audit_requests.page_token("12x"), "page_token"),
        (lambda: lease_requests.page_size(501), "page_size"),
        (lambda: lease_requests.lease_states(["active", "gone"]), "states[1]"),
        (lambda: lease_requests.group_fields(["cluster", "pod"]), "group_by[1]"),
        (lambda: lease_requests.group_fields(["cluster", "cluster"]), "group_by"),
        (
            lambda: lease_requests.group_fields(["cluster", "role", "state", "namespace"]),
            "group_by",
        ),
        (lambda: lease_requests.page_token("x" * 254), "page_token"),
    ],
)
def test_out_of_bounds_is_refused_naming_the_field(call: object, field: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        call()  # type: ignore[operator]
    assert refused.value.field == field


def test_within_bounds_the_defaults_apply() -> None:
    assert audit_requests.page_size(None) == 100
    assert audit_requests.page_token("") is None
    assert audit_requests.page_token("42") == 42
    wanted = audit_requests.record_filter(["rotate", "lease.revoked"], "alice", None, AT, None)
    assert wanted.actions == frozenset({"rotate", "lease.revoked"})
    assert lease_requests.lease_states([]) == LIVE_STATES
    assert lease_requests.lease_states(["revoking"]) == frozenset({LeaseState.REVOKING})
    assert lease_requests.group_fields(["cluster", "role"]) == ("cluster", "role")
