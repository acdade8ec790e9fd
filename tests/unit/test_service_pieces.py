"""The broker's small pure pieces: credential names, sealing, and protobuf conversion."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from broker.errors import InvalidRequest
from broker.models import Credential, load_roles
from broker.server import convert
from broker.service.common.sealing import ID_ONLY, NONCE_BYTES, CredentialSealer, SealBroken
from broker.service.workload.names import check_credential_name

from .samples import lease_record

ROLES = Path(__file__).parents[2] / "docs" / "examples" / "roles.yaml"
CREDENTIAL = Credential(values={"username": SecretStr("u"), "password": SecretStr("p")})


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


@pytest.mark.parametrize(
    "edit",
    [
        {"cluster": "rogue"},
        {"pod_uid": "uid-2"},
        {"credential": "other"},
        {"role": "orders-db-admin"},
        {"generation": 3},
        {"id": "lease-9"},
    ],
)
def test_a_leases_sealed_credential_opens_only_for_the_pod_it_was_sealed_for(
    edit: dict[str, object],
) -> None:
    """A row pointed at another pod (someone with write access to the store) does not open."""
    sealer = CredentialSealer(os.urandom(32))
    lease = lease_record()
    blob = sealer.seal_lease(lease, CREDENTIAL)
    assert sealer.unseal_lease(lease, blob).reveal() == {"username": "u", "password": "p"}
    with pytest.raises(SealBroken):
        sealer.unseal_lease(lease.model_copy(update=edit), blob)


def test_a_blob_sealed_to_the_lease_id_alone_still_opens() -> None:
    """Sealed before the lease binding (version 0x01): opens until its lease ends."""
    key = os.urandom(32)
    lease = lease_record()
    nonce = os.urandom(NONCE_BYTES)
    plain = json.dumps(CREDENTIAL.reveal(), sort_keys=True).encode()
    old = ID_ONLY + nonce + AESGCM(key).encrypt(nonce, plain, lease.id.encode())
    assert CredentialSealer(key).unseal_lease(lease, old).reveal() == CREDENTIAL.reveal()


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
