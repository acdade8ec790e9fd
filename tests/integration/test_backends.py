"""Every backend's lifecycle on the bed's real servers, with the broker's own AppRole token.

The root token only sets the scene (mounts, the AppRole, docs/vault-policy.hcl as the
broker's policy); every issue, renew, revoke and lease listing runs through the broker's
backends with a token that holds nothing but that policy.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import boto3
import hvac
import psycopg
import pymysql
import pytest
import requests
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from broker import errors
from broker.backends import (
    AppRoleSettings,
    Backends,
    VaultClient,
    VaultSettings,
    list_keyferry_leases,
)
from broker.models import (
    AwsRole,
    DatabaseConnection,
    DatabaseRole,
    Ending,
    IssueContext,
    IssuedSecret,
    KvRole,
    PkiRole,
    RoleSpec,
    VaultLease,
)
from tests.bed.mariadb import MariaDBServer
from tests.bed.moto import REGION, MotoServer
from tests.bed.ports import LOOPBACK, free_port
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.scene.engines import (
    PG_CREATE_OWNER,
    PG_REVOKE_OWNER,
    add_assumed_role,
    enable,
    enable_approle,
    mount_aws,
    mount_mariadb,
    mount_pki,
    mount_postgres,
)

POLICY = Path(__file__).parents[2] / "docs" / "vault-policy.hcl"
PREFIX = "keyferry/"
OUTSIDE_PG = "outside-keyferry-pg"
CONTEXT = IssueContext(cluster="a", namespace="shop", service_account="web", pod="web-0")

PG = DatabaseRole(name="orders-db-ro", kind="database", mount="db-pg", vault_role="ro")
PG_OWNER = DatabaseRole(
    name="orders-db-owner", kind="database", mount="db-pg-owner", vault_role="owner"
)
MARIADB = DatabaseRole(name="orders-mariadb", kind="database", mount="db-mariadb", vault_role="ro")
IAM_USER = AwsRole(
    name="s3-user", kind="aws", mount="aws", vault_role="sts-only", credential_type="iam_user"
)
ASSUMED = AwsRole(
    name="s3-reader",
    kind="aws",
    mount="aws",
    vault_role="reader",
    credential_type="assumed_role",
    ttl=timedelta(minutes=15),
)
KV_LATEST = KvRole(name="app-config", kind="kv", mount="kv", path="app/config")
KV_FIRST = KvRole(name="app-config-v1", kind="kv", mount="kv", path="app/config", version=1)
PKI = PkiRole(
    name="internal-tls",
    kind="pki",
    mount="pki",
    vault_role="internal",
    common_name="{pod}.{namespace}.keyferry.test",
    alt_names=["{service_account}.{namespace}.keyferry.test"],
    ttl=timedelta(minutes=10),
)

pytestmark = pytest.mark.bed


# --- the scene, set with the root token once per module ------------------------------------


@pytest.fixture(scope="module")
def root(vault: VaultServer) -> hvac.Client:
    return vault.client()


@pytest.fixture(scope="module")
def approle(root: hvac.Client) -> AppRoleSettings:
    role_id, secret_id = enable_approle(
        root, "keyferry-broker", POLICY.read_text(), "keyferry-broker"
    )
    return AppRoleSettings(role_id=role_id, secret_id=SecretStr(secret_id))


@pytest.fixture(scope="module")
def pg_mounts(root: hvac.Client, postgres: PostgresServer) -> Iterator[None]:
    mounts = [PREFIX + PG.mount, PREFIX + PG_OWNER.mount, OUTSIDE_PG]
    mount_postgres(root, postgres, mounts[0], PG.vault_role)
    mount_postgres(
        root,
        postgres,
        mounts[1],
        PG_OWNER.vault_role,
        creation=PG_CREATE_OWNER,
        revocation=PG_REVOKE_OWNER,
    )
    mount_postgres(root, postgres, OUTSIDE_PG)
    yield
    # Unmounting revokes what is left and closes Vault's connections, which would otherwise
    # hold PostgreSQL's smart shutdown at the end of the session until the bed kills it.
    for mount in mounts:
        root.sys.disable_secrets_engine(mount)


@pytest.fixture(scope="module")
def mariadb_mount(root: hvac.Client, mariadb: MariaDBServer) -> None:
    mount_mariadb(root, mariadb, PREFIX + MARIADB.mount, MARIADB.vault_role)


@pytest.fixture(scope="module")
def aws_mount(root: hvac.Client, moto: MotoServer) -> None:
    mount_aws(root, moto, PREFIX + IAM_USER.mount, IAM_USER.vault_role)
    add_assumed_role(root, moto, PREFIX + ASSUMED.mount, ASSUMED.vault_role, "keyferry-reader")


@pytest.fixture(scope="module")
def kv_versions(root: hvac.Client) -> tuple[int, int]:
    """Two versions of app/config written by ops; their version numbers."""
    mount = PREFIX + KV_LATEST.mount
    enable(root, "kv-v2", mount)
    kv = root.secrets.kv.v2
    first = kv.create_or_update_secret(KV_LATEST.path, {"feature": "on"}, mount_point=mount)
    second = kv.create_or_update_secret(
        KV_LATEST.path, {"feature": "off", "limits": {"rps": 5}}, mount_point=mount
    )
    return int(first["data"]["version"]), int(second["data"]["version"])


@pytest.fixture(scope="module")
def pki_ca(root: hvac.Client) -> x509.Certificate:
    pem = mount_pki(root, PREFIX + PKI.mount, PKI.vault_role, "keyferry.test")
    return x509.load_pem_x509_certificate(pem.encode())


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def broker_vault(
    vault: VaultServer, approle: AppRoleSettings, clock: Clock
) -> Iterator[VaultClient]:
    """The broker's Vault client: AppRole login, the policy of docs/vault-policy.hcl only."""
    client = VaultClient(VaultSettings(addr=vault.addr, approle=approle), clock=clock)
    yield client
    client.close()


