"""The access grants inbox: every grant the operator may see, newest first, with approve,
deny and revoke. The broker decides each (Cedar, and never the requester's own approval);
its answer, a refusal included, is shown as it gave it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from broker.api.v1 import access_pb2

from ..admin import Refused
from ..security import FormRefused, form, session
from .common import admin, render, when

STATES = {
    access_pb2.GRANT_STATE_PENDING: "pending",
    access_pb2.GRANT_STATE_APPROVED: "approved",
    access_pb2.GRANT_STATE_ISSUED: "issued",
    access_pb2.GRANT_STATE_DENIED: "denied",
    access_pb2.GRANT_STATE_EXPIRED: "expired",
    access_pb2.GRANT_STATE_REVOKED: "revoked",
}
VERBS = ("approve", "deny", "revoke")
MAX_ID = 64


async def inbox(request: Request) -> Response:
    try:
        found = await admin(request).grants()
    except Refused as refusal:
        return render(request, "grants.html", page="grants", refused=refusal.message, rows=[])
    rows = [
        {
            "id": grant.id,
            "state": STATES.get(grant.state, "unknown"),
            "role": grant.role,
            "requester": grant.requester,
            "reason": grant.reason,
            "minutes": grant.duration.seconds // 60,
            "requested_at": when(grant.requested_at),
            "expires_at": when(grant.expires_at),
            "decided_by": grant.decided_by,
        }
        for grant in found
    ]
    return render(request, "grants.html", page="grants", refused=None, rows=rows)


async def decide(request: Request) -> Response:
    verb, grant_id = request.path_params["verb"], request.path_params["ident"]
    current = session(request)
    try:
        await form(request)
    except FormRefused as refusal:
        return render(request, "refused.html", 403, refused=str(refusal), page="grants")
    if verb not in VERBS or not 1 <= len(grant_id) <= MAX_ID:
        return render(request, "refused.html", 404, refused="no such action", page="grants")
    try:
        grant = await admin(request).decide_grant(verb, grant_id)
    except Refused as refusal:
        why = f" ({refusal.reason})" if refusal.reason else ""
        current.flash("refused", f"{verb} refused{why}: {refusal.message}")
    else:
        current.flash("info", f"grant {grant.id} is {STATES.get(grant.state, 'unknown')}")
    return RedirectResponse("/grants", status_code=303)
