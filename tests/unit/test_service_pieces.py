"""The broker's small pure pieces: credential names, sealing, and protobuf conversion."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from broker.errors import InvalidRequest
from broker.models import Credential, load_roles
from broker.server import convert
from broker.service.common.sealing import CredentialSealer, SealBroken
from broker.service.workload.names import check_credential_name

ROLES = Path(__file__).parents[2] / "docs" / "examples" / "roles.yaml"


@pytest.mark.parametrize("name", ["orders-db", "db.json", "AWS_creds", "x" * 128])
def test_plain_file_names_are_accepted(name: str) -> None:
    assert check_credential_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "a\\b", "x" * 129, " a", "-rf"])
def test_anything_else_is_refused_naming_the_field(name: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_credential_name(name)
    assert caught.value.field == "credential_name"


def test_a_sealed_credential_opens_only_for_its_own_lease() -> None:
    sealer = CredentialSealer(os.urandom(32))
    credential = Credential(values={"username": SecretStr("u"), "password": SecretStr("p")})
    blob = sealer.seal("lease-1", credential)
    assert b"password" not in blob  # ciphertext, not the JSON
    assert sealer.unseal("lease-1", blob).reveal() == {"username": "u", "password": "p"}
    with pytest.raises(SealBroken):
        sealer.unseal("lease-2", blob)
    with pytest.raises(SealBroken):
        CredentialSealer(os.urandom(32)).unseal("lease-1", blob)


def test_every_example_role_survives_the_wire() -> None:
    specs = load_roles(ROLES)
    assert convert.role_specs([convert.spec_message(s) for s in specs]) == specs


def test_a_role_without_backend_names_the_field() -> None:
    message = convert.spec_message(load_roles(ROLES)[0])
    message.ClearField("database")
    with pytest.raises(InvalidRequest) as caught:
        convert.role_specs([message])
    assert caught.value.field == "roles[0].backend"


def test_a_bad_mount_names_the_role_and_field() -> None:
    message = convert.spec_message(load_roles(ROLES)[0])
    message.database.mount = "Not/Allowed"
    with pytest.raises(InvalidRequest) as caught:
        convert.role_specs([message])
    assert caught.value.field == "roles[0].mount"
