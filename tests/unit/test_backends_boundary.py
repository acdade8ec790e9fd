"""The backends' edges: who may import hvac, what a backend refuses before asking Vault,
and secrets that never show in a repr."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr, ValidationError

import broker.backends
import broker.models
from broker import errors
from broker.backends import Backends, VaultClient, VaultSettings
from broker.backends.vault import parse_reply
from broker.errors import KeyferryError
from broker.models import (
    Credential,
    DatabaseRole,
    IssueContext,
    KvRole,
    VaultLease,
    describe_problems,
    validation_problems,
)

BROKER = Path(broker.__file__).parent
BACKENDS = BROKER / "backends"
FOREIGN_CLIENTS = {"hvac", "requests"}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_the_backends_import_hvac_or_requests() -> None:
    offenders = [
        str(path.relative_to(BROKER))
        for path in BROKER.rglob("*.py")
        if BACKENDS not in path.parents and imported_roots(path) & FOREIGN_CLIENTS
    ]
    assert offenders == []


@pytest.mark.parametrize("module", [broker.backends, broker.models], ids=lambda m: m.__name__)
def test_public_names_exist(module: object) -> None:
    names = getattr(module, "__all__", [])
    assert names == sorted(names)
    assert all(hasattr(module, name) for name in names)


def test_settings_need_exactly_one_way_to_log_in() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        VaultSettings(addr="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="ending in '/'"):
        VaultSettings(addr="http://127.0.0.1:1", token=SecretStr("t"), mount_prefix="keyferry")
    assert VaultSettings(addr="http://127.0.0.1:1", token=SecretStr("t")).pool_size == 16


@pytest.fixture
def backends() -> Iterator[Backends]:
    """Backends on an address nothing listens on: what they refuse, they refuse before Vault."""
    client = VaultClient(VaultSettings(addr="http://127.0.0.1:1", token=SecretStr("t")))
    yield Backends(client)
    client.close()


def lease(kind: str, **changes: object) -> VaultLease:
    base = VaultLease(
        role="r",
        kind="kv",
        mount="keyferry/x",
        renewable=False,
        ttl=timedelta(0),
        issued_at=datetime(2026, 1, 1, tzinfo=UTC),
        expires_at=None,
    )
    return base.model_copy(update={"kind": kind, **changes})


@pytest.mark.parametrize("kind", ["kv", "pki", "aws", "database"])
async def test_a_lease_vault_called_not_renewable_is_refused(backends: Backends, kind: str) -> None:
    item = lease(kind)
    with pytest.raises(errors.InvalidRequest) as refused:
        await backends.for_lease(item).renew(item)
    assert refused.value.field == "lease"


async def test_a_backend_refuses_a_role_of_another_kind(backends: Backends) -> None:
    kv = KvRole(name="app", kind="kv", mount="kv", path="a")
    db = DatabaseRole(name="db", kind="database", mount="db", vault_role="ro")
    context = IssueContext(cluster="a", namespace="n", service_account="s", pod="p")
    with pytest.raises(errors.InvalidRequest) as refused:
        await backends.for_role(db).issue(kv, context)
    assert refused.value.field == "kind"


async def test_revoking_a_kv_value_needs_no_vault(backends: Backends) -> None:
    await backends.for_lease(lease("kv")).revoke(lease("kv"))


async def test_a_pki_lease_without_serial_cannot_be_revoked(backends: Backends) -> None:
    with pytest.raises(errors.InvalidRequest):
        await backends.for_lease(lease("pki")).revoke(lease("pki"))


def test_credentials_never_show_their_values() -> None:
    credential = Credential(values={"password": SecretStr("hunter2")})
    assert "hunter2" not in repr(credential)
    assert "hunter2" not in str(credential)
    assert "hunter2" not in credential.model_dump_json()
    assert credential.reveal() == {"password": "hunter2"}


def test_a_reply_of_the_wrong_shape_names_fields_never_values() -> None:
    class Login(BaseModel):
        username: str
        password: str

    secret = "s3cret-in-the-reply"
    with pytest.raises(KeyferryError) as caught:
        parse_reply(Login, {"password": secret, "username": ["not", secret]}, "db/creds/ro")
    assert caught.value.message == (
        "Vault's answer to db/creds/ro is not what keyferry expects: "
        "username: Input should be a valid string"
    )
    assert caught.value.__cause__ is None  # a logged traceback would quote the input
    assert caught.value.__suppress_context__


def test_validation_problems_never_quote_the_input() -> None:
    class Reply(BaseModel):
        a: int
        b: int

    with pytest.raises(ValidationError) as caught:
        Reply.model_validate({"a": "hunter2", "b": "hunter3"})
    assert "hunter2" in str(caught.value)  # what pydantic itself does
    assert validation_problems(caught.value) == [
        "a: Input should be a valid integer, unable to parse string as an integer",
        "b: Input should be a valid integer, unable to parse string as an integer",
    ]
    assert describe_problems(caught.value, limit=1).endswith("; and 1 more")
    assert "hunter" not in describe_problems(caught.value)