@pytest.fixture
def backends(broker_vault: VaultClient) -> Backends:
    return Backends(broker_vault)


async def issue(backends: Backends, role: RoleSpec) -> IssuedSecret:
    return await backends.for_role(role).issue(role, CONTEXT)


# --- database ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("pg_mounts")
async def test_a_role_with_connection_details_hands_out_a_complete_dsn(
    backends: Backends, postgres: PostgresServer
) -> None:
    connection = DatabaseConnection(
        host=LOOPBACK, port=postgres.port, dbname="postgres", sslmode="disable"
    )
    role = PG.model_copy(update={"connection": connection})
    issued = await issue(backends, role)
    values = issued.credential.reveal()
    assert {k: values[k] for k in ("host", "port", "dbname", "sslmode")} == {
        "host": LOOPBACK,
        "port": str(postgres.port),
        "dbname": "postgres",
        "sslmode": "disable",
    }
    dsn = psycopg.conninfo.make_conninfo(
        user=values["username"],
        password=values["password"],
        host=values["host"],
        port=values["port"],
        dbname=values["dbname"],
        sslmode=values["sslmode"],
    )
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        assert conn.execute("select current_user").fetchone() == (values["username"],)
    await backends.for_lease(issued.lease).revoke(issued.lease)


@pytest.mark.usefixtures("pg_mounts")
async def test_postgres_user_logs_in_until_revoked(
    backends: Backends, postgres: PostgresServer
) -> None:
    issued = await issue(backends, PG)
    login = issued.credential.reveal()
    assert issued.lease.lease_id.startswith(f"{PREFIX}{PG.mount}/creds/{PG.vault_role}/")
    assert backends.for_role(PG).lifecycle(PG).ends is Ending.REVOKED

    with postgres.connect(login["username"], login["password"]) as conn:
        assert conn.execute("select current_user").fetchone() == (login["username"],)

    await backends.for_lease(issued.lease).revoke(issued.lease)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        postgres.connect(login["username"], login["password"])


@pytest.mark.usefixtures("pg_mounts")
async def test_postgres_user_that_created_a_table_is_dropped_on_revoke(
    backends: Backends, postgres: PostgresServer
) -> None:
    issued = await issue(backends, PG_OWNER)
    login = issued.credential.reveal()
    table = f"t_{login['username'].replace('-', '_').lower()}"[:60]
    with postgres.connect(login["username"], login["password"]) as conn:
        conn.execute(f'create table "{table}" (id int)')

    await backends.for_lease(issued.lease).revoke(issued.lease)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        postgres.connect(login["username"], login["password"])
    with postgres.connect() as admin:
        gone = "select 1 from pg_roles where rolname = %s"
        assert admin.execute(gone, (login["username"],)).fetchone() is None
        owner = admin.execute("select tableowner from pg_tables where tablename = %s", (table,))
        assert owner.fetchone() == ("postgres",)


