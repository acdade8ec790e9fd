"""The agent reads its spec without pydantic (injector/agent/spec.py) by the rules of the
models the webhook writes it with (injector/contract.py): the same fields, the same values
read back, and the same documents refused at the same field."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from injector import contract
from injector.agent import spec as agent
from injector.agent.errors import SpecError
from injector.terms import AGENT_SPEC_ENV, SPEC_MAX_BYTES

GOOD: dict[str, Any] = {
    "mode": "sidecar",
    "cluster": "a",
    "broker_address": "broker.keyferry.svc:8443",
    "broker_ca_pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    "directory": "/keyferry/secrets",
    "token_path": "/keyferry/token/token",
    "credentials": [
        {"name": "db", "role": "orders-db-ro", "format": "pgpass"},
        {"name": "cfg", "role": "app-config"},
    ],
}
RESTART = {"containers": ["app", "worker"], "grace_seconds": 10}


def with_(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


def credential(**changes: Any) -> dict[str, Any]:
    return with_(credentials=[{"name": "db", "role": "orders-db-ro", **changes}])


def restart(**changes: Any) -> dict[str, Any]:
    return with_(restart={**RESTART, **changes})


ACCEPTED = [
    GOOD,
    with_(version=1, file_mode=0o400, on_rotate="SIGHUP", broker_ca_pem=None),
    with_(backoff_base_seconds=0.25, backoff_cap_seconds=4),
    with_(backoff_base_seconds=3600, backoff_cap_seconds=3600.0),
    restart(),
    restart(coalesce_seconds=60, min_spacing_seconds=0),
    credential(name="a" * 48, format=None),
]
# Each refused document and the field its error names ("" for the document as a whole).
REFUSED: list[tuple[Any, str]] = [
    (with_(version=2), "version"),
    (with_(mode="daemon"), "mode"),
    ({k: v for k, v in GOOD.items() if k != "cluster"}, "cluster"),
    (with_(cluster=""), "cluster"),
    (with_(broker_address=7), "broker_address"),
    (with_(directory="relative"), "directory"),
    (with_(token_path="token"), "token_path"),
    (with_(file_mode=-1), "file_mode"),
    (with_(file_mode=0o1000), "file_mode"),
    (with_(credentials=[]), "credentials"),
    (with_(credentials={"name": "db"}), "credentials"),
    (credential(name="DB"), "credentials.0.name"),
    (credential(name="db\n"), "credentials.0.name"),
    (credential(name="a" * 49), "credentials.0.name"),
    (credential(role="Orders"), "credentials.0.role"),
    (credential(format="yaml"), "credentials.0.format"),
    (credential(mode="0600"), "credentials.0.mode"),
    (with_(credentials=[{"name": "db"}]), "credentials.0.role"),
    (with_(on_rotate="SIGKILL"), "on_rotate"),
    (with_(backoff_base_seconds=0), "backoff_base_seconds"),
    (with_(backoff_cap_seconds=1e9), "backoff_cap_seconds"),
    (with_(backoff_base_seconds=5, backoff_cap_seconds=2), ""),
    (restart(containers=[]), "restart.containers"),
    (restart(containers=["App"]), "restart.containers.0"),
    (restart(grace_seconds=0), "restart.grace_seconds"),
    (restart(grace_seconds=301), "restart.grace_seconds"),
    (restart(coalesce_seconds=0), "restart.coalesce_seconds"),
    (restart(min_spacing_seconds=3601), "restart.min_spacing_seconds"),
    (restart(signal="SIGTERM"), "restart.signal"),
    (with_(restart=RESTART, on_rotate="SIGHUP"), ""),
    (with_(colour="blue"), "colour"),
    ([], ""),
    # Several faults: the first in the models' field order, extra fields after the rest.
    ({"mode": "x"}, "mode"),
    ({"colour": "blue", "mode": "sidecar"}, "cluster"),
    (with_(colour="blue", cluster=""), "cluster"),
    (with_(token_path="t", directory="d"), "directory"),
    (credential(mode="0600", name="DB"), "credentials.0.name"),
    (with_(credentials=[{"name": "ok", "role": "r", "x": 1}, {"name": "DB"}]), "credentials.0.x"),
    (with_(restart={"containers": ["App"], "signal": "x"}, on_rotate="SIGKILL"), "on_rotate"),
]

# pydantic's lax mode reads these; the agent does not (the webhook writes numbers as numbers).
STRICTER: list[tuple[dict[str, Any], str]] = [
    (with_(file_mode="0440"), "file_mode"),
    (with_(backoff_base_seconds=True), "backoff_base_seconds"),
]


def plain(value: Any) -> Any:
    """A model's or a dataclass's fields as JSON values, for comparing the two."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return json.loads(json.dumps(dataclasses.asdict(value)))


@pytest.mark.parametrize("document", ACCEPTED)
def test_what_the_webhook_writes_the_agent_reads_back_the_same(document: dict[str, Any]) -> None:
    written = contract.AgentSpec.model_validate(document)
    read = agent.parse_spec(written.to_json())
    assert plain(read) == plain(written)
    assert plain(agent.parse_spec(json.dumps(document))) == plain(written)


@pytest.mark.parametrize(("document", "field"), REFUSED)
def test_both_refuse_the_same_documents_at_the_same_field(document: Any, field: str) -> None:
    with pytest.raises(ValidationError) as model:
        contract.AgentSpec.model_validate_json(json.dumps(document))
    where = ".".join(str(part) for part in model.value.errors()[0]["loc"])
    assert where == field
    with pytest.raises(SpecError) as read:
        agent.parse_spec(json.dumps(document))
    assert str(read.value).startswith(
        f"{AGENT_SPEC_ENV} is invalid at {field or '(the document)'}:"
    )


def test_the_dataclasses_have_the_models_fields() -> None:
    pairs: list[tuple[Any, type[BaseModel]]] = [
        (agent.AgentSpec, contract.AgentSpec),
        (agent.CredentialRequest, contract.CredentialRequest),
        (agent.RestartSpec, contract.RestartSpec),
    ]
    for mine, model in pairs:
        assert {f.name for f in dataclasses.fields(mine)} == set(model.model_fields)
        defaults = {
            f.name: f.default
            for f in dataclasses.fields(mine)
            if f.default is not dataclasses.MISSING
        }
        assert defaults == {
            name: info.default
            for name, info in model.model_fields.items()
            if not info.is_required()
        }


def test_an_oversized_or_broken_document_is_refused_before_parsing() -> None:
    with pytest.raises(SpecError, match=f"longer than {SPEC_MAX_BYTES} characters"):
        agent.parse_spec(" " * (SPEC_MAX_BYTES + 1))
    with pytest.raises(SpecError, match=r"at \(the document\): not JSON"):
        agent.parse_spec("{")


@pytest.mark.parametrize(("document", "field"), STRICTER)
def test_the_agent_takes_no_number_in_another_type(document: Any, field: str) -> None:
    contract.AgentSpec.model_validate_json(json.dumps(document))
    with pytest.raises(SpecError, match=f"is invalid at {field}: Input should be a valid"):
        agent.parse_spec(json.dumps(document))
