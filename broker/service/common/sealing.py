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

Blob format: version byte, [4-byte key id,] 12-byte nonce, ciphertext with its 16-byte tag.
Version 0x03 names the sealing key (its id, broker/store/keyring.py) and is sealed under the
ring's current key; it opens under the key it names, and a key that left the ring is named
in the error (KeyRetired). Associated data as 0x02: `lease_binding` (leases) or the caller's
id (cluster credentials). Blobs from before key ids open under any key of the ring: 0x02
(same associated data), and 0x01, bound to the lease id alone, until their lease ends.
"""

from __future__ import annotations

import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from broker.errors import KeyferryError
from broker.models import Credential
from broker.store import LeaseRecord, Reseal, Store
from broker.store.keyring import KEY_ID_BYTES, KeyMissing, KeyRing, derive_key

VERSION = b"\x03"  # key id, then nonce and ciphertext
BOUND = b"\x02"  # before key ids: sealed under lease_binding, by the one key there was
ID_ONLY = b"\x01"  # a lease's blob sealed before the lease binding: its AAD is the lease id
NONCE_BYTES = 12
KEY_FIX = (
    "put that key back in sealing.keys after the current one (and run `keyferry admin reseal "
    "--config FILE` before removing it again), or release the lease so a new one is issued"
)

__all__ = [
    "CredentialSealer",
    "KeyRetired",
    "SealBroken",
    "SealingKeysMissing",
    "StoreReseal",
    "blob_key_id",
    "check_ring",
    "derive_key",
    "lease_binding",
]


class SealBroken(KeyferryError):
    """A sealed credential does not open: the sealing key changed or the row was altered."""

    reason = "UNAVAILABLE"


class KeyRetired(SealBroken):
    """A sealed credential names a sealing key that is not in the ring."""


def blob_key_id(blob: bytes) -> str | None:
    """The id of the key a blob was sealed under; None for a blob from before key ids."""
    if blob[:1] != VERSION:
        return None
    return blob[1 : 1 + KEY_ID_BYTES].hex()


class CredentialSealer:
    """Seals under the ring's current key; opens under any key of the ring."""

    def __init__(self, keys: KeyRing | bytes) -> None:
        self._ring = KeyRing.coerce(keys)
        self._aeads = {k.id: AESGCM(k.secret) for k in self._ring}

    @property
    def current(self) -> str:
        """The id of the key new blobs are sealed under."""
        return self._ring.current.name

    def seal(self, lease_id: str, credential: Credential) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        plain = json.dumps(credential.reveal(), sort_keys=True).encode()
        current = self._ring.current.id
        sealed = self._aeads[current].encrypt(nonce, plain, lease_id.encode())
        return VERSION + current + nonce + sealed

    def seal_lease(self, lease: LeaseRecord, credential: Credential) -> bytes:
        return self.seal(lease_binding(lease), credential)

    def unseal_lease(self, lease: LeaseRecord, blob: bytes) -> Credential:
        """The lease's credential, if the row still names the pod it was sealed for."""
        bound = lease.id if blob[:1] == ID_ONLY else lease_binding(lease)
        return self._open(lease.id, bound, blob)

    def reseal_lease(self, lease: LeaseRecord, blob: bytes) -> bytes | None:
        """The blob sealed again under the current key and the lease's binding; None when it
        is so already; SealBroken when it does not open."""
        if blob_key_id(blob) == self.current:
            return None
        return self.seal_lease(lease, self.unseal_lease(lease, blob))

    def reseal(self, sealing_id: str, blob: bytes) -> bytes | None:
        """As reseal_lease, for a credential sealed under an id (a cluster's)."""
        if blob_key_id(blob) == self.current:
            return None
        return self.seal(sealing_id, self.unseal(sealing_id, blob))

    def unseal(self, lease_id: str, blob: bytes) -> Credential:
        return self._open(lease_id, lease_id, blob)

    def _open(self, lease_id: str, associated: str, blob: bytes) -> Credential:
        version = blob[:1]
        if version == VERSION:
            kid = blob[1 : 1 + KEY_ID_BYTES]
            try:
                aeads = [self._aeads[self._ring.get(kid).id]]
            except KeyMissing:
                raise KeyRetired(
                    f"the sealed credential of {lease_id} was sealed under sealing key "
                    f"{kid.hex()}, which is not in sealing.keys; {KEY_FIX}"
                ) from None
            rest = blob[1 + KEY_ID_BYTES :]
        elif version in (BOUND, ID_ONLY):
            aeads = list(self._aeads.values())  # before key ids: any key of the ring
            rest = blob[1:]
        else:
            raise SealBroken(f"the sealed credential of {lease_id} has an unknown format")
        nonce, body = rest[:NONCE_BYTES], rest[NONCE_BYTES:]
        plain = None
        for aead in aeads:
            try:
                plain = aead.decrypt(nonce, body, associated.encode())
                break
            except InvalidTag:
                continue
        if plain is None:
            raise SealBroken(
                f"the sealed credential of {lease_id} does not open under any key of "
                "sealing.keys: was a key removed, or the row edited? Release the lease so a "
                "new one is issued"
            )
        values = json.loads(plain)
        return Credential(values={name: SecretStr(value) for name, value in values.items()})

    def __repr__(self) -> str:
        return f"CredentialSealer(keys={self._ring.names})"