@pytest.mark.usefixtures("mariadb_mount")
async def test_mariadb_user_logs_in_until_revoked(
    backends: Backends, mariadb: MariaDBServer
) -> None:
    issued = await issue(backends, MARIADB)
    login = issued.credential.reveal()
    with mariadb.connect(login["username"], login["password"]) as conn, conn.cursor() as cur:
        cur.execute("select current_user()")
        row = cur.fetchone()
        assert row is not None
        assert row[0].startswith(f"{login['username']}@")

    await backends.for_lease(issued.lease).revoke(issued.lease)
    with pytest.raises(pymysql.err.OperationalError) as denied:
        mariadb.connect(login["username"], login["password"])
    assert denied.value.args[0] == 1045  # ER_ACCESS_DENIED_ERROR


@pytest.mark.usefixtures("pg_mounts")
async def test_renew_extends_a_database_lease(backends: Backends, clock: Clock) -> None:
    issued = await issue(backends, PG)
    backend = backends.for_lease(issued.lease)
    assert issued.lease.renewable
    assert issued.lease.ttl == timedelta(minutes=5)  # the Vault role's default_ttl

    renewed = await backend.renew(issued.lease, timedelta(minutes=30))
    assert renewed.lease_id == issued.lease.lease_id
    assert renewed.ttl > issued.lease.ttl
    assert renewed.expires_at is not None
    assert issued.lease.expires_at is not None
    assert renewed.expires_at > issued.lease.expires_at
    await backend.revoke(renewed)


# --- aws ---------------------------------------------------------------------------------------


def caller_arn(moto: MotoServer, values: dict[str, str]) -> str:
    sts = boto3.client(
        "sts",
        endpoint_url=moto.endpoint,
        region_name=REGION,
        aws_access_key_id=values["access_key_id"],
        aws_secret_access_key=values["secret_access_key"],
        aws_session_token=values.get("session_token"),
    )
    return str(sts.get_caller_identity()["Arn"])


@pytest.mark.usefixtures("aws_mount")
async def test_aws_iam_user_works_at_moto_until_revoked(
    backends: Backends, moto: MotoServer
) -> None:
    issued = await issue(backends, IAM_USER)
    backend = backends.for_role(IAM_USER)
    assert backend.lifecycle(IAM_USER).renewable
    assert ":user/vault-" in caller_arn(moto, issued.credential.reveal())

    renewed = await backend.renew(issued.lease)
    assert renewed.lease_id == issued.lease.lease_id

    await backend.revoke(renewed)
    with pytest.raises(ClientError) as revoked:
        caller_arn(moto, issued.credential.reveal())
    assert revoked.value.response["Error"]["Code"] == "InvalidClientTokenId"


@pytest.mark.usefixtures("aws_mount")
async def test_aws_assumed_role_works_and_is_not_renewable(
    backends: Backends, moto: MotoServer
) -> None:
    issued = await issue(backends, ASSUMED)
    backend = backends.for_role(ASSUMED)
    values = issued.credential.reveal()
    assert set(values) == {"access_key_id", "secret_access_key", "session_token"}
    assert ":assumed-role/keyferry-reader/" in caller_arn(moto, values)

    assert not issued.lease.renewable  # Vault's own answer
    assert issued.lease.ttl == ASSUMED.ttl
    lifecycle = backend.lifecycle(ASSUMED)
    assert (lifecycle.renewable, lifecycle.revocable, lifecycle.ends) == (
        False,
        False,
        Ending.EXPIRES,
    )
    with pytest.raises(errors.InvalidRequest) as refused:
        await backend.renew(issued.lease)
    assert refused.value.field == "lease"
    await backend.revoke(issued.lease)  # Vault forgets the lease; the session lives on


# --- kv and pki ----------------------------------------------------------------------------------


async def test_kv_records_the_version_handed_out(
    backends: Backends, kv_versions: tuple[int, int]
) -> None:
    first, second = kv_versions
    latest = await issue(backends, KV_LATEST)
    pinned = await issue(backends, KV_FIRST)

    assert latest.lease.version == second
    assert latest.credential.reveal() == {"feature": "off", "limits": '{"rps": 5}'}
    assert pinned.lease.version == first
    assert pinned.credential.reveal() == {"feature": "on"}
    assert latest.lease.expires_at is None
    assert latest.lease.lease_id == ""
    with pytest.raises(errors.InvalidRequest):
        await backends.for_lease(latest.lease).renew(latest.lease)


