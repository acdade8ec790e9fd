"""Which leases an operator's rotate or revoke reaches: a selector, validated once, and the
selection it resolves to (every lease found and decided by Cedar before any is touched).

A selector is any mix of cluster, namespace, service account, pod, role and lease id;
fields combine with AND, the values of one field with OR. An empty selector is refused:
selecting the whole fleet must be said (`all`), never fallen into by a forgotten flag.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from broker.audit import AuditAction, AuditEvent
from broker.errors import InvalidRequest, PermissionDenied
from broker.models import VaultLease
from broker.policy import Action, Operator
from broker.store import LeaseQuery, LeaseRecord, LeaseState

from ..common.audit_trail import AuditTrail, decided, operator_principal
from ..common.lease_resource import lease_resource
from ..core import Core

T = TypeVar("T")
R = TypeVar("R")
PAGE = 500
MAX_CONCURRENCY = 64
MAX_VALUES = 1000
DENIED_SHOWN = 5
Value = Annotated[str, StringConstraints(min_length=1, max_length=253)]
Values = Annotated[tuple[Value, ...], Field(max_length=MAX_VALUES)]
FIELDS = ("clusters", "namespaces", "service_accounts", "pods", "roles", "lease_ids")
NOTHING_SELECTED_HINT = (
    "give at least one of cluster, namespace, service account, pod, role or lease id "
    "(--cluster, --namespace, --service-account, --pod, --role, --lease); to select every "
    "live lease, say so explicitly with `all` (--all)"
)


def check_concurrency(concurrency: int | None, default: int) -> int:
    """How many leases a run handles at once: the caller's choice, or the broker's default."""
    if concurrency is None:
        return default
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InvalidRequest(
            "concurrency", f"must be between 1 and {MAX_CONCURRENCY}; unset for the default"
        )
    return concurrency


class LeaseSelector(BaseModel):
    """What an operator selects; `all` alone selects every live lease."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    clusters: Values = ()
    namespaces: Values = ()
    service_accounts: Values = ()
    pods: Values = ()
    roles: Values = ()
    lease_ids: Values = ()
    all: bool = False

    @classmethod
    def parse(cls, **fields: object) -> LeaseSelector:
        """Validate a caller's selector; InvalidRequest names the field and the fix."""
        try:
            selector = cls.model_validate(fields)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise InvalidRequest(
                f"selector.{where}",
                f"{error['msg']}; values are names of at most 253 characters, at most "
                f"{MAX_VALUES} per field",
            ) from None
        if selector.empty and not selector.all:
            raise InvalidRequest("selector", f"selects nothing: {NOTHING_SELECTED_HINT}")
        if selector.all and not selector.empty:
            raise InvalidRequest(
                "selector.all", "select every lease with `all` alone, or drop it and narrow"
            )
        return selector

    @property
    def empty(self) -> bool:
        return not any(getattr(self, name) for name in FIELDS)

    def query(self, states: frozenset[LeaseState]) -> LeaseQuery:
        return LeaseQuery(
            clusters=frozenset(self.clusters),
            namespaces=frozenset(self.namespaces),
            service_accounts=frozenset(self.service_accounts),
            pod_names=frozenset(self.pods),
            roles=frozenset(self.roles),
            lease_ids=frozenset(self.lease_ids),
            states=states,
        )

    def describe(self) -> str:
        """The selector as one line for logs and messages (`cluster=a,b role=x`)."""
        if self.all:
            return "all"
        parts = [
            f"{name}={','.join(getattr(self, name))}" for name in FIELDS if getattr(self, name)
        ]
        return " ".join(parts)


@dataclass(frozen=True)
class Selected:
    """A selected lease and its Vault handle (None while it is pending)."""

    lease: LeaseRecord
    vault_lease: VaultLease | None


