"""Mount and configure Vault secrets engines against the bed's servers, for the smoke tests."""

from __future__ import annotations

import json

import hvac

from tests.bed.mariadb import ADMIN, MariaDBServer
from tests.bed.moto import REGION, MotoServer
from tests.bed.postgres import SUPERUSER, PostgresServer

PG_CREATE = (
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; "
    'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}";'
)
MYSQL_CREATE = (
    "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'; "
    "GRANT SELECT ON *.* TO '{{name}}'@'%';"
)
STS_ONLY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["sts:GetCallerIdentity", "iam:GetUser"], "Resource": "*"}
        ],
    }
)


def enable(client: hvac.Client, backend: str, mount: str) -> None:
    if f"{mount}/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine(backend_type=backend, path=mount)


def mount_postgres(client: hvac.Client, pg: PostgresServer, mount: str, role: str = "ro") -> None:
    enable(client, "database", mount)
    client.secrets.database.configure(
        name="pg",
        plugin_name="postgresql-database-plugin",
        mount_point=mount,
        allowed_roles=[role],
        verify_connection=True,
        connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{pg.port}/postgres?sslmode=disable",
        username=SUPERUSER,
        password=pg.password,
    )
    client.secrets.database.create_role(
        name=role,
        db_name="pg",
        creation_statements=[PG_CREATE],
        default_ttl="5m",
        max_ttl="1h",
        mount_point=mount,
    )


def mount_mariadb(client: hvac.Client, db: MariaDBServer, mount: str, role: str = "ro") -> None:
    enable(client, "database", mount)
    client.secrets.database.configure(
        name="mariadb",
        plugin_name="mysql-database-plugin",
        mount_point=mount,
        allowed_roles=[role],
        verify_connection=True,
        connection_url=f"{{{{username}}}}:{{{{password}}}}@tcp(127.0.0.1:{db.port})/",
        username=ADMIN,
        password=db.admin_password,
    )
    client.secrets.database.create_role(
        name=role,
        db_name="mariadb",
        creation_statements=[MYSQL_CREATE],
        default_ttl="5m",
        max_ttl="1h",
        mount_point=mount,
    )


def mount_aws(client: hvac.Client, moto: MotoServer, mount: str, role: str = "sts-only") -> None:
    enable(client, "aws", mount)
    client.write(
        f"{mount}/config/root",
        access_key=moto.access_key_id,
        secret_key=moto.secret_access_key,
        region=REGION,
        iam_endpoint=moto.endpoint,
        sts_endpoint=moto.endpoint,
    )
    client.write(f"{mount}/roles/{role}", credential_type="iam_user", policy_document=STS_ONLY)
