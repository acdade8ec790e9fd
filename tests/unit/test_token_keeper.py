"""When the broker renews its Vault token and when it logs in again, on controlled time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import hvac.exceptions
import pytest

from broker.backends.vault_auth import TokenGrant, TokenKeeper

TTL = timedelta(minutes=30)
START = datetime(2026, 1, 1, tzinfo=UTC)


class Client:
    token = ""


class Scene:
    """A fake login method and renew-self, counting calls, on a clock the test moves."""

    def __init__(self, *, ttl: timedelta = TTL, renewable: bool = True) -> None:
        self.now = START
        self.ttl = ttl
        self.renewable = renewable
        self.renew_ttl = ttl
        self.renew_error: Exception | None = None
        self.logins = 0

    def login(self, client: Any, now: datetime) -> TokenGrant:
        self.logins += 1
        return TokenGrant(f"token-{self.logins}", self.ttl, self.renewable, now)

    def renew(self, client: Any, increment: timedelta, now: datetime) -> TokenGrant:
        assert increment == self.ttl
        if self.renew_error:
            raise self.renew_error
        return TokenGrant(client.token, self.renew_ttl, True, now)

    def keeper(self) -> TokenKeeper:
        return TokenKeeper(self, clock=lambda: self.now, renew=self.renew)


def test_logs_in_once_then_reuses_the_token() -> None:
    scene, client = Scene(), Client()
    keeper = scene.keeper()
    keeper.ensure(client)
    scene.now += TTL / 2
    keeper.ensure(client)
    assert (keeper.logins, keeper.renewals, client.token) == (1, 0, "token-1")


def test_renews_past_two_thirds_of_the_ttl() -> None:
    scene, client = Scene(), Client()
    keeper = scene.keeper()
    keeper.ensure(client)
    scene.now += TTL * 0.7
    keeper.ensure(client)
    assert (keeper.logins, keeper.renewals, client.token) == (1, 1, "token-1")
    scene.now += TTL * 0.5  # the renewal counts from when it happened
    keeper.ensure(client)
    assert keeper.renewals == 1


def test_logs_in_again_when_renewal_is_capped_by_max_ttl() -> None:
    scene, client = Scene(), Client()
    keeper = scene.keeper()
    keeper.ensure(client)
    scene.renew_ttl = TTL / 10
    scene.now += TTL * 0.7
    keeper.ensure(client)
    assert (keeper.logins, keeper.renewals, client.token) == (2, 0, "token-2")


@pytest.mark.parametrize(
    "error", [hvac.exceptions.Forbidden("permission denied"), hvac.exceptions.InvalidRequest()]
)
def test_logs_in_again_when_vault_refuses_the_renewal(error: Exception) -> None:
    scene, client = Scene(), Client()
    keeper = scene.keeper()
    keeper.ensure(client)
    scene.renew_error = error
    scene.now += TTL * 0.7
    keeper.ensure(client)
    assert (keeper.logins, client.token) == (2, "token-2")


def test_a_token_that_cannot_be_renewed_is_replaced() -> None:
    scene, client = Scene(renewable=False), Client()
    keeper = scene.keeper()
    keeper.ensure(client)
    scene.now += TTL * 0.7
    keeper.ensure(client)
    assert (keeper.logins, keeper.renewals) == (2, 0)


def test_a_token_without_ttl_is_never_renewed() -> None:
    scene, client = Scene(ttl=timedelta(0)), Client()
    keeper = scene.keeper()
    keeper.ensure(client)
    scene.now += timedelta(days=365)
    keeper.ensure(client)
    assert (keeper.logins, keeper.renewals) == (1, 0)


def test_forget_forces_a_new_login() -> None:
    scene, client = Scene(), Client()
    keeper = scene.keeper()
    keeper.ensure(client)
    keeper.forget()
    keeper.ensure(client)
    assert client.token == "token-2"


def test_the_token_is_not_in_the_grants_repr() -> None:
    grant = TokenGrant("s.secret-token", TTL, True, START)
    assert "secret-token" not in repr(grant)
