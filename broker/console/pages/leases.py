"""Lease search, and rotate or revoke by the same selector: a dry run first (what would
change, as the broker plans it), then a confirmation, then the run's live progress on the
job's page. Each step is the broker's own call, decided by Cedar as the operator."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from broker.api.v1 import rotation_pb2

from ..admin import Refused
from ..jobs import outcome_row
from ..security import FormRefused, form, session
from .common import (
    SELECTOR_FIELDS,
    STATES,
    FieldInvalid,
    admin,
    describe,
    jobs,
    render,
    selector_of,
    when,
)

VERBS = ("rotate", "revoke")
MAX_TOKEN = 253


async def search(request: Request) -> Response:
    query = dict(request.query_params)
    filled = {name: query.get(name, "") for name in SELECTOR_FIELDS}
    state = query.get("state", "")
    token = query.get("page_token", "")
    context: dict[str, Any] = {
        "page": "leases",
        "fields": filled,
        "state": state,
        "states": STATES,
    }
    try:
        _check(state, token)
        selector = selector_of(query, empty_is_all=True)
        found = await admin(request).list_leases(selector, [state] if state else [], token)
    except FieldInvalid as invalid:
        return render(request, "leases.html", 400, refused=str(invalid), **context)
    except Refused as refusal:  # listing refused; rotating or revoking may still be allowed
        return render(
            request,
            "leases.html",
            refused=refusal.message,
            described=describe(selector),
            **context,
        )
    rows = [
        {
            "id": listed.lease.id,
            "state": listed.lease.state,
            "cluster": listed.lease.cluster,
            "namespace": listed.lease.namespace,
            "service_account": listed.lease.service_account,
            "pod": listed.lease.pod,
            "role": listed.lease.role,
            "generation": listed.lease.generation,
            "expires_at": when(listed.expires_at, listed.HasField("expires_at")),
        }
        for listed in found.leases
    ]
    return render(
        request,
        "leases.html",
        rows=rows,
        described=describe(selector),
        next_token=found.next_page_token,
        **context,
    )


async def plan(request: Request) -> Response:
    """The dry run of a rotate or revoke: every lease the broker would touch."""
    chosen = await _chosen(request)
    if isinstance(chosen, Response):
        return chosen
    fields, verb, selector = chosen
    rows = []
    try:
        async for event in admin(request).selected(verb, selector, dry_run=True):
            if event.WhichOneof("event") == "lease":
                rows.append(outcome_row(event.lease))
    except Refused as refusal:
        return render(
            request, "refused.html", refused=refusal.message, reason=refusal.reason, page="leases"
        )
    hidden = {name: fields.get(name, "") for name in (*SELECTOR_FIELDS, "all")}
    return render(
        request,
        "plan.html",
        page="leases",
        verb=verb,
        rows=rows,
        described=describe(selector),
        hidden=hidden,
    )


async def run(request: Request) -> Response:
    """The confirmed run: started in the background; its page shows the progress."""
    chosen = await _chosen(request)
    if isinstance(chosen, Response):
        return chosen
    _, verb, selector = chosen
    job = jobs(request).start(verb, selector, describe(selector))
    session(request).flash("info", f"{verb} started for {job.selector}")
    return RedirectResponse(f"/jobs/{job.ident}", status_code=303)


async def job_page(request: Request) -> Response:
    job = jobs(request).get(request.path_params["ident"])
    if job is None:
        return render(request, "refused.html", 404, refused="no such run", page="leases")
    return render(request, "job.html", page="leases", job=job)


def _check(state: str, token: str) -> None:
    if state and state not in STATES:
        raise FieldInvalid(f"state: give one of {', '.join(STATES)}")
    if len(token) > MAX_TOKEN:
        raise FieldInvalid("page_token: follow the page's own link")


async def _chosen(
    request: Request,
) -> tuple[dict[str, str], str, rotation_pb2.LeaseSelector] | Response:
    """A rotate or revoke form's fields, verb and selector; or the page refusing it (403 for
    the form's origin or CSRF token, 400 for a field)."""
    try:
        fields = await form(request)
        verb = _verb(fields)
        selector = selector_of(fields, empty_is_all=False)
    except FormRefused as refusal:
        return render(request, "refused.html", 403, refused=str(refusal), page="leases")
    except FieldInvalid as invalid:
        return render(request, "refused.html", 400, refused=str(invalid), page="leases")
    return fields, verb, selector


def _verb(fields: dict[str, str]) -> str:
    verb = fields.get("verb", "")
    if verb not in VERBS:
        raise FieldInvalid("verb: rotate or revoke")
    return verb
