"""The async face of hvac: every Vault call runs on a dedicated, sized thread pool with a deadline.

hvac (over requests) blocks, so it never runs on the event loop. The pool is the broker's
own, sized by settings (the loop's default pool has about six threads on two cores), and
its HTTP connection pool is sized to match so no connection is thrown away under load.
Every foreign exception leaves through `vault_errors.translate`, raised `from` the original.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests
from pydantic import BaseModel, ValidationError
from requests.adapters import HTTPAdapter

from broker import errors, tracing
from broker.clock import Clock, utcnow
from broker.models import describe_problems

from .settings import VaultSettings
from .vault_auth import AppRoleLogin, LoginMethod, StaticToken, TokenKeeper
from .vault_errors import capped, translate

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class VaultClient:
    def __init__(
        self,
        settings: VaultSettings,
        *,
        login: LoginMethod | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.clock = clock
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=settings.pool_size)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._session = session
        self._client = hvac.Client(
            url=settings.addr,
            timeout=settings.timeout,
            verify=str(settings.ca_file) if settings.ca_file else True,
            session=session,
        )
        self._pool = ThreadPoolExecutor(settings.pool_size, thread_name_prefix="keyferry-vault")
        self.keeper = TokenKeeper(login or _login_for(settings), clock=clock)

    def mount(self, name: str) -> str:
        """The Vault path of a keyferry mount: the prefix, then the role's mount name."""
        return f"{self.settings.mount_prefix}{name}"

    async def call(self, op: Callable[[Any], T], what: str = "call", path: str | None = None) -> T:
        """Run `op(hvac_client)` on the pool with a fresh token; broker errors only. Traced
        as one client span `vault <what>` with the path and Vault's request id (never the
        body: it holds secrets)."""
        loop = asyncio.get_running_loop()
        with tracing.span(f"vault {what}", {"vault.path": path}, kind="client") as step:
            try:
                async with asyncio.timeout(self.settings.timeout):
                    reply = await loop.run_in_executor(self._pool, self._authenticated, op)
            except Exception as exc:
                error = translate(exc)
                if error is None or error is exc:
                    raise
                raise error from exc
            if isinstance(reply, dict):
                request_id = reply.get("request_id")
                step.set("vault.request_id", request_id if isinstance(request_id, str) else None)
            return reply

    async def keep_token(self) -> None:
        """Renew (or log in again for) the broker's own token when it is due, whether or
        not anything else needs Vault: Vault revokes every lease a token created when that
        token expires, so a broker idle for its token's TTL would lose them all."""
        await self.call(lambda client: None, "token")

    async def read(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return _body(
            await self.call(lambda c: c.adapter.get(f"/v1/{path}", params=params), "read", path)
        )

    async def write(self, path: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        return _body(
            await self.call(lambda c: c.adapter.post(f"/v1/{path}", json=data or {}), "write", path)
        )

    async def list(self, path: str) -> list[str]:
        """The keys under `path`; none when Vault has nothing there."""
        body = _body(await self.call(lambda c: c.list(path), "list", path))
        keys = body.get("data", {}).get("keys", [])
        return [str(k) for k in keys] if isinstance(keys, list) else []

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._session.close()

    def _authenticated(self, op: Callable[[Any], T]) -> T:
        self.keeper.ensure(self._client)
        try:
            return op(self._client)
        except hvac.exceptions.Forbidden:
            # The token may have been revoked or forgotten (a Vault restart): log in once more.
            self.keeper.forget()
            self.keeper.ensure(self._client)
            return op(self._client)


def _login_for(settings: VaultSettings) -> LoginMethod:
    if settings.approle is not None:
        return AppRoleLogin(settings.approle)
    assert settings.token is not None  # noqa: S101 (VaultSettings' validator requires one of the two)
    return StaticToken(settings.token.get_secret_value())


def _body(reply: object) -> dict[str, Any]:
    """hvac gives a dict for a JSON answer, a Response for 204 and None for an empty list."""
    return reply if isinstance(reply, dict) else {}


def parse_reply(model: type[M], body: object, what: str) -> M:
    """Vault's answer as a typed model; a shape keyferry does not know is an internal error.

    The error names the fields that did not fit, never their values (a reply holds
    secrets), and is raised without its cause, whose text quotes them."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise errors.KeyferryError(
            f"Vault's answer to {what} is not what keyferry expects: "
            f"{capped(describe_problems(exc))}",
            reason="VAULT_UNAVAILABLE",
        ) from None
