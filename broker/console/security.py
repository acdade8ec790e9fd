"""What keeps the console the operator's alone, though it listens on loopback where every
local process and every web page the browser opens could reach it:

- the Host header must be the console's own (127.0.0.1:<port> or localhost:<port>), so a
  DNS name rebound to 127.0.0.1 by a web page gets nothing (400);
- the URL the command prints carries a one-time token: the first request with it gets the
  session cookie (HttpOnly, SameSite=Strict) and a redirect to the same page without the
  token; the token is then spent. A request without the session is refused (403);
- every POST carries the session's CSRF token in a form field, and an Origin header, when
  the browser sends one, must be the console's own (403 otherwise); a form body is at most
  16 KiB;
- every answer says no-store, no framing, a referrer only to the console itself (with
  no-referrer a browser sends `Origin: null` on a form), and a Content-Security-Policy
  that allows the console's own stylesheet and nothing else (no script at all).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "keyferry_console"
MAX_BODY = 16 * 1024
MAX_FIELDS = 100
HEADERS = {
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


class FormRefused(Exception):
    """A POST that is not the console's own form: no CSRF token, a foreign origin, too big."""


@dataclass
class Session:
    """The operator's browser session: its CSRF token and the messages of the next page."""

    ident: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    flashes: list[tuple[str, str]] = field(default_factory=list)

    def flash(self, kind: str, text: str) -> None:
        self.flashes = [*self.flashes[-9:], (kind, text)]

    def take_flashes(self) -> list[tuple[str, str]]:
        taken, self.flashes = self.flashes, []
        return taken


class Gate:
    """The console's one token and the one session it is exchanged for."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.port = port
        self.token: str | None = token or secrets.token_urlsafe(32)
        self.hosts = frozenset({f"127.0.0.1:{port}", f"localhost:{port}"})
        self.origins = frozenset(f"http://{host}" for host in self.hosts)
        self.session: Session | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/?token={self.token}"

    def exchange(self, token: str) -> Session | None:
        """The new session for the right token, once; None for any other or a second use."""
        if self.token is None or not hmac.compare_digest(token.encode(), self.token.encode()):
            return None
        self.token = None
        self.session = Session()
        return self.session

    def session_of(self, cookie: str | None) -> Session | None:
        session = self.session
        if session is None or cookie is None:
            return None
        return session if hmac.compare_digest(cookie.encode(), session.ident.encode()) else None


def session(request: Request) -> Session:
    """The request's session (the middleware let only requests with one through)."""
    found: Session = request.scope["keyferry.session"]
    return found


async def form(request: Request) -> dict[str, str]:
    """A POST's form fields, once its origin and CSRF token are checked; FormRefused if not."""
    origin = request.headers.get("origin")
    gate: Gate = request.scope["keyferry.gate"]
    if origin is not None and origin not in gate.origins:
        raise FormRefused(f"a form from {origin} is not the console's own")
    if request.headers.get("content-type", "").split(";")[0] != (
        "application/x-www-form-urlencoded"
    ):
        raise FormRefused("the console takes its own forms only")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise FormRefused(f"a form of more than {MAX_BODY} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormRefused("the form does not parse") from exc
    fields = dict(pairs)
    token = fields.pop("csrf", "")
    if not hmac.compare_digest(token.encode(), session(request).csrf.encode()):
        raise FormRefused("the form carries no valid CSRF token; reload the page")
    return fields


class Guard:
    """ASGI middleware: the Host check, the token exchange, the session, the headers."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self._app = app
        self._gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._check(request)
        if refusal is not None:
            await _with_headers(refusal)(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in HEADERS.items()]
                message["headers"] = headers
            await send(message)

        await self._app(scope, receive, send_with_headers)

    def _check(self, request: Request) -> Response | None:
        if request.headers.get("host") not in self._gate.hosts:
            return PlainTextResponse(
                "this console answers only to 127.0.0.1 and localhost on its own port", 400
            )
        token = request.query_params.get("token")
        if token is not None:
            new = self._gate.exchange(token)
            if new is None:
                return PlainTextResponse(
                    "this link was used already or is wrong: start `keyferry console` again "
                    "for a new one",
                    403,
                )
            response = RedirectResponse(request.url.path, status_code=303)
            response.set_cookie(COOKIE, new.ident, httponly=True, samesite="strict", path="/")
            return response
        cookies = SimpleCookie(request.headers.get("cookie", ""))
        morsel = cookies.get(COOKIE)
        current = self._gate.session_of(morsel.value if morsel is not None else None)
        if current is None:
            return PlainTextResponse(
                "open the link `keyferry console` printed (it carries a one-time token)", 403
            )
        request.scope["keyferry.session"] = current
        request.scope["keyferry.gate"] = self._gate
        return None


def _with_headers(response: Response) -> Response:
    for key, value in HEADERS.items():
        response.headers[key] = value
    return response
