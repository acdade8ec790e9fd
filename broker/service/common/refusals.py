"""Refused calls on the audit trail without one fsync per refusal.

Anyone who reaches the workload port can send a token that is refused; writing each
refusal as its own record would make every junk token cost a disk flush. The first
refusal of a kind (same principal, action, reason, peer and pod) is written at once, as
before, with its request id; the ones after it are only counted, and each `summary`
interval one record per kind says how many there were (`count`), from where (`peer`) and
why (`reason`). A kind that saw no refusal during an interval is forgotten, so its next
refusal is again written at once.

The peer is the gRPC peer's address without its port (a flood opens many connections
from one host). At most `max_kinds` kinds are kept apart; past that, refusals are counted
under their action and reason alone, so a flood from many addresses cannot grow memory.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass

from broker.audit import AuditAction, Principal

DEFAULT_MAX_KINDS = 1024
OTHER_PEERS = "other"

# The calling peer, set by the gRPC layer for each call (grpc's `context.peer()`).
CALLER_PEER: ContextVar[str | None] = ContextVar("keyferry_caller_peer", default=None)

_PORT = re.compile(r"^(?P<host>ipv4:[^:]+|ipv6:\[[^\]]*\]|ipv6:[0-9a-fA-F:]+?):\d+$")


def peer_host(peer: str | None) -> str | None:
    """`ipv4:10.0.0.7:53110` -> `ipv4:10.0.0.7`, `ipv6:[::1]:5000` -> `ipv6:[::1]`;
    other forms (`unix:...`) as they are; capped to a record's name length."""
    if not peer:
        return None
    found = _PORT.match(peer)
    return (found.group("host") if found else peer)[:253]


@dataclass(frozen=True)
class RefusalKind:
    who: Principal
    action: AuditAction
    reason: str
    peer: str | None
    cluster: str | None = None
    namespace: str | None = None
    pod: str | None = None
    pod_uid: str | None = None


class RefusalTally:
    """Which refusals are written at once and how many of each kind were only counted.
    Used from the event loop only."""

    def __init__(self, max_kinds: int = DEFAULT_MAX_KINDS) -> None:
        self._max_kinds = max_kinds
        self._counts: dict[RefusalKind, int] = {}

    def note(self, kind: RefusalKind) -> bool:
        """Count one refusal; True when it is the first of its kind and is to be written
        now, False when the next summary covers it."""
        if kind not in self._counts and len(self._counts) >= self._max_kinds:
            kind = RefusalKind(kind.who, kind.action, kind.reason, OTHER_PEERS)
        if kind in self._counts:
            self._counts[kind] += 1
            return False
        self._counts[kind] = 0
        return True

    def pending(self) -> bool:
        return any(self._counts.values())

    def take(self) -> list[tuple[RefusalKind, int]]:
        """The counted refusals by kind, since the last call; kinds that saw none are
        forgotten."""
        counted = [(kind, n) for kind, n in self._counts.items() if n]
        self._counts = {kind: 0 for kind, _ in counted}
        return counted
