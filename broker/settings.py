"""The broker's settings: one YAML file (`--config`) plus environment overrides.

Groups nest as they are used: `vault` (broker.backends), `store` (broker.store), `audit`,
`sealing`, `workload` and `admin` listeners, `metrics`, `tracing` (OpenTelemetry, off by
default; broker.tracing), `limits`, `tokens` (what checking a
workload token may cost), `access` (just-in-time grants), `clusters` and
`cluster_registration` (who must agree to change the registry), and the paths of the
policy and roles files. Each periodic job's interval lives with its subsystem (`renewal`,
`rotation`, `revocation`, `reconcile`, `pods`, ...); `scheduler` only says how jobs run.
Keys that moved there still load for one release, with a warning (broker.moved_settings).
An environment variable wins over the file:
`KEYFERRY_VAULT__ADDR=https://vault:8200`, `KEYFERRY_STORE__URL=postgresql://...` (prefix
`KEYFERRY_`, groups split by `__`).
Secrets are SecretStr and never printed.

Every problem is reported at once, each naming the file and line (when it came from the
file), the field's dotted path, and what to write instead (SettingsInvalid).
"""

from __future__ import annotations

import base64
import binascii
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from broker.backends import VaultSettings
from broker.clusters import ClusterConfig
from broker.errors import InvalidRequest
from broker.models import Duration
from broker.models.yaml_source import YamlInvalid, YamlSource, read_yaml
from broker.moved_settings import MovedConflict, move_old_keys
from broker.store import StoreSettings
from broker.store.keyring import MAX_KEYS, KeyRing
from broker.tracing import TracingSettings

ENV_PREFIX = "KEYFERRY_"
DEFAULT_DATA_DIR = Path("/var/lib/keyferry")
DEFAULT_WORKLOAD_PORT = 8443
DEFAULT_ADMIN_PORT = 8444
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024
AES_256_KEY_BYTES = 32
MIN_HMAC_KEY_BYTES = 32
MIN_GRANT = timedelta(minutes=1)
KEY_HINT = "generate one with `openssl rand -base64 32`"


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AuditSettings(_Group):
    sink: Literal["file", "store"] = Field(
        default="file",
        description="where the chain's records go: `file` (one broker; the JSON-lines log) "
        "or `store` (several replicas on PostgreSQL share one chain in the lease store)",
    )
    log: Path = Field(
        description="the audit log file (JSON lines, append-only), like "
        "/var/log/keyferry/audit.jsonl; with sink store, this replica's copy of the records "
        "it wrote (the chain itself is in the store)"
    )
    hmac_key: SecretStr = Field(
        description=f"at least {MIN_HMAC_KEY_BYTES} random bytes keying the fingerprints of "
        f"secret values; {KEY_HINT}"
    )
    chain: str = Field(
        default="broker",
        min_length=1,
        max_length=128,
        description="the chain's name in checkpoints",
    )
    transit_mount: str | None = Field(
        default=None,
        description="Vault transit mount that signs checkpoints, like keyferry/transit",
    )
    transit_key: str | None = Field(
        default=None, description="the transit key's name, like audit-checkpoints"
    )
    checkpoint_interval: Duration = Field(
        default=timedelta(minutes=5),
        description="how often the chain's head is signed (needs transit_mount and transit_key)",
    )

    @field_validator("hmac_key")
    @classmethod
    def _long_enough(cls, key: SecretStr) -> SecretStr:
        if len(key.get_secret_value().encode()) < MIN_HMAC_KEY_BYTES:
            raise ValueError(f"must be at least {MIN_HMAC_KEY_BYTES} bytes; {KEY_HINT}")
        return key

    @model_validator(mode="after")
    def _transit_pair(self) -> AuditSettings:
        if (self.transit_mount is None) != (self.transit_key is None):
            raise ValueError(
                "set both transit_mount and transit_key to sign checkpoints, or neither"
            )
        return self


