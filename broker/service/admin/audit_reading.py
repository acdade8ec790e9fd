"""AuditService's flows: an operator reads the audit trail through the admin listener, has
the broker verify the chain against its signed checkpoints, and reads the activity per
minute, all computed from the trail itself (Prometheus counters keep no history).

Each call is one decision of Cedar's action `audit` on the `Broker`, audited before any
record is read (`audit.list`, `audit.verify`, `audit.activity`). What a call may ask is
bounded: a page holds 1 to 500 records, a filter names at most 20 actions, a call reads at
most `SCAN_LIMIT` records (a page that stops there says where to go on), and the activity
covers 1 to 24 hours.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.audit import (
    Activity,
    AuditAction,
    CheckpointSink,
    RecordFilter,
    RecordPage,
    RecordSource,
    VerifyReport,
    activity,
    read_page,
    verify,
)
from broker.backends import VaultClient
from broker.backends.transit import TransitSigner
from broker.errors import FailedPrecondition, InvalidRequest
from broker.policy import Action, BrokerResource, Operator

from ..core import Core

DEFAULT_PAGE = 100
MAX_PAGE = 500
MAX_ACTIONS = 20
MAX_NAME = 253
SCAN_LIMIT = 200_000
MAX_HOURS = 24
DEFAULT_HOURS = 3
ACTION_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Transit:
    """The transit key that signs the chain's checkpoints, when configured."""

    mount: str | None
    key: str | None


def page_size(size: int | None) -> int:
    """A caller's page size, or the default; InvalidRequest outside 1 to MAX_PAGE."""
    if size is None:
        return DEFAULT_PAGE
    if not 1 <= size <= MAX_PAGE:
        raise InvalidRequest("page_size", f"must be between 1 and {MAX_PAGE}; 0 for {DEFAULT_PAGE}")
    return size


def record_filter(
    actions: Sequence[str],
    principal: str | None,
    lease_id: str | None,
    since: datetime | None,
    until: datetime | None,
) -> RecordFilter:
    """A caller's filter, checked; InvalidRequest names the field and the fix."""
    if len(actions) > MAX_ACTIONS:
        raise InvalidRequest("actions", f"name at most {MAX_ACTIONS} actions")
    for index, action in enumerate(actions):
        if not ACTION_PATTERN.match(action):
            raise InvalidRequest(
                f"actions[{index}]",
                "is not an audit action; give one like `rotate` or `lease.revoked` "
                "(docs/security.md lists them)",
            )
    for field, value in (("principal", principal), ("lease_id", lease_id)):
        if value is not None and not 1 <= len(value) <= MAX_NAME:
            raise InvalidRequest(field, f"give a name of 1 to {MAX_NAME} characters, or none")
    if since is not None and until is not None and since >= until:
        raise InvalidRequest("until", "must be after `since`")
    return RecordFilter(frozenset(actions), principal, lease_id, since, until)


def page_token(token: str) -> int | None:
    """The `seq` a page token names (the record to read below); None for the first page."""
    if not token:
        return None
    if not token.isdigit() or len(token) > 19:
        raise InvalidRequest("page_token", "give the next_page_token of the previous page")
    return int(token)


class AuditReading:
    def __init__(
        self,
        core: Core,
        *,
        source: RecordSource,
        checkpoints: CheckpointSink,
        chain: str,
        vault: VaultClient,
        transit: Transit,
    ) -> None:
        self._gate = core.gate
        self._audit = core.audit
        self._clock = core.clock
        self._source = source
        self._checkpoints = checkpoints
        self._chain = chain
        self._vault = vault
        self._transit = transit

    async def list_records(
        self,
        operator: Operator,
        wanted: RecordFilter,
        *,
        before: int | None,
        size: int,
        request_id: str,
    ) -> RecordPage:
        """A page of records, newest first (`before`: the previous page's next token)."""
        await self._require(operator, AuditAction.AUDIT_LIST, "read the audit trail", request_id)
        return await asyncio.to_thread(
            read_page, self._source, wanted, before=before, size=size, scan_limit=SCAN_LIMIT
        )

    async def verify(self, operator: Operator, request_id: str) -> VerifyReport:
        """The chain checked against its transit-signed checkpoints, as `keyferry audit
        verify` checks it; FailedPrecondition when no transit key is configured."""
        await self._require(
            operator, AuditAction.AUDIT_VERIFY, "verify the audit trail", request_id
        )
        mount, key = self._transit.mount, self._transit.key
        if mount is None or key is None:
            raise FailedPrecondition(
                "the broker has no audit.transit_mount and audit.transit_key: without signed "
                "checkpoints a truncated trail cannot be told from a short one"
            )
        lines = await asyncio.to_thread(self._source.lines)
        checkpoints = await asyncio.to_thread(self._checkpoints.list, self._chain)

        def check(client: Any) -> VerifyReport:
            return verify(lines, checkpoints, TransitSigner(client, key, mount))

        report: VerifyReport = await self._vault.call(check)
        return report

    async def activity(self, operator: Operator, hours: int | None, request_id: str) -> Activity:
        """Per-minute counts over the last `hours` (1 to 24; default 3)."""
        hours = DEFAULT_HOURS if hours is None else hours
        if not 1 <= hours <= MAX_HOURS:
            hint = f"must be between 1 and {MAX_HOURS}; 0 for {DEFAULT_HOURS}"
            raise InvalidRequest("hours", hint)
        await self._require(operator, AuditAction.AUDIT_ACTIVITY, "read the activity", request_id)
        now = self._clock()
        since = now - timedelta(hours=hours)
        return await asyncio.to_thread(activity, self._source, since, now, SCAN_LIMIT)

    async def _require(
        self, operator: Operator, action: AuditAction, what: str, request_id: str
    ) -> None:
        await self._gate.require(
            operator,
            Action.AUDIT,
            BrokerResource(),
            lambda decision: self._audit.operator_decision(operator, action, decision, request_id),
            f"no policy permits operator {operator.name!r} to {what} (Cedar action 'audit' "
            "on Broker); ask for a Cedar permit",
        )
