"""Every reason the broker's errors carry is a value of the API's ErrorReason enum."""

import inspect

import pytest

from broker import errors
from broker.api.v1 import errors_pb2

ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.KeyferryError) and cls is not errors.KeyferryError
]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_reason_is_in_the_api_enum(cls: type[errors.KeyferryError]) -> None:
    assert f"ERROR_REASON_{cls.reason}" in errors_pb2.ErrorReason.keys()  # noqa: SIM118 - an enum wrapper, not a dict


def test_invalid_request_names_the_field() -> None:
    error = errors.InvalidRequest("role", "unknown role 'x'; list roles with `keyferry roles list`")
    assert error.field == "role"
    assert str(error).startswith("role: ")


def test_temporary_errors_carry_a_retry_hint() -> None:
    error = errors.VaultUnavailable("Vault is sealed", retry_after=5)
    assert isinstance(error, errors.TemporaryError)
    assert error.retry_after == 5
    assert error.reason == "VAULT_UNAVAILABLE"
