"""A Vault reply of an unexpected shape must not carry its secret into any error (issue 16, 5).

The database role's mount is a KV v1 engine here, holding `{"password": ...}` at the path
the role reads (`creds/<vault role>`): Vault answers with the password but no username, so
the reply does not fit what keyferry expects. pydantic's own error text quotes the input;
keyferry's must name the field only. The password is handed to the exposure scan
(tests/security/test_zz_exposure.py), which then finds it in no log line, metric, error
message or audit record of the run; this test also looks at the error the pod gets and the
store's `last_error` of every lease row.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import hvac
import pytest

from tests.bed.kube import KubeCluster
from tests.bed.vault import VaultServer
from tests.scene.broker import issue
from tests.scene.workloads import mint

from .attack_scene import DOCS_ROLES, Exposure, all_store_rows, scene_broker

pytestmark = pytest.mark.bed

MOUNT = "keyferry/db-kv1-shaped"
ROLE = "orders-db-kv1"


@pytest.fixture
def password_in_kv1(root: hvac.Client) -> Iterator[str]:
    """A KV v1 mount where a database mount should be, a password at `creds/ro`."""
    password = f"pw-{secrets.token_hex(12)}"
    root.sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "1"})
    try:
        root.write_data(f"{MOUNT}/creds/ro", data={"password": password})
        yield password
    finally:
        root.sys.disable_secrets_engine(MOUNT)


async def test_a_reply_of_the_wrong_shape_names_the_field_not_the_secret(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    orders_db: None,
    exposure: Exposure,
    password_in_kv1: str,
) -> None:
    exposure.handed_out(password_in_kv1)
    roles = tmp_path / "roles.yaml"
    roles.write_text(
        DOCS_ROLES.read_text()
        + f"\n- {{name: {ROLE}, kind: database, mount: db-kv1-shaped, vault_role: ro}}\n"
    )
    async with scene_broker(
        tmp_path, vault, approle, kube_clusters, exposure, roles=str(roles)
    ) as broker:
        token = mint(kube_clusters["a"], pod_prefix="kv1-shaped")
        exposure.handed_out(token.token)
        with pytest.raises(grpc.RpcError) as caught:
            await issue(broker, token, credential="orders-db", role=ROLE)
        exposure.refusal(caught.value)
        rows = all_store_rows(broker)
        for row in rows:
            exposure.said("store last_error", str(row.last_error))

    details = caught.value.details() or ""
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "username: Field required" in details, details
    assert password_in_kv1 not in details
    assert "input_value" not in details
    assert all(password_in_kv1 not in str(row.last_error) for row in rows)
    assert password_in_kv1 not in exposure.log_file.read_text()
