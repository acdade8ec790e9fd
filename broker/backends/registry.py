"""One backend per kind, picked by a role's or a lease's kind."""

from __future__ import annotations

from collections.abc import Mapping

from broker.models import BackendKind, RoleSpec, VaultLease

from .aws import AwsBackend
from .base import Backend
from .database import DatabaseBackend
from .kv import KvBackend
from .pki import PkiBackend
from .vault import VaultClient


class Backends:
    def __init__(self, vault: VaultClient) -> None:
        self.vault = vault
        self._by_kind: Mapping[BackendKind, Backend] = {
            "database": DatabaseBackend(vault),
            "aws": AwsBackend(vault),
            "kv": KvBackend(vault),
            "pki": PkiBackend(vault),
        }

    def for_role(self, role: RoleSpec) -> Backend:
        return self._by_kind[role.kind]

    def for_lease(self, lease: VaultLease) -> Backend:
        return self._by_kind[lease.kind]