class SealingSettings(_Group):
    """The sealing key ring (broker/store/keyring.py): the first key seals credentials and
    makes row and event MACs, every key opens and verifies. Set `keys` (a list), or `key`
    (one key, or several separated by commas: the form an environment variable or a
    Secret's value takes, like `KEYFERRY_SEALING__KEY=NEW,OLD`)."""

    key: SecretStr | None = Field(
        default=None,
        description="base64 of 32 random bytes (AES-256) that seals credentials in the lease "
        "store for idempotent Issue; several separated by commas make a ring, the current "
        f"first; {KEY_HINT}",
    )
    keys: list[SecretStr] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_KEYS,
        description="the key ring instead of `key`: the current key first (it seals and "
        "signs), then the keys that only open and verify what they made earlier (removed "
        "after `keyferry admin reseal`); each base64 of 32 random bytes",
    )

    @field_validator("key")
    @classmethod
    def _aes_256(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None:
            parts = key.get_secret_value().split(",")
            if len(parts) > MAX_KEYS:
                raise ValueError(f"holds {len(parts)} keys; at most {MAX_KEYS}")
            for part in parts:
                _decode_key(part.strip())
        return key

    @field_validator("keys")
    @classmethod
    def _aes_256_each(cls, keys: list[SecretStr] | None) -> list[SecretStr] | None:
        for index, key in enumerate(keys or []):
            try:
                _decode_key(key.get_secret_value())
            except ValueError as error:
                raise ValueError(f"item {index}: {error}") from None
        return keys

    @model_validator(mode="after")
    def _one_form(self) -> SealingSettings:
        if (self.key is None) == (self.keys is None):
            raise ValueError(
                f"set `keys` (a list, the current key first) or `key`, not both; {KEY_HINT}"
            )
        raw = self.ring_bytes()
        if len(set(raw)) != len(raw):
            raise ValueError("a key is listed twice; list each key once, the current first")
        try:
            KeyRing.of(raw)
        except ValueError as error:
            raise ValueError(f"{error}; generate another key") from None
        return self

    def ring_bytes(self) -> list[bytes]:
        """The keys, decoded, the current first."""
        if self.keys is not None:
            return [_decode_key(k.get_secret_value()) for k in self.keys]
        text = self.key.get_secret_value() if self.key is not None else ""
        return [_decode_key(part.strip()) for part in text.split(",")]

    def ring(self) -> KeyRing:
        return KeyRing.of(self.ring_bytes())

    def key_bytes(self) -> bytes:
        """The current key."""
        return self.ring_bytes()[0]


def _decode_key(text: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"is not base64; {KEY_HINT}") from exc
    if len(raw) != AES_256_KEY_BYTES:
        raise ValueError(f"must decode to {AES_256_KEY_BYTES} bytes, not {len(raw)}; {KEY_HINT}")
    return raw


class WorkloadListener(_Group):
    """Where pods' agents call the broker: TLS, bearer token per call."""

    host: str = Field(
        default="0.0.0.0",  # noqa: S104 (in a pod it listens on the pod's own IP)
        description="address to listen on",
    )
    port: int = Field(
        default=DEFAULT_WORKLOAD_PORT, ge=0, le=65535, description="0 picks a free port"
    )
    tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate chain; leave tls_cert and tls_key unset to generate a "
        "self-signed identity in data_dir (development only)",
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert")
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES,
        ge=1024,
        le=4 * 1024 * 1024,
        description="largest request message accepted (an Issue, Renew, Release or Ack is "
        "well under 1 KiB; gRPC's default is 4 MiB); larger ones end the call with "
        "RESOURCE_EXHAUSTED before they are decoded",
    )
    reflection: bool = Field(
        default=False,
        description="serve gRPC server reflection on the workload port (agents do not use "
        "it; it tells a caller every method); the admin port always serves it",
    )

    @model_validator(mode="after")
    def _pair(self) -> WorkloadListener:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "set both tls_cert and tls_key, or neither (a self-signed one is generated)"
            )
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} does not exist or is not a file")
        return self