class Selection:
    """Resolves a selector to leases, page by page, and decides Cedar on each."""

    def __init__(self, core: Core) -> None:
        self._gate = core.gate
        self._audit = core.audit
        self._leases = core.store.leases

    async def leases(
        self, selector: LeaseSelector, states: frozenset[LeaseState]
    ) -> AsyncIterator[Selected]:
        """Every lease the selector reaches in `states`, by lease id."""
        query = selector.query(states)
        after: str | None = None
        while True:
            page = await self._leases.select_page(query, after, PAGE)
            handles = await self._leases.vault_handles([lease.id for lease in page])
            for lease in page:
                raw = handles.get(lease.id)
                yield Selected(lease, VaultLease.model_validate(raw) if raw else None)
            if len(page) < PAGE:
                return
            after = page[-1].id

    async def plan(
        self,
        operator: Operator,
        action: Action,
        selector: LeaseSelector,
        states: frozenset[LeaseState],
        request_id: str,
        *,
        dry_run: bool,
    ) -> list[Selected]:
        """The start of a rotate or revoke by selector: one record naming the operator and
        the selector (`<action>.plan` for a dry run, `<action>.selected` otherwise), then
        every selected lease decided (each decision audited unless a dry run)."""
        verb = AuditAction(f"{action.value}.plan" if dry_run else f"{action.value}.selected")
        await audit_selector(self._audit, operator, verb, selector, request_id)
        return await self.decide_all(
            operator, action, selector, states, request_id, audited=not dry_run
        )

    async def decide_all(
        self,
        operator: Operator,
        action: Action,
        selector: LeaseSelector,
        states: frozenset[LeaseState],
        request_id: str,
        *,
        audited: bool,
    ) -> list[Selected]:
        """Every selected lease, each decided (and audited when `audited`); PermissionDenied
        naming the first few denied leases when any is, before anything changes."""
        chosen: list[Selected] = []
        denied: list[str] = []
        who = operator_principal(operator)
        async for selected in self.leases(selector, states):
            resource = lease_resource(selected.lease, selected.vault_lease)
            record = partial(
                self._audit.decision_on_lease,
                who,
                decided(action),
                lease=selected.lease,
                request_id=request_id,
            )
            decision = await self._gate.decide(
                operator, action, resource, record if audited else None
            )
            if not decision.allowed:
                denied.append(selected.lease.id)
                continue
            chosen.append(selected)
        if denied:
            shown = ", ".join(denied[:DENIED_SHOWN])
            more = f" and {len(denied) - DENIED_SHOWN} more" if len(denied) > DENIED_SHOWN else ""
            raise PermissionDenied(
                f"no policy permits operator {operator.name!r} to {action.value} "
                f"{len(denied)} of the selected leases ({shown}{more}); nothing was changed. "
                "Narrow the selector or ask for a Cedar permit"
            )
        return chosen


class Outcome(StrEnum):
    """What happened to one selected lease."""

    PLANNED = "planned"  # dry run: would be rotated or revoked
    ROTATED = "rotated"
    ALREADY_ROTATED = "already_rotated"  # a newer generation existed already
    REVOKED = "revoked"
    QUEUED = "queued"  # revocation failed now; queued and retried until it succeeds
    FAILED = "failed"


@dataclass(frozen=True)
class Planned:
    """The selection is resolved and decided: `matched` leases follow."""

    matched: int


@dataclass(frozen=True)
class LeaseProgress:
    """One lease done; `successor` is its new generation after a rotation."""

    lease: LeaseRecord
    outcome: Outcome
    successor: LeaseRecord | None = None
    error: str | None = None


@dataclass(frozen=True)
class Summary:
    """The end of a run. `pending`: rotated-away leases still waiting for the pod's Ack
    or their grace period (a rotation), or revocations queued for retry (a revoke)."""

    matched: int
    done: int
    failed: int
    pending: int
    dry_run: bool


SelectionEvent = Planned | LeaseProgress | Summary


def planned_only(chosen: Sequence[Selected]) -> Iterator[SelectionEvent]:
    """What a dry run reports: each chosen lease as planned, then its summary."""
    for selected in chosen:
        yield LeaseProgress(selected.lease, Outcome.PLANNED)
    yield Summary(len(chosen), 0, 0, 0, dry_run=True)


async def audit_selector(
    audit: AuditTrail,
    operator: Operator,
    action: AuditAction,
    selector: LeaseSelector,
    request_id: str,
) -> None:
    """One record naming the operator and what it selected; the per-lease decisions and
    changes that follow carry the same request id."""
    fields: dict[str, tuple[str, ...]] = (
        {"all": ()}
        if selector.all
        else {n: getattr(selector, n) for n in FIELDS if getattr(selector, n)}
    )
    await audit.record(
        AuditEvent(
            who=operator_principal(operator),
            action=action,
            request_id=request_id,
            selector=fields,  # type: ignore[arg-type]
        )
    )


async def run_batched(
    items: Sequence[T], workers: int, step: Callable[[T], Awaitable[R]]
) -> AsyncGenerator[R]:
    """`step` over every item, at most `workers` at once; progress in the order they finish.

    When the consumer goes away (the client cancelled, the broker stops), no further item
    starts but those under way finish: a rotation cut between Vault and the store would
    leave a pending row and an unrecorded Vault lease for reconcile to clear up.
    """
    todo = iter(items)
    results: asyncio.Queue[R | BaseException] = asyncio.Queue()
    stopped = asyncio.Event()

    async def work() -> None:
        for item in todo:
            if stopped.is_set():
                return
            try:
                results.put_nowait(await step(item))
            except Exception as exc:  # handed to the consumer, which raises it
                results.put_nowait(exc)

    tasks = [asyncio.create_task(work()) for _ in range(min(workers, len(items)))]
    try:
        for _ in items:
            result = await results.get()
            if isinstance(result, BaseException):
                raise result
            yield result
    finally:
        stopped.set()
        await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
