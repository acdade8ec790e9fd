"""The console's Starlette application: its routes, templates and stylesheet, behind the
Guard (security.py). Starlette because it is small, typed, maintained, and serves
server-rendered Jinja2 pages on asyncio, the loop the broker's gRPC client already uses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from .admin import AdminClient, Target
from .jobs import Jobs
from .pages import audit, grants, leases, overview
from .security import Gate, Guard

PACKAGE = Path(str(files("broker.console")))
STYLESHEET = (PACKAGE / "static" / "console.css").read_bytes()


async def stylesheet(request: Request) -> Response:
    return Response(STYLESHEET, media_type="text/css")


def create_app(target: Target, gate: Gate, operator: str) -> Guard:
    """The console for `operator`, calling the admin listener at `target`, guarded by
    `gate` (whose port the server listens on)."""
    client = AdminClient(target)
    running = Jobs(client)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await running.close()
        await client.close()

    app = Starlette(
        routes=[
            Route("/", overview.overview),
            Route("/leases", leases.search),
            Route("/leases/plan", leases.plan, methods=["POST"]),
            Route("/leases/run", leases.run, methods=["POST"]),
            Route("/jobs/{ident}", leases.job_page),
            Route("/grants", grants.inbox),
            Route("/grants/{ident}/{verb}", grants.decide, methods=["POST"]),
            Route("/audit", audit.trail),
            Route("/static/console.css", stylesheet),
        ],
        lifespan=lifespan,
    )
    app.state.admin = client
    app.state.jobs = running
    app.state.operator = operator
    app.state.templates = Jinja2Templates(directory=str(PACKAGE / "templates"))
    return Guard(app, gate)