class AdminListener(_Group):
    """Where ops and security call the broker: mutual TLS required. The client certificate
    must chain to `client_ca`; its subject names the operator (CN) and groups (O). Leave
    all three files unset to serve no admin listener; `keyferry admin init` writes them."""

    host: str = Field(
        default="0.0.0.0",  # noqa: S104 (in a pod it listens on the pod's own IP)
        description="address to listen on",
    )
    port: int = Field(default=DEFAULT_ADMIN_PORT, ge=0, le=65535, description="0 picks a free port")
    tls_cert: Path | None = Field(
        default=None,
        description="PEM serving certificate of the admin listener (keyferry admin init "
        "writes broker-admin.crt)",
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert")
    client_ca: Path | None = Field(
        default=None,
        description="PEM CA that operators' client certificates must chain to (ca.crt of "
        "keyferry admin init)",
    )
    revoked_operators: Path | None = Field(
        default=None,
        description="a file of revoked operator certificate serials, one hexadecimal serial "
        "a line (`keyferry admin revoke-operator` appends them); read again when it changes, "
        "every admin call refused while it cannot be read",
    )

    @model_validator(mode="after")
    def _all_or_none(self) -> AdminListener:
        paths = {"tls_cert": self.tls_cert, "tls_key": self.tls_key, "client_ca": self.client_ca}
        given = [name for name, path in paths.items() if path is not None]
        if given and len(given) != len(paths):
            raise ValueError(
                "set tls_cert, tls_key and client_ca together (keyferry admin init writes "
                "them), or none to serve no admin listener"
            )
        for name, path in paths.items():
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} does not exist or is not a file")
        if self.revoked_operators is not None and not self.revoked_operators.is_file():
            raise ValueError(
                f"revoked_operators {self.revoked_operators} does not exist; create it empty "
                "(`touch`) or remove the setting"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.client_ca is not None


class MetricsSettings(_Group):
    host: str = Field(
        default="0.0.0.0",  # noqa: S104 (in a pod it listens on the pod's own IP)
        description="address of the Prometheus endpoint",
    )
    port: int | None = Field(
        default=9464, ge=0, le=65535, description="port of /metrics; 0 picks one, null turns it off"
    )


class LimitsSettings(_Group):
    """Caps on live leases and open Watch streams, and token-bucket rate limits on Issue
    calls (replays count) and on Ack, Renew and Release: a bucket holds `burst` calls and
    refills at `rate` calls per second. Every limit is per replica."""

    per_pod: int = Field(default=32, ge=1, description="live leases one pod may hold")
    per_cluster: int = Field(default=10_000, ge=1, description="live leases one cluster may hold")
    pod_issue_rate: float = Field(
        default=1.0, gt=0, description="Issue calls per second one pod may make, sustained"
    )
    pod_issue_burst: int = Field(
        default=32, ge=1, description="Issue calls one pod may make at once"
    )
    cluster_issue_rate: float = Field(
        default=200.0, gt=0, description="Issue calls per second one cluster may make, sustained"
    )
    cluster_issue_burst: int = Field(
        default=1000, ge=1, description="Issue calls one cluster may make at once"
    )
    pod_lease_call_rate: float = Field(
        default=2.0,
        gt=0,
        description="Ack, Renew and Release calls per second one pod may make, sustained "
        "(one bucket for the three)",
    )
    pod_lease_call_burst: int = Field(
        default=64, ge=1, description="Ack, Renew and Release calls one pod may make at once"
    )
    pod_watch_streams: int = Field(
        default=4,
        ge=1,
        description="Watch streams one pod may hold open on one replica (its agent holds one; "
        "the rest cover reconnects)",
    )
    replica_watch_streams: int = Field(
        default=20_000, ge=1, description="Watch streams one replica serves at once, all pods"
    )
    watch_recheck: Duration = Field(
        default=timedelta(minutes=5),
        description="how often an open Watch stream checks that its pod still exists with "
        "its UID (it ends when the pod is gone) and re-reads the clock; an idle stream does "
        "no other periodic work",
    )


class TokensSettings(_Group):
    """How workload tokens are checked, and what a flood of bad ones may cost: JWKS fetches
    an unknown key id may cause, each cluster's verification lane, and how refusals reach
    the audit trail (docs/security.md lists each bound and the test that keeps it)."""

    max_lifetime: Duration = Field(
        default=timedelta(hours=1),
        description="the longest token lifetime (exp - iat) accepted; the webhook asks for "
        "at most 1h (token_expiration_seconds)",
    )
    jwks_min_interval: Duration = Field(
        default=timedelta(seconds=30),
        description="the shortest time between two fetches of one cluster's JWKS caused by "
        "tokens with unknown key ids",
    )
    unknown_key_memory: Duration = Field(
        default=timedelta(minutes=5),
        description="how long a key id a fetch showed to be unknown fetches nothing more",
    )
    verify_threads: int = Field(
        default=2, ge=1, description="threads checking token signatures, per cluster"
    )
    verify_queue: int = Field(
        default=64,
        ge=0,
        description="token checks that may wait for a thread, per cluster; more are refused "
        "with RESOURCE_EXHAUSTED",
    )
    refusal_summary: Duration = Field(
        default=timedelta(seconds=60),
        description="how often refusals after the first of their kind are written to the "
        "audit trail, as one record per kind with their count",
    )
    jwks_refresh_interval: Duration = Field(
        default=timedelta(minutes=5),
        description="how often registered clusters' JWKS are fetched anew",
    )

    @field_validator("jwks_min_interval", "refusal_summary")
    @classmethod
    def _at_least_a_second(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("must be at least 1s, like 30s")
        return value


class RotationSettings(_Group):
    """Rotations: how long a rotated-away credential keeps working without the pod's Ack,
    how rotations by selector run and resume, and how often scheduled rotations are due."""

    grace: Duration = Field(
        default=timedelta(minutes=5),
        description="old credential's lifetime after a rotation when no Ack comes",
    )
    concurrency: int = Field(
        default=8,
        ge=1,
        le=64,
        description="leases a rotation or revocation by selector handles at once (its default)",
    )
    resume_after: Duration = Field(
        default=timedelta(minutes=1),
        description=(
            "a rotation by selector that no running call carries on (the broker died, the "
            "client went away) is resumed by the broker after this long"
        ),
    )
    resume_interval: Duration = Field(
        default=timedelta(seconds=5),
        description="how often rotations by selector left unfinished are looked for",
    )
    schedule_interval: Duration = Field(
        default=timedelta(seconds=30),
        description="how often roles with a rotation schedule are checked for due leases",
    )


class RevocationSettings(_Group):
    """Revocations at Vault that are due (rotated-away leases, ended ones) and their retries."""

    interval: Duration = Field(
        default=timedelta(seconds=5),
        description="how often revocations that are due (or to be retried) run",
    )
    backoff: Duration = Field(
        default=timedelta(seconds=5),
        description="first wait before a failed revocation is retried; doubles per attempt",
    )
    backoff_cap: Duration = Field(
        default=timedelta(minutes=10),
        description="longest wait between retries of a revocation (retries never stop)",
    )


class ReconcileSettings(_Group):
    """Reconciling the lease store against Vault's keyferry leases."""

    interval: Duration = Field(
        default=timedelta(minutes=10),
        description="how often the store is reconciled against Vault's keyferry leases",
    )
    orphan_age: Duration = Field(
        default=timedelta(minutes=2),
        description=(
            "reconcile revokes a Vault lease the store does not know, and fails a pending "
            "row, only once it is this old (an Issue may still be recording it)"
        ),
    )


class RenewalSettings(_Group):
    """The broker's renewals of watched pods' Vault leases (the Watch stream is the heartbeat)."""

    interval: Duration = Field(default=timedelta(seconds=30), description="how often renewals run")
    fraction: float = Field(
        default=2 / 3,
        gt=0,
        lt=1,
        description="renew a lease once this fraction of its lifetime (since issue or the "
        "last renewal) has passed",
    )
    jitter: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="spread renewals by up to this fraction of a lease's lifetime, earlier, "
        "so leases issued together are not renewed together",
    )
    window: Duration = Field(
        default=timedelta(minutes=2),
        description="renew a lease at the latest when it expires within this time",
    )
    increment: Duration | None = Field(
        default=None,
        description="lifetime to ask Vault for on renewal; unset for the Vault role's default",
    )


class PodsSettings(_Group):
    """The leases of pods that are gone: the pod watches end them, a sweep catches the rest."""

    sweep_interval: Duration = Field(
        default=timedelta(seconds=60),
        description="how often leases whose pod no longer runs are looked for",
    )


class SchedulerSettings(_Group):
    """How the periodic jobs run (APScheduler); each job's interval lives with its subsystem.
    With several replicas on PostgreSQL one replica leads them (advisory lock); renewals and
    the Vault token check run on every replica."""

    jitter: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="spread each job's runs by up to this fraction of its interval",
    )
    leadership: Duration = Field(
        default=timedelta(seconds=2),
        description="how often a follower tries to take the lead and the leader checks its "
        "lock's connection (PostgreSQL only)",
    )


