"""Vault backends: the only code that talks to Vault (and imports hvac), behind one interface.

Every call runs on the Vault thread pool (`VaultClient`); every failure leaves as an error
of the broker's tree (`vault_errors.TABLE`).
"""

from .aws import AwsBackend
from .base import Backend
from .database import DatabaseBackend
from .kv import KvBackend
from .leases import list_keyferry_leases
from .pki import PkiBackend
from .registry import Backends
from .settings import AppRoleSettings, VaultSettings
from .vault import VaultClient
from .vault_auth import AppRoleLogin, StaticToken, TokenKeeper

__all__ = [
    "AppRoleLogin",
    "AppRoleSettings",
    "AwsBackend",
    "Backend",
    "Backends",
    "DatabaseBackend",
    "KvBackend",
    "PkiBackend",
    "StaticToken",
    "TokenKeeper",
    "VaultClient",
    "VaultSettings",
    "list_keyferry_leases",
]
