"""Credentials sealed for the lease store, so a repeated Issue can return them again.

Issue is idempotent per (cluster, pod UID, credential name): a crash-looping agent must get the same
credential back, not a new Vault lease each time. Vault cannot be asked again for a dynamic
secret's values, so the broker must keep them. Options weighed:

- in memory: lost on restart, and not shared between replicas; a restarted broker would
  have to issue a second lease for a pod that already holds one;
- plaintext in the store: anyone who can read a backup or the database reads every live
  credential;
- Vault transit encrypt/decrypt: the key stays in Vault, but every Issue and every replay
  costs another Vault round trip and Vault becomes a hard dependency of replays;
- AES-256-GCM here, with a key from the broker's settings (chosen): a store dump alone
  reveals nothing; the lease's identity is the associated data, so a sealed blob copied
  onto another lease row does not open; each seal uses a fresh random 96-bit nonce. The blob
  is cleared as soon as the lease stops being handed out (revoking, revoked, failed).

The associated data of a lease's credential is the lease id with everything that says whom
it is handed to: cluster, pod UID, credential name, role and generation (`lease_binding`).
Someone who can write the store but has not the sealing key cannot point a victim's lease
row at their own pod: the edited row no longer opens.

Blob format: version byte, 12-byte nonce, ciphertext with its 16-byte tag. Version 0x02 is
sealed under `lease_binding` (leases) or the caller's id (cluster credentials); 0x01 blobs,
sealed before, were bound to the lease id alone and still open until their lease ends.
"""

from __future__ import annotations

import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from broker.errors import KeyferryError
from broker.models import Credential
from broker.store import LeaseRecord

VERSION = b"\x02"
ID_ONLY = b"\x01"  # a lease's blob sealed before the lease binding: its AAD is the lease id
NONCE_BYTES = 12


class SealBroken(KeyferryError):
    """A sealed credential does not open: the sealing key changed or the row was altered."""

    reason = "UNAVAILABLE"


class CredentialSealer:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, lease_id: str, credential: Credential) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        plain = json.dumps(credential.reveal(), sort_keys=True).encode()
        return VERSION + nonce + self._aead.encrypt(nonce, plain, lease_id.encode())

    def seal_lease(self, lease: LeaseRecord, credential: Credential) -> bytes:
        return self.seal(lease_binding(lease), credential)

    def unseal_lease(self, lease: LeaseRecord, blob: bytes) -> Credential:
        """The lease's credential, if the row still names the pod it was sealed for."""
        bound = lease.id if blob[:1] == ID_ONLY else lease_binding(lease)
        return self._open(lease.id, bound, blob)

    def unseal(self, lease_id: str, blob: bytes) -> Credential:
        return self._open(lease_id, lease_id, blob)

    def _open(self, lease_id: str, associated: str, blob: bytes) -> Credential:
        if blob[:1] not in (VERSION, ID_ONLY):
            raise SealBroken(f"the sealed credential of lease {lease_id} has an unknown format")
        nonce, body = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
        try:
            plain = self._aead.decrypt(nonce, body, associated.encode())
        except InvalidTag as exc:
            raise SealBroken(
                f"the sealed credential of lease {lease_id} does not open: was sealing.key "
                "changed, or the row edited? Release the lease so a new one is issued"
            ) from exc
        values = json.loads(plain)
        return Credential(values={name: SecretStr(value) for name, value in values.items()})

    def __repr__(self) -> str:
        return "CredentialSealer(key=**********)"


def derive_key(sealing_key: bytes, purpose: str) -> bytes:
    """A key of its own for `purpose` (cross-replica events, store row MACs), derived from
    the sealing key with HKDF-SHA256: held where the sealing key is (the broker's settings
    or secret files), never in the database, and never the sealing key itself."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=f"keyferry {purpose} v1".encode(),
    )
    return hkdf.derive(sealing_key)


def lease_binding(lease: LeaseRecord) -> str:
    """The associated data of a lease's sealed credential: who it is handed to."""
    fields = (lease.id, lease.cluster, lease.pod_uid, lease.credential, lease.role)
    return json.dumps([*fields, lease.generation])
