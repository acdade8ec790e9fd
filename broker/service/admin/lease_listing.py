"""LeasesService's flows: an operator lists and counts leases by the selector `keyferry
rotate` takes (selection.py), and by state, without changing any.

Each call is one decision of Cedar's action `audit` on the `Broker` (reading what the
broker keeps about the fleet, as reading the audit trail is), audited as `leases.list` or
`leases.count` before anything is read. Pages hold 1 to 500 leases, by lease id (keyset
pages: the next page starts after the last id); a count groups by at most three of
cluster, namespace, service account, role and state, and returns at most 1,000 groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from broker.audit import AuditAction
from broker.errors import InvalidRequest
from broker.policy import Action, BrokerResource, Operator
from broker.store import LIVE_STATES, LeaseRecord, LeaseState

from ..core import Core
from .selection import LeaseSelector

DEFAULT_PAGE = 100
MAX_PAGE = 500
MAX_GROUPS = 1000
GROUP_FIELDS = ("cluster", "namespace", "service_account", "role", "state")
MAX_GROUP_BY = 3
MAX_TOKEN = 253


def lease_states(names: Sequence[str]) -> frozenset[LeaseState]:
    """The states asked for by name; the live ones (pending, active) when none."""
    if not names:
        return LIVE_STATES
    known = {state.value for state in LeaseState}
    for index, name in enumerate(names):
        if name not in known:
            raise InvalidRequest(
                f"states[{index}]", f"is not a lease state; give any of {', '.join(sorted(known))}"
            )
    return frozenset(LeaseState(name) for name in names)


def group_fields(names: Sequence[str]) -> tuple[str, ...]:
    if len(names) > MAX_GROUP_BY:
        raise InvalidRequest("group_by", f"group by at most {MAX_GROUP_BY} fields")
    for index, name in enumerate(names):
        if name not in GROUP_FIELDS:
            raise InvalidRequest(f"group_by[{index}]", f"give any of {', '.join(GROUP_FIELDS)}")
    if len(set(names)) != len(names):
        raise InvalidRequest("group_by", "name each field once")
    return tuple(names)


def page_size(size: int | None) -> int:
    if size is None:
        return DEFAULT_PAGE
    if not 1 <= size <= MAX_PAGE:
        raise InvalidRequest("page_size", f"must be between 1 and {MAX_PAGE}; 0 for {DEFAULT_PAGE}")
    return size


def page_token(token: str) -> str | None:
    if not token:
        return None
    if len(token) > MAX_TOKEN:
        raise InvalidRequest("page_token", "give the next_page_token of the previous page")
    return token


@dataclass(frozen=True)
class LeasePage:
    leases: list[LeaseRecord]
    next_after: str | None


@dataclass(frozen=True)
class LeaseGroup:
    """One group of a count: the grouped fields' values, and how many leases."""

    values: dict[str, str]
    leases: int


@dataclass(frozen=True)
class LeaseCount:
    total: int
    groups: list[LeaseGroup]
    truncated: bool


class LeaseListing:
    def __init__(self, core: Core) -> None:
        self._gate = core.gate
        self._audit = core.audit
        self._leases = core.store.leases

    async def list_page(
        self,
        operator: Operator,
        selector: LeaseSelector,
        states: frozenset[LeaseState],
        *,
        after: str | None,
        size: int,
        request_id: str,
    ) -> LeasePage:
        """A page of the selected leases in `states`, by lease id, after `after`."""
        await self._require(operator, AuditAction.LEASES_LIST, request_id)
        page = await self._leases.select_page(selector.query(states), after, size + 1)
        more = len(page) > size
        page = page[:size]
        return LeasePage(page, page[-1].id if more and page else None)

    async def count(
        self,
        operator: Operator,
        selector: LeaseSelector,
        states: frozenset[LeaseState],
        group_by: tuple[str, ...],
        request_id: str,
    ) -> LeaseCount:
        """How many selected leases are in `states`, in total and per group."""
        await self._require(operator, AuditAction.LEASES_COUNT, request_id)
        query = selector.query(states)
        [(_, total)] = await self._leases.count_grouped(query, (), 1)
        if not group_by:
            return LeaseCount(total, [], truncated=False)
        rows = await self._leases.count_grouped(query, group_by, MAX_GROUPS + 1)
        groups = [
            LeaseGroup(dict(zip(group_by, values, strict=True)), leases)
            for values, leases in rows[:MAX_GROUPS]
        ]
        return LeaseCount(total, groups, truncated=len(rows) > MAX_GROUPS)

    async def _require(self, operator: Operator, action: AuditAction, request_id: str) -> None:
        await self._gate.require(
            operator,
            Action.AUDIT,
            BrokerResource(),
            lambda decision: self._audit.operator_decision(operator, action, decision, request_id),
            f"no policy permits operator {operator.name!r} to list or count leases (Cedar "
            "action 'audit' on Broker); ask for a Cedar permit",
        )