class AccessSettings(_Group):
    """Just-in-time access grants (AccessService): how long one may last, how long a request
    waits for an approver, and how often ended grants' credentials are revoked."""

    max_duration: Duration = Field(
        default=timedelta(hours=8),
        description="the longest grant anyone may request, like 4h; longer requests are refused",
    )
    approval_wait: Duration = Field(
        default=timedelta(hours=1),
        description="a request nobody approved or denied within this time expires",
    )
    expiry_interval: Duration = Field(
        default=timedelta(seconds=15),
        description="how often grants that have ended are expired and their leases revoked",
    )
    cluster_namespace: str = Field(
        default="keyferry-access",
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="the namespace in each member cluster where the broker makes one "
        "ServiceAccount per cluster grant (docs/examples/broker-rbac.yaml creates it)",
    )
    cluster_roles: tuple[str, ...] = Field(
        default=("view", "edit"),
        min_length=1,
        max_length=32,
        description="the ClusterRoles a cluster grant may bind; the broker's RBAC in each "
        "member cluster has `bind` on exactly these (resourceNames)",
    )

    rbac_sync_interval: Duration = Field(
        default=timedelta(seconds=30),
        description="how often the leader brings every cluster's RBAC profile bindings in "
        "line (creates missing ones, restores edited ones, removes unwanted ones it made)",
    )

    @field_validator("cluster_roles")
    @classmethod
    def _role_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not 0 < len(name) <= 253 or any(c.isspace() or c == "/" for c in name):
                raise ValueError(f"{name!r} is not a ClusterRole name; write e.g. [view, edit]")
        return value

    @field_validator("max_duration")
    @classmethod
    def _at_least_a_minute(cls, value: timedelta) -> timedelta:
        if value < MIN_GRANT:
            raise ValueError("must be at least 1m (the shortest grant); write e.g. 4h")
        return value


