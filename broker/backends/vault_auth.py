"""The broker's own Vault token: log in with AppRole, renew before expiry, log in again when
renewal cannot help (the token hit its max TTL, or Vault forgot it after a restart).

`TokenKeeper.ensure` runs on the Vault thread pool right before each call, and every
`vault.token_check_interval` on each replica (`VaultClient.keep_token`): Vault revokes every lease
a token created when that token expires, so a token renewed only when used would take all
of an idle broker's leases with it. A lock keeps concurrent calls from logging in twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import hvac.exceptions

from broker.clock import Clock, utcnow

from .settings import AppRoleSettings

RENEW_AT = 2 / 3  # of the token's TTL
USEFUL_RENEWAL = 1 / 3  # a renewal shorter than this share of the login TTL means max TTL is near


@dataclass(frozen=True)
class TokenGrant:
    token: str = field(repr=False)
    ttl: timedelta  # zero: the token never expires
    renewable: bool
    obtained_at: datetime

    def renew_due(self, now: datetime) -> bool:
        return bool(self.ttl) and now >= self.obtained_at + self.ttl * RENEW_AT


class LoginMethod(Protocol):
    def login(self, client: Any, now: datetime) -> TokenGrant: ...


def _grant(auth: dict[str, Any], now: datetime) -> TokenGrant:
    return TokenGrant(
        token=str(auth["client_token"]),
        ttl=timedelta(seconds=int(auth.get("lease_duration") or 0)),
        renewable=bool(auth.get("renewable")),
        obtained_at=now,
    )


class AppRoleLogin:
    def __init__(self, settings: AppRoleSettings) -> None:
        self._settings = settings

    def login(self, client: Any, now: datetime) -> TokenGrant:
        reply = client.auth.approle.login(
            role_id=self._settings.role_id,
            secret_id=self._settings.secret_id.get_secret_value(),
            mount_point=self._settings.mount,
            use_token=False,
        )
        return _grant(reply["auth"], now)


class StaticToken:
    """A fixed token (development): looked up once so its TTL and renewability are known."""

    def __init__(self, token: str) -> None:
        self._token = token

    def login(self, client: Any, now: datetime) -> TokenGrant:
        client.token = self._token
        data = client.auth.token.lookup_self()["data"]
        return TokenGrant(
            token=self._token,
            ttl=timedelta(seconds=int(data.get("ttl") or 0)),
            renewable=bool(data.get("renewable")),
            obtained_at=now,
        )


def renew_self(client: Any, increment: timedelta, now: datetime) -> TokenGrant:
    reply = client.auth.token.renew_self(increment=f"{int(increment.total_seconds())}s")
    return _grant(reply["auth"], now)


class TokenKeeper:
    def __init__(
        self,
        method: LoginMethod,
        *,
        clock: Clock = utcnow,
        renew: Callable[[Any, timedelta, datetime], TokenGrant] = renew_self,
    ) -> None:
        self._method = method
        self._clock = clock
        self._renew = renew
        self._lock = threading.Lock()
        self._grant: TokenGrant | None = None
        self._login_ttl = timedelta(0)
        self.logins = 0
        self.renewals = 0

    @property
    def grant(self) -> TokenGrant | None:
        return self._grant

    def ensure(self, client: Any) -> None:
        """Make `client.token` a token that is valid now and not about to expire."""
        with self._lock:
            now = self._clock()
            grant = self._grant
            if grant is not None and grant.renew_due(now):
                grant = self._renewal(client, grant, now)
            if grant is None:
                grant = self._method.login(client, now)
                self._login_ttl = grant.ttl
                self.logins += 1
            self._grant = grant
            client.token = grant.token

    def forget(self) -> None:
        """Drop the token so the next call logs in again (after Vault refused it)."""
        with self._lock:
            self._grant = None

    def _renewal(self, client: Any, grant: TokenGrant, now: datetime) -> TokenGrant | None:
        """The renewed grant, or None when only a new login helps."""
        if not grant.renewable:
            return None
        client.token = grant.token
        try:
            fresh = self._renew(client, self._login_ttl, now)
        except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest):
            return None  # expired or revoked
        if fresh.ttl < self._login_ttl * USEFUL_RENEWAL:
            return None  # capped by the token's max TTL
        self.renewals += 1
        return fresh
