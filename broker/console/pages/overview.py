"""The fleet overview: clusters and their health (API server, last contact, JWKS age, the pod
watch's state), leases by cluster and role, pending
revocations, and the activity of the last hours. Each panel asks the broker on its own,
so a panel Cedar refuses shows the refusal and the others still show."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from broker.api.v1 import clusters_pb2, rotation_pb2

from ..admin import Refused
from ..chart import Minute, activity_svg
from .common import admin, age, render, when

HOURS = 3
WATCH = {
    clusters_pb2.WATCH_STATE_NOT_STARTED: "not started",
    clusters_pb2.WATCH_STATE_WATCHING: "watching",
    clusters_pb2.WATCH_STATE_RECONNECTING: "reconnecting",
}


async def overview(request: Request) -> Response:
    client = admin(request)
    every = rotation_pb2.LeaseSelector(all=True)
    clusters, by_place, revoking, activity = await asyncio.gather(
        _panel(client.clusters()),
        _panel(client.count_leases(every, group_by=("cluster", "role"))),
        _panel(client.count_leases(every, states=("revoking",))),
        _panel(client.activity(HOURS)),
        return_exceptions=False,
    )
    now = datetime.now(UTC)
    context: dict[str, Any] = {"page": "overview", "hours": HOURS}
    context["clusters"] = _or_refusal(
        clusters,
        lambda found: [
            {
                "name": c.name,
                "server": c.server,
                "source": "config" if c.source == 1 else "registered",
                "last_contact": when(c.last_contact, c.HasField("last_contact")),
                "contact_age": age(c.last_contact, now),
                "jwks_age": age(c.jwks_fetched_at, now),
                "key_count": len(c.key_ids),
                "active_leases": c.active_leases,
                "watch": WATCH.get(c.pod_watch.state, "unknown"),
                "watch_error": c.pod_watch.last_error,
                "watch_since": age(c.pod_watch.since, now),
                "last_event": age(c.pod_watch.last_event, now),
            }
            for c in found
        ],
    )
    context["by_place"] = _or_refusal(
        by_place,
        lambda found: {
            "total": found.total,
            "groups": [(g.values[0], g.values[1], g.leases) for g in found.groups],
        },
    )
    context["revoking"] = _or_refusal(revoking, lambda found: found.total)
    context["activity"] = _or_refusal(
        activity,
        lambda found: activity_svg(
            [
                Minute(
                    m.start.ToDatetime(tzinfo=UTC).strftime("%H:%M"),
                    m.issued,
                    m.rotated,
                    m.revoked,
                    m.refused,
                )
                for m in found.minutes
            ]
        ),
    )
    return render(request, "overview.html", **context)


async def _panel(call: Any) -> Any:
    try:
        return await call
    except Refused as refusal:
        return refusal


def _or_refusal(found: Any, shape: Any) -> dict[str, Any]:
    if isinstance(found, Refused):
        return {"refused": found.message, "reason": found.reason}
    return {"refused": None, "value": shape(found)}
