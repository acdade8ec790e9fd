"""The console's guard over plain HTTP (httpx) against a real `keyferry console` process:
its first line is the URL; a request without the token or session, with a spent token, for
a foreign Host (DNS rebinding), or a POST without the CSRF token or from a foreign origin
is refused, and every answer carries the no-store, no-frame, same-origin referrer and CSP headers.
No broker is needed: each refusal comes before any call to one (the context names a port
where nothing listens)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from broker.cli.context import CliContext, save_context
from broker.identity.admin_pki import OPERATORS, create_ca
from tests.scene.console import Console, running_console


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    folder = tmp_path_factory.mktemp("console")
    ca = create_ca(folder / "admin-ca")
    ca.issue_operator("olga", ["security"])
    context = folder / "context.yaml"
    operators = folder / "admin-ca" / OPERATORS
    save_context(
        context,
        CliContext(
            address="127.0.0.1:9",  # discard: nothing answers
            ca=ca.cert_path,
            cert=operators / "olga.crt",
            key=operators / "olga.key",
        ),
    )
    with running_console(context) as running:
        yield running


def test_the_guard_refuses_what_is_not_the_operators_own_browser(console: Console) -> None:
    with httpx.Client(base_url=console.base, follow_redirects=False) as client:
        for path in ("/", "/leases", "/audit", "/static/console.css"):
            assert client.get(path).status_code == 403  # no token, no session
        rebound = client.get(f"/?token={console.token}", headers={"host": "evil.example"})
        assert rebound.status_code == 400
        rebound = client.get(
            f"/?token={console.token}", headers={"host": f"evil.example:{console.port}"}
        )
        assert rebound.status_code == 400  # and the token is not spent by it
        wrong = client.get("/?token=not-the-token")
        assert wrong.status_code == 403
        assert "keyferry_console" not in wrong.headers.get("set-cookie", "")

        exchanged = client.get(f"/leases?token={console.token}")
        assert exchanged.status_code == 303
        assert exchanged.headers["location"] == "/leases"
        cookie = exchanged.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert client.get(f"/?token={console.token}").status_code == 403  # spent

        page = client.get("/leases?cluster=a")
        assert page.status_code == 200
        assert "the broker did not answer" in page.text
        for name, value in {
            "cache-control": "no-store",
            "x-frame-options": "DENY",
            "referrer-policy": "same-origin",
        }.items():
            assert page.headers[name] == value
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "script" not in page.headers["content-security-policy"]
        assert client.get("/", headers={"host": "localhost.evil.example"}).status_code == 400

        form = {"verb": "rotate", "cluster": "a"}
        no_csrf = client.post("/leases/plan", data=form)
        assert no_csrf.status_code == 403
        assert "CSRF" in no_csrf.text
        bad = client.post("/leases/plan", data={**form, "csrf": "guessed"})
        assert bad.status_code == 403
        for verb in ("approve", "deny", "revoke"):
            assert client.post(f"/grants/g-1/{verb}", data={}).status_code == 403

        overview = client.get("/")
        assert overview.status_code == 200
        assert 'id="operator">olga<' in overview.text
        plan = client.post(
            "/leases/plan",
            data={**form, "csrf": _session_csrf(client)},
            headers={"origin": "http://evil.example"},
        )
        assert plan.status_code == 403
        too_big = client.post(
            "/leases/plan", data={"csrf": _session_csrf(client), "cluster": "a" * 20_000}
        )
        assert too_big.status_code == 403
        accepted = client.post("/leases/plan", data={**form, "csrf": _session_csrf(client)})
        assert accepted.status_code == 200  # past the guard: the broker's silence is shown
        assert "the broker did not answer" in accepted.text

    with httpx.Client(base_url=console.base) as stranger:
        assert stranger.get("/").status_code == 403  # another client has no session


def _session_csrf(client: httpx.Client) -> str:
    """The session's CSRF token, as every page carries it (a meta tag and each form)."""
    html = client.get("/").text
    marker = '<meta name="keyferry-csrf" content="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]
