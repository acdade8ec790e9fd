"""Smoke tests that prove each bed server is real: Vault issues credentials that work
against real PostgreSQL, MariaDB and moto, and that stop working once revoked."""

from __future__ import annotations

import datetime as dt

import boto3
import psycopg
import pymysql
import pytest
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.bed.mariadb import MariaDBServer
from tests.bed.moto import REGION, MotoServer
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.scene.engines import enable, mount_aws, mount_mariadb, mount_postgres


def test_postgres_role_logs_in_until_revoked(vault: VaultServer, postgres: PostgresServer) -> None:
    client = vault.client()
    mount_postgres(client, postgres, "bed-pg")
    secret = client.secrets.database.generate_credentials("ro", mount_point="bed-pg")
    user, password = secret["data"]["username"], secret["data"]["password"]

    with postgres.connect(user, password) as conn:
        assert conn.execute("select current_user").fetchone() == (user,)

    client.sys.revoke_lease(secret["lease_id"])
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        postgres.connect(user, password)
    with postgres.connect() as admin:
        assert (
            admin.execute("select 1 from pg_roles where rolname = %s", (user,)).fetchone() is None
        )


def test_mariadb_user_logs_in_until_revoked(vault: VaultServer, mariadb: MariaDBServer) -> None:
    client = vault.client()
    mount_mariadb(client, mariadb, "bed-mariadb")
    secret = client.secrets.database.generate_credentials("ro", mount_point="bed-mariadb")
    user, password = secret["data"]["username"], secret["data"]["password"]

    with mariadb.connect(user, password) as conn, conn.cursor() as cur:
        cur.execute("select current_user()")
        row = cur.fetchone()
        assert row is not None
        assert row[0].startswith(f"{user}@")

    client.sys.revoke_lease(secret["lease_id"])
    with pytest.raises(pymysql.err.OperationalError) as denied:
        mariadb.connect(user, password)
    assert denied.value.args[0] == 1045  # ER_ACCESS_DENIED_ERROR


def _caller(moto: MotoServer, key_id: str, secret: str) -> str:
    sts = boto3.client(
        "sts",
        endpoint_url=moto.endpoint,
        region_name=REGION,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )
    return str(sts.get_caller_identity()["Arn"])


def test_aws_iam_user_keys_work_at_moto_until_revoked(vault: VaultServer, moto: MotoServer) -> None:
    client = vault.client()
    mount_aws(client, moto, "bed-aws")
    secret = client.secrets.aws.generate_credentials("sts-only", mount_point="bed-aws")
    key_id, key_secret = secret["data"]["access_key"], secret["data"]["secret_key"]

    arn = _caller(moto, key_id, key_secret)
    assert ":user/vault-" in arn

    client.sys.revoke_lease(secret["lease_id"])
    with pytest.raises(ClientError) as revoked:
        _caller(moto, key_id, key_secret)
    assert revoked.value.response["Error"]["Code"] == "InvalidClientTokenId"


def test_moto_rejects_a_made_up_key(moto: MotoServer) -> None:
    with pytest.raises(ClientError) as denied:
        _caller(moto, "AKIAMADEUPKEY0000000", "not-a-real-secret")
    assert denied.value.response["Error"]["Code"] == "InvalidClientTokenId"


def test_kv_v2_keeps_versions(vault: VaultServer) -> None:
    client = vault.client()
    enable(client, "kv-v2", "bed-kv")
    kv = client.secrets.kv.v2
    kv.create_or_update_secret("app/config", {"feature": "on"}, mount_point="bed-kv")
    kv.create_or_update_secret("app/config", {"feature": "off"}, mount_point="bed-kv")

    latest = kv.read_secret_version(
        "app/config", mount_point="bed-kv", raise_on_deleted_version=True
    )
    first = kv.read_secret_version(
        "app/config", version=1, mount_point="bed-kv", raise_on_deleted_version=True
    )
    assert latest["data"]["data"] == {"feature": "off"}
    assert latest["data"]["metadata"]["version"] == 2
    assert first["data"]["data"] == {"feature": "on"}


def test_pki_certificate_parses_with_the_right_sans(vault: VaultServer) -> None:
    client = vault.client()
    enable(client, "pki", "bed-pki")
    client.sys.tune_mount_configuration("bed-pki", max_lease_ttl="87600h")
    root = client.write(
        "bed-pki/root/generate/internal", common_name="keyferry bed CA", ttl="8760h"
    )
    client.write(
        "bed-pki/roles/internal",
        allowed_domains="keyferry.test",
        allow_subdomains=True,
        allow_ip_sans=True,
        max_ttl="1h",
    )
    issued = client.write(
        "bed-pki/issue/internal",
        common_name="app.keyferry.test",
        alt_names="api.keyferry.test",
        ip_sans="127.0.0.1",
        ttl="10m",
    )["data"]

    cert = x509.load_pem_x509_certificate(issued["certificate"].encode())
    ca = x509.load_pem_x509_certificate(root["data"]["certificate"].encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"app.keyferry.test", "api.keyferry.test"}
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "app.keyferry.test"
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= dt.timedelta(minutes=11)


def test_persistent_vault_keeps_leases_across_restart(
    vault_persistent: VaultServer, postgres: PostgresServer
) -> None:
    client = vault_persistent.client()
    mount_postgres(client, postgres, "bed-pg-persistent")
    secret = client.secrets.database.generate_credentials("ro", mount_point="bed-pg-persistent")
    user, password = secret["data"]["username"], secret["data"]["password"]

    vault_persistent.restart()

    client = vault_persistent.client()
    lease = client.sys.read_lease(secret["lease_id"])
    assert lease["data"]["id"] == secret["lease_id"]
    with postgres.connect(user, password) as conn:
        assert conn.execute("select current_user").fetchone() == (user,)
    client.sys.revoke_lease(secret["lease_id"])
    with pytest.raises(psycopg.OperationalError):
        postgres.connect(user, password)