async def test_pki_serial_is_in_the_crl_after_revoke(
    backends: Backends, pki_ca: x509.Certificate, vault: VaultServer
) -> None:
    issued = await issue(backends, PKI)
    values = issued.credential.reveal()
    cert = x509.load_pem_x509_certificate(values["certificate"].encode())
    cert.verify_directly_issued_by(pki_ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "web-0.shop.keyferry.test"
    )
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {
        "web-0.shop.keyferry.test",
        "web.shop.keyferry.test",
    }
    assert "PRIVATE KEY" in values["private_key"]
    assert issued.lease.serial is not None
    assert int(issued.lease.serial.replace(":", ""), 16) == cert.serial_number
    assert issued.lease.expires_at == cert.not_valid_after_utc

    def crl() -> x509.CertificateRevocationList:
        with urllib.request.urlopen(f"{vault.addr}/v1/{PREFIX}{PKI.mount}/crl", timeout=5) as r:  # noqa: S310 (loopback http)
            return x509.load_der_x509_crl(r.read())

    assert crl().get_revoked_certificate_by_serial_number(cert.serial_number) is None
    await backends.for_lease(issued.lease).revoke(issued.lease)
    listed = crl()
    ca_key = pki_ca.public_key()
    assert isinstance(ca_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    assert listed.is_signature_valid(ca_key)
    assert listed.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


# --- leases, policy and the broker's own token ------------------------------------------------


@pytest.mark.usefixtures("pg_mounts", "aws_mount")
async def test_lists_exactly_keyferrys_leases(backends: Backends, root: hvac.Client) -> None:
    outside = root.secrets.database.generate_credentials("ro", mount_point=OUTSIDE_PG)
    db = await issue(backends, PG)
    aws = await issue(backends, IAM_USER)
    try:
        listed = await list_keyferry_leases(backends.vault)
        assert {db.lease.lease_id, aws.lease.lease_id} <= set(listed)
        assert all(lease.startswith(PREFIX) for lease in listed)
        assert outside["lease_id"] not in listed

        await backends.for_lease(db.lease).revoke(db.lease)
        assert db.lease.lease_id not in await list_keyferry_leases(backends.vault)
        # The policy grants revocation for keyferry's leases only.
        with pytest.raises(errors.PermissionDenied):
            await backends.vault.write(f"sys/leases/revoke/{outside['lease_id']}")
        with pytest.raises(errors.PermissionDenied):
            await backends.vault.read(f"{OUTSIDE_PG}/creds/ro")
    finally:
        root.sys.revoke_lease(outside["lease_id"])
        await backends.for_lease(aws.lease).revoke(aws.lease)


async def test_broker_token_is_approle_and_renewed_before_expiry(
    broker_vault: VaultClient, root: hvac.Client, clock: Clock
) -> None:
    keeper = broker_vault.keeper
    me = (await broker_vault.read("auth/token/lookup-self"))["data"]
    assert sorted(me["policies"]) == ["default", "keyferry-broker"]
    assert me["meta"]["role_name"] == "keyferry-broker"
    assert (keeper.logins, keeper.renewals) == (1, 0)
    grant = keeper.grant
    assert grant is not None
    assert grant.renewable

    clock.now += grant.ttl * 0.7  # past two thirds of its TTL: renew, do not log in
    renewed = (await broker_vault.read("auth/token/lookup-self"))["data"]
    assert (keeper.logins, keeper.renewals) == (1, 1)
    assert renewed["accessor"] == me["accessor"]
    assert renewed["last_renewal_time"]

    root.auth.token.revoke_accessor(me["accessor"])  # as if Vault forgot the token
    again = (await broker_vault.read("auth/token/lookup-self"))["data"]
    assert keeper.logins == 2
    assert again["accessor"] != me["accessor"]


# --- no hvac or requests exception ever leaves a backend -----------------------------------------

DB_LEASE = VaultLease(
    role=PG.name,
    kind="database",
    mount=PREFIX + PG.mount,
    lease_id=f"{PREFIX}{PG.mount}/creds/ro/not-a-lease",
    renewable=True,
    ttl=timedelta(minutes=5),
    issued_at=datetime(2026, 1, 1, tzinfo=UTC),
    expires_at=datetime(2026, 1, 1, 0, 5, tzinfo=UTC),
)
AWS_LEASE = DB_LEASE.model_copy(
    update={"role": IAM_USER.name, "kind": "aws", "lease_id": f"{PREFIX}aws/creds/x/not-a-lease"}
)
PKI_LEASE = DB_LEASE.model_copy(
    update={
        "role": PKI.name,
        "kind": "pki",
        "lease_id": "",
        "renewable": False,
        "mount": PREFIX + PKI.mount,
        "serial": "01:02",
    }
)


def every_operation(backends: Backends) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
    """Each backend's issue, renew and revoke that reach Vault."""
    ops: list[tuple[str, Callable[[], Awaitable[object]]]] = []
    for role in (PG, IAM_USER, ASSUMED, KV_LATEST, PKI):
        backend = backends.for_role(role)
        ops.append((f"issue {role.name}", partial(backend.issue, role, CONTEXT)))
    for lease in (DB_LEASE, AWS_LEASE):
        backend = backends.for_lease(lease)
        ops.append((f"renew {lease.kind}", partial(backend.renew, lease)))
    for lease in (DB_LEASE, AWS_LEASE, PKI_LEASE):
        backend = backends.for_lease(lease)
        ops.append((f"revoke {lease.kind}", partial(backend.revoke, lease)))
    ops.append(("list leases", partial(list_keyferry_leases, backends.vault)))
    return ops


async def assert_every_operation_raises(
    backends: Backends, expected: type[errors.KeyferryError]
) -> list[BaseException]:
    causes: list[BaseException] = []
    for name, op in every_operation(backends):
        with pytest.raises(errors.KeyferryError) as caught:
            await op()
        assert isinstance(caught.value, expected), f"{name}: {caught.value!r}"
        assert not isinstance(caught.value, hvac.exceptions.VaultError | requests.RequestException)
        assert caught.value.__cause__ is not None, name
        causes.append(caught.value.__cause__)
    return causes


@pytest.fixture
def closed_port_vault() -> Iterator[Backends]:
    settings = VaultSettings(
        addr=f"http://{LOOPBACK}:{free_port()}", token=SecretStr("t"), timeout=2
    )
    client = VaultClient(settings)
    yield Backends(client)
    client.close()


async def test_a_closed_port_is_vault_unavailable(closed_port_vault: Backends) -> None:
    causes = await assert_every_operation_raises(closed_port_vault, errors.VaultUnavailable)
    assert all(isinstance(c, requests.ConnectionError) for c in causes)


async def test_a_bad_token_is_permission_denied(vault: VaultServer) -> None:
    client = VaultClient(VaultSettings(addr=vault.addr, token=SecretStr("not-a-token")))
    try:
        causes = await assert_every_operation_raises(Backends(client), errors.PermissionDenied)
    finally:
        client.close()
    assert all(isinstance(c, hvac.exceptions.Forbidden) for c in causes)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


async def test_a_vault_that_never_answers_times_out(silent_server: int) -> None:
    settings = VaultSettings(
        addr=f"http://{LOOPBACK}:{silent_server}", token=SecretStr("t"), timeout=0.3
    )
    client = VaultClient(settings)
    try:
        with pytest.raises(errors.VaultUnavailable) as caught:
            await Backends(client).for_role(KV_LATEST).issue(KV_LATEST, CONTEXT)
    finally:
        client.close()
    assert isinstance(caught.value.__cause__, requests.Timeout | TimeoutError)


@pytest.fixture
def sealed_vault(vault_persistent: VaultServer) -> Iterator[VaultServer]:
    vault_persistent.client().sys.seal()
    try:
        yield vault_persistent
    finally:
        vault_persistent.client().sys.submit_unseal_key(vault_persistent.unseal_key)
        vault_persistent.process.wait_until(vault_persistent.healthy, "unsealed again")


async def test_a_sealed_vault_is_unavailable_with_a_retry_hint(sealed_vault: VaultServer) -> None:
    settings = VaultSettings(addr=sealed_vault.addr, token=SecretStr(sealed_vault.root_token))
    client = VaultClient(settings)
    try:
        with pytest.raises(errors.VaultUnavailable) as caught:
            await Backends(client).for_role(PG).issue(PG, CONTEXT)
    finally:
        client.close()
    assert caught.value.retry_after > 1
    assert isinstance(caught.value.__cause__, hvac.exceptions.VaultDown)