class ClusterRegistrationSettings(_Group):
    """Who must agree before the cluster registry changes (ClustersService)."""

    approval: Literal["required", "single"] = Field(
        default="required",
        description="required: registering or deregistering a cluster is a request that "
        "another operator approves (`keyferry access approve`), since a registered cluster's "
        "API server speaks for its pods; single: one operator's call does it at once "
        "(test beds and demos; the broker warns at start)",
    )


class BrokerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = Field(
        default=DEFAULT_DATA_DIR,
        description="where the broker keeps generated files (the self-signed workload TLS "
        "identity)",
    )
    vault: VaultSettings
    store: StoreSettings = StoreSettings()
    audit: AuditSettings
    sealing: SealingSettings
    policies: list[Path] = Field(
        min_length=1, description="Cedar policy files, like [/etc/keyferry/policies.cedar]"
    )
    roles: Path | None = Field(
        default=None, description="a roles.yaml applied to the catalog at every start (optional)"
    )
    clusters: list[ClusterConfig] = Field(
        default_factory=list,
        description="member clusters: name, kubeconfig, context, issuer (declared here "
        "until the cluster registry exists)",
    )
    workload: WorkloadListener = WorkloadListener()
    admin: AdminListener = AdminListener()
    metrics: MetricsSettings = MetricsSettings()
    limits: LimitsSettings = LimitsSettings()
    tokens: TokensSettings = TokensSettings()
    rotation: RotationSettings = RotationSettings()
    revocation: RevocationSettings = RevocationSettings()
    reconcile: ReconcileSettings = ReconcileSettings()
    renewal: RenewalSettings = RenewalSettings()
    pods: PodsSettings = PodsSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    access: AccessSettings = AccessSettings()
    cluster_registration: ClusterRegistrationSettings = ClusterRegistrationSettings()
    tracing: TracingSettings = TracingSettings()

    @field_validator("policies")
    @classmethod
    def _policy_files_exist(cls, paths: list[Path]) -> list[Path]:
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ValueError(f"no such file: {', '.join(missing)}")
        return paths

    @field_validator("roles")
    @classmethod
    def _roles_file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path

    @field_validator("clusters")
    @classmethod
    def _unique_clusters(cls, clusters: list[ClusterConfig]) -> list[ClusterConfig]:
        names = [c.name for c in clusters]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"cluster names must be unique; repeated: {', '.join(repeated)}")
        return clusters

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init arguments (load_settings); the environment wins.
        return (_EnvWithMovedKeys(settings_cls, env_settings), init_settings)


