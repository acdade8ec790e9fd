"""Mount and configure Vault secrets engines against the bed's servers, for the smoke tests
and the backend tests (which also set up the broker's AppRole)."""

from __future__ import annotations

import json
from typing import Any

import hvac

from tests.bed.mariadb import ADMIN, MariaDBServer
from tests.bed.moto import REGION, MotoServer
from tests.bed.postgres import SUPERUSER, PostgresServer

PG_CREATE = (
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; "
    'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}";'
)
# A user that may create tables; revoking it hands its objects to the superuser first, or
# DROP ROLE would fail on a user that owns anything.
PG_CREATE_OWNER = (
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; "
    'GRANT CREATE, USAGE ON SCHEMA public TO "{{name}}";'
)
PG_REVOKE_OWNER = (
    f'REASSIGN OWNED BY "{{{{name}}}}" TO {SUPERUSER}; DROP OWNED BY "{{{{name}}}}"; '
    'DROP ROLE IF EXISTS "{{name}}";'
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


def mount_postgres(
    client: hvac.Client,
    pg: PostgresServer,
    mount: str,
    role: str = "ro",
    *,
    creation: str = PG_CREATE,
    revocation: str | None = None,
    default_ttl: str = "5m",
) -> None:
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
        creation_statements=[creation],
        revocation_statements=[revocation] if revocation else None,
        default_ttl=default_ttl,
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


def add_assumed_role(
    client: hvac.Client, moto: MotoServer, mount: str, role: str, iam_role: str
) -> str:
    """An IAM role at moto that Vault's root user may assume, and a Vault role for it.

    moto checks the trust policy against the caller's exact ARN, so the principal is the
    bed's admin user (the keys Vault's aws engine holds), not the account root.
    """
    sts: Any = moto.client("sts")
    iam: Any = moto.client("iam")
    admin_arn = sts.get_caller_identity()["Arn"]
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": admin_arn}, "Action": "sts:AssumeRole"}
        ],
    }
    try:
        arn = iam.get_role(RoleName=iam_role)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        arn = iam.create_role(RoleName=iam_role, AssumeRolePolicyDocument=json.dumps(trust))[
            "Role"
        ]["Arn"]
        iam.put_role_policy(RoleName=iam_role, PolicyName="sts-only", PolicyDocument=STS_ONLY)
    client.write_data(
        f"{mount}/roles/{role}",
        data={
            "credential_type": "assumed_role",
            "role_arns": [arn],
            "default_sts_ttl": "15m",
            "max_sts_ttl": "1h",
        },
    )
    return str(arn)


def mount_pki(client: hvac.Client, mount: str, role: str, domain: str) -> str:
    """A PKI mount with its own root CA and a role for names under `domain`; the CA's PEM."""
    enable(client, "pki", mount)
    client.sys.tune_mount_configuration(mount, max_lease_ttl="87600h")
    client.write_data(
        f"{mount}/roles/{role}",
        data={"allowed_domains": domain, "allow_subdomains": True, "max_ttl": "1h"},
    )
    # Another module of the session may have set this mount up on the shared Vault: a second
    # root would be a second issuer, not the default one that signs, so keep the first.
    try:
        return str(client.read(f"{mount}/issuer/default")["data"]["certificate"])
    except hvac.exceptions.VaultError:
        pass  # no issuer yet
    root = client.write_data(
        f"{mount}/root/generate/internal", data={"common_name": f"{domain} CA", "ttl": "8760h"}
    )
    return str(root["data"]["certificate"])


def enable_approle(
    client: hvac.Client,
    policy_name: str,
    policy_hcl: str,
    role: str,
    token_ttl: str = "10m",  # noqa: S107 (a TTL, not a secret)
) -> tuple[str, str]:
    """Write a policy, and an AppRole whose tokens carry it; the role id and a secret id."""
    if "approle/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("approle")
    client.sys.create_or_update_policy(policy_name, policy_hcl)
    client.write_data(
        f"auth/approle/role/{role}",
        data={"token_policies": [policy_name], "token_ttl": token_ttl, "token_max_ttl": "1h"},
    )
    role_id = client.read(f"auth/approle/role/{role}/role-id")["data"]["role_id"]
    secret_id = client.write_data(f"auth/approle/role/{role}/secret-id")["data"]["secret_id"]
    return str(role_id), str(secret_id)
