"""The one table from hvac and requests exceptions to the broker's error tree."""

from __future__ import annotations

import hvac.exceptions as vault
import pytest
import requests

from broker import errors
from broker.backends.vault_errors import MESSAGE_CAP, RETRY_SEALED, capped, translate


@pytest.mark.parametrize(
    ("foreign", "expected"),
    [
        (vault.VaultDown(errors=["Vault is sealed"]), errors.VaultUnavailable),
        (vault.InternalServerError("boom"), errors.VaultUnavailable),
        (vault.BadGateway("proxy"), errors.VaultUnavailable),
        (vault.VaultNotInitialized("init first"), errors.VaultUnavailable),
        (vault.RateLimitExceeded("slow down"), errors.VaultUnavailable),
        (vault.PreconditionFailed("not yet"), errors.VaultUnavailable),
        (vault.UnexpectedError("418"), errors.VaultUnavailable),
        (vault.Forbidden(errors=["permission denied"]), errors.PermissionDenied),
        (vault.Unauthorized("no"), errors.PermissionDenied),
        (vault.InvalidPath("nothing here"), errors.NotFound),
        (vault.InvalidRequest(errors=["lease is not renewable"]), errors.InvalidRequest),
        (vault.UnsupportedOperation("no"), errors.InvalidRequest),
        (vault.ParamValidationError("bad"), errors.InvalidRequest),
        (requests.ConnectionError("refused"), errors.VaultUnavailable),
        (requests.ConnectTimeout("slow"), errors.VaultUnavailable),
        (requests.ReadTimeout("slow"), errors.VaultUnavailable),
        (requests.exceptions.JSONDecodeError("not json", "<html>", 0), errors.VaultUnavailable),
        (requests.exceptions.SSLError("bad certificate"), errors.VaultUnavailable),
        (TimeoutError(), errors.VaultUnavailable),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.__name__,
)
def test_each_foreign_exception_has_one_broker_error(
    foreign: BaseException, expected: type[errors.KeyferryError]
) -> None:
    error = translate(foreign)
    assert type(error) is expected
    assert error.message


def test_a_sealed_vault_hints_a_longer_retry() -> None:
    error = translate(vault.VaultDown(errors=["Vault is sealed"]))
    assert isinstance(error, errors.VaultUnavailable)
    assert error.retry_after == RETRY_SEALED
    assert "Vault is sealed" in error.message


def test_vaults_message_is_kept_but_capped() -> None:
    error = translate(vault.InvalidRequest(errors=["x" * 5000]))
    assert isinstance(error, errors.InvalidRequest)
    assert error.field == "vault"
    assert len(error.message) < MESSAGE_CAP + 100
    assert capped("a\n  b") == "a b"


def test_unknown_exceptions_are_not_swallowed() -> None:
    assert translate(KeyError("x")) is None
    mine = errors.NotFound("already ours")
    assert translate(mine) is mine