class _EnvWithMovedKeys(PydanticBaseSettingsSource):
    """The KEYFERRY_* variables, old keys moved to their new place (broker.moved_settings)."""

    def __init__(self, settings_cls: type[BaseSettings], env: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._env = env

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._env.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        data = self._env()
        moves = move_old_keys(data)
        if moves.conflicts:
            raise SettingsInvalid(
                "the environment",
                [f"{_variable(c.old)}, {_variable(c.new)}: {c.text()}" for c in moves.conflicts],
            )
        for moved in moves.moved:
            warnings.warn(moved, stacklevel=2)
        return data


def _variable(key: str) -> str:
    return ENV_PREFIX + key.replace(".", "__").upper()


class SettingsInvalid(InvalidRequest):
    """The configuration cannot start a broker; `problems` lists every fault, one per line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__("config", problems[0] if problems else "invalid")
        self.source = source
        self.problems = problems
        self.message = f"{source} is not a valid broker configuration:\n  " + "\n  ".join(problems)
        self.args = (self.message,)


def load_settings(path: Path | None) -> BrokerSettings:
    """Settings from a YAML file (optional) and KEYFERRY_* variables, or SettingsInvalid."""
    source = str(path) if path is not None else "the environment"
    data: dict[str, Any] = {}
    document = YamlSource(None, None)
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsInvalid(source, [f"cannot be read: {exc}"]) from exc
        try:
            document = read_yaml(text)
        except YamlInvalid as exc:
            where = f"line {exc.line}: " if exc.line is not None else ""
            raise SettingsInvalid(source, [f"{where}not valid YAML: {exc}"]) from exc
        loaded = document.data
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise SettingsInvalid(
                source, ["must be a YAML mapping (vault:, audit:, policies:, ...)"]
            )
        data = loaded
    moves = move_old_keys(data)
    if moves.conflicts:
        raise SettingsInvalid(source, [_conflict(c, source, document) for c in moves.conflicts])
    for moved in moves.moved:
        warnings.warn(moved, stacklevel=2)
    try:
        return BrokerSettings(**data)
    except ValidationError as exc:
        raise SettingsInvalid(
            source, [_problem(error, source, document) for error in exc.errors()]
        ) from exc


def _conflict(conflict: MovedConflict, source: str, document: YamlSource) -> str:
    lines = [document.line_of(key.split(".")) for key in (conflict.old, conflict.new)]
    where = ", ".join(f"{source}:{line}" for line in lines if line is not None)
    return f"{where + ': ' if where else ''}{conflict.text()}"


def _problem(error: ErrorDetails, source: str, document: YamlSource) -> str:
    loc = [str(part) for part in error["loc"]]
    field = ".".join(loc) or "(top level)"
    line = document.line_of(loc)
    where = f"{source}:{line}: " if line is not None else ""
    kind = error["type"]
    hint = _description(loc)
    if kind == "missing":
        text = f"is required: {hint}" if hint else "is required"
    elif kind == "extra_forbidden":
        env = f"{ENV_PREFIX}{'__'.join(loc).upper()}"
        text = f"is not a setting (a typo? also check the variable {env})"
    elif kind in {"value_error", "assertion_error"}:
        text = str((error.get("ctx") or {}).get("error", error["msg"]))
    else:
        text = f"{error['msg']}: {hint}" if hint else str(error["msg"])
    return f"{where}{field}: {text}"


def _description(loc: list[str]) -> str:
    """The field's description, which says what to write, found by walking the models."""
    model: Any = BrokerSettings
    info = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return ""
        info = fields[part]
        annotation = info.annotation
        model = next(
            (
                arg
                for arg in getattr(annotation, "__args__", (annotation,))
                if hasattr(arg, "model_fields")
            ),
            annotation,
        )
    return info.description or "" if info is not None else ""
