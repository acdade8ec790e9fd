"""Every reason the broker's errors carry is a value of the API's ErrorReason enum."""

import importlib
import inspect
import pkgutil

import pytest

import broker
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


ALEMBIC_SCRIPTS = "broker.store.migrations"  # run by alembic only, with its context set


def every_subclass() -> list[type[errors.KeyferryError]]:
    """Every subclass of the error tree, wherever in broker/ it is defined: every module is
    imported first, so a subclass in a module nothing else imports is not missed."""
    for module in pkgutil.walk_packages(broker.__path__, "broker."):
        if not module.name.startswith(ALEMBIC_SCRIPTS):
            importlib.import_module(module.name)
    found: list[type[errors.KeyferryError]] = []
    todo = [errors.KeyferryError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.append(sub)
                todo.append(sub)
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


EVERY_SUBCLASS = every_subclass()


def test_the_walk_finds_the_subclasses_outside_errors_py() -> None:
    outside = {c.__module__ for c in EVERY_SUBCLASS} - {"broker.errors"}
    assert {
        "broker.store.errors",
        "broker.clusters.client",
        "broker.service.workload.watch",
    } <= outside


@pytest.mark.parametrize(
    "cls", EVERY_SUBCLASS, ids=lambda c: f"{c.__module__.removeprefix('broker.')}.{c.__name__}"
)
def test_every_subclass_reason_is_in_the_api_enum(cls: type[errors.KeyferryError]) -> None:
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
