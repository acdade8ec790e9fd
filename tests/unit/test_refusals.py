"""The refusal tally (broker.service.common.refusals): which refusals are written at once, how the
rest are counted, and that a flood from many addresses cannot grow it without bound."""

from __future__ import annotations

import pytest

from broker.audit import AuditAction
from broker.service.common.audit_trail import UNAUTHENTICATED
from broker.service.common.refusals import OTHER_PEERS, RefusalKind, RefusalTally, peer_host


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:10.0.0.7:53110", "ipv4:10.0.0.7"),
        ("ipv6:[::1]:5000", "ipv6:[::1]"),
        ("ipv6:[fd00::7]:443", "ipv6:[fd00::7]"),
        ("unix:/run/keyferry.sock", "unix:/run/keyferry.sock"),
        ("", None),
        (None, None),
    ],
)
def test_the_peer_is_its_address_without_the_port(peer: str | None, host: str | None) -> None:
    assert peer_host(peer) == host


def _kind(peer: str, reason: str = "TOKEN_INVALID") -> RefusalKind:
    return RefusalKind(UNAUTHENTICATED, AuditAction.ISSUE, reason, peer)


def test_the_first_of_a_kind_is_written_and_the_rest_counted_until_taken() -> None:
    tally = RefusalTally()
    assert tally.note(_kind("ipv4:10.0.0.1"))
    assert not any(tally.note(_kind("ipv4:10.0.0.1")) for _ in range(9))
    assert tally.note(_kind("ipv4:10.0.0.1", reason="CLUSTER_UNKNOWN"))
    assert tally.take() == [(_kind("ipv4:10.0.0.1"), 9)]
    assert not tally.note(_kind("ipv4:10.0.0.1"))  # still flooding: counted, not written
    assert tally.take() == [(_kind("ipv4:10.0.0.1"), 1)]
    assert tally.take() == []  # a quiet interval: forgotten
    assert tally.note(_kind("ipv4:10.0.0.1"))  # so the next one is written at once again


def test_kinds_past_the_bound_are_counted_by_action_and_reason() -> None:
    tally = RefusalTally(max_kinds=3)
    written = [tally.note(_kind(f"ipv4:10.0.0.{n}")) for n in range(100)]
    assert written.count(True) == 4  # three addresses, and then "other" once
    counted = dict(tally.take())
    assert counted == {_kind(OTHER_PEERS): 96}