class StoreReseal(Reseal):
    """The store's re-sealing (broker/store/rekey.py) with this sealer."""

    def __init__(self, sealer: CredentialSealer) -> None:
        self._sealer = sealer

    def lease(self, lease: LeaseRecord, blob: bytes) -> bytes | None:
        return self._sealer.reseal_lease(lease, blob)

    def other(self, sealing_id: str, blob: bytes) -> bytes | None:
        return self._sealer.reseal(sealing_id, blob)

    def key_of(self, blob: bytes) -> str | None:
        return blob_key_id(blob)


class SealingKeysMissing(KeyferryError):
    """Rows of the store were sealed or MAC'd under keys the ring no longer holds."""

    reason = "FAILED_PRECONDITION"


SHOWN = 10  # rows named in SealingKeysMissing


def check_ring(store: Store, sealer: CredentialSealer, ring: KeyRing) -> None:
    """At start: SealingKeysMissing, naming the rows and the fix, when any sealed credential
    or MAC names a key that is not in the ring (rows from before key ids are not looked at
    here: they open under any key of the ring, and are refused one by one if none fits)."""
    missing = [
        use
        for use in store.rekey(StoreReseal(sealer)).uses()
        if use.kid is not None and not ring.has(bytes.fromhex(use.kid))
    ]
    if not missing:
        return
    counts: dict[str, int] = {}
    for use in missing:
        counts[use.table] = counts.get(use.table, 0) + 1
    keys = sorted({use.kid for use in missing if use.kid is not None})
    shown = "; ".join(f"{use.table} {use.key} under key {use.kid}" for use in missing[:SHOWN])
    more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
    raise SealingKeysMissing(
        f"the store holds {len(missing)} sealed credentials or MACs "
        f"({', '.join(f'{n} in {t}' for t, n in sorted(counts.items()))}) made by sealing "
        f"key(s) {', '.join(keys)}, which sealing.keys (ids {', '.join(ring.names)}) does "
        f"not hold: {shown}{more}. Put the old key(s) back in sealing.keys after the current "
        "one, start, run `keyferry admin reseal --config FILE`, and only then remove them"
    )


def lease_binding(lease: LeaseRecord) -> str:
    """The associated data of a lease's sealed credential: who it is handed to."""
    fields = (lease.id, lease.cluster, lease.pod_uid, lease.credential, lease.role)
    return json.dumps([*fields, lease.generation])
