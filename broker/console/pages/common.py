"""What every page shares: rendering with the session's messages and CSRF token, the
admin client and jobs of the app, and the lease selector read from a form or a query."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from broker.api.v1 import rotation_pb2

from ..admin import AdminClient
from ..jobs import Jobs
from ..security import session

SELECTOR_FIELDS = ("cluster", "namespace", "service_account", "pod", "role", "lease")
STATES = ("pending", "active", "revoking", "revoked", "failed")
MAX_VALUE = 253
MAX_VALUES = 50


class FieldInvalid(Exception):
    """A form or query field the console will not pass on; the message names it."""


def admin(request: Request) -> AdminClient:
    client: AdminClient = request.app.state.admin
    return client


def jobs(request: Request) -> Jobs:
    found: Jobs = request.app.state.jobs
    return found


def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    current = session(request)
    page: HTMLResponse = request.app.state.templates.TemplateResponse(
        request,
        template,
        {
            "operator": request.app.state.operator,
            "csrf": current.csrf,
            "flashes": current.take_flashes(),
            **context,
        },
        status_code=status,
    )
    return page


def values(fields: Mapping[str, str], name: str) -> list[str]:
    """A field's values, split at commas and spaces; FieldInvalid when too many or long."""
    text = fields.get(name, "")
    found = [v for v in text.replace(",", " ").split() if v]
    if len(found) > MAX_VALUES:
        raise FieldInvalid(f"{name}: at most {MAX_VALUES} values")
    for value in found:
        if len(value) > MAX_VALUE:
            raise FieldInvalid(f"{name}: a value of at most {MAX_VALUE} characters")
    return found


def selector_of(fields: Mapping[str, str], *, empty_is_all: bool) -> rotation_pb2.LeaseSelector:
    """The lease selector a form or query names; `all` when asked (or, for reading, when
    nothing is named)."""
    chosen = {name: values(fields, name) for name in SELECTOR_FIELDS}
    everything = fields.get("all") == "on" or (empty_is_all and not any(chosen.values()))
    return rotation_pb2.LeaseSelector(
        clusters=chosen["cluster"],
        namespaces=chosen["namespace"],
        service_accounts=chosen["service_account"],
        pods=chosen["pod"],
        roles=chosen["role"],
        lease_ids=chosen["lease"],
        all=everything,
    )


def describe(selector: rotation_pb2.LeaseSelector) -> str:
    if selector.all:
        return "every live lease"
    parts = []
    for name, found in (
        ("cluster", selector.clusters),
        ("namespace", selector.namespaces),
        ("service account", selector.service_accounts),
        ("pod", selector.pods),
        ("role", selector.roles),
        ("lease", selector.lease_ids),
    ):
        if found:
            parts.append(f"{name} {', '.join(found)}")
    return "; ".join(parts) or "nothing"


def when(stamp: timestamp_pb2.Timestamp, present: bool = True) -> str:
    """A time for people, UTC to the second; "-" when unset."""
    if not present or (stamp.seconds == 0 and stamp.nanos == 0):
        return "-"
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")


def age(stamp: timestamp_pb2.Timestamp, now: datetime) -> str:
    if stamp.seconds == 0:
        return "-"
    seconds = int((now - stamp.ToDatetime(tzinfo=UTC)).total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"
