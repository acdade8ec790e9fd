"""The sealing key ring: the first key seals and signs, every key opens and verifies.

One secret protects three things the store holds or carries: credentials sealed in lease,
cluster and cluster-request rows (AES-256-GCM, service/common/sealing.py), the MACs of role,
cluster and cluster-request rows (integrity.py) and the MACs of cross-replica event notes
(service/events/signed.py); the last two under keys derived from it (`derive_key`). A ring
lets that secret be rotated: the **current** (first) key makes every new blob and MAC, and
every key of the ring opens or verifies what it made, so replicas whose rings hold the same
keys in another order understand each other during a rollout. `keyferry admin reseal`
moves every row to the current key; then the old key can leave the ring.

Each key has a short id, the first KEY_ID_BYTES of HKDF(key, "key id"): not secret, and
written beside what the key made (a sealed blob's header, a row MAC's prefix, a note's
`kid`), so opening picks the key instead of trying them all, and a row made by a key that
left the ring is named as such (KeyMissing) instead of looking edited.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_ID_BYTES = 4
MAX_KEYS = 8


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


def key_id(sealing_key: bytes) -> bytes:
    """The key's short public id."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_ID_BYTES, salt=None, info=b"keyferry id")
    return hkdf.derive(sealing_key)


class RingKey(NamedTuple):
    id: bytes  # KEY_ID_BYTES, the id of the sealing key this one is (or derives from)
    secret: bytes

    @property
    def name(self) -> str:
        return self.id.hex()


class KeyMissing(Exception):
    """Something was made by a key that is not in the ring."""

    def __init__(self, key: str) -> None:
        super().__init__(f"made by sealing key {key}, which is not in sealing.keys")
        self.key = key


class KeyRing:
    """Keys, the current one first; ids unique."""

    def __init__(self, keys: Sequence[RingKey]) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        ids = [k.id for k in keys]
        if len(set(ids)) != len(ids):
            raise ValueError("a key ring holds each key once")
        self._keys = tuple(keys)
        self._by_id = {k.id: k for k in keys}

    @classmethod
    def of(cls, sealing_keys: Sequence[bytes]) -> KeyRing:
        """The ring of these sealing keys (current first), each with its id."""
        return cls([RingKey(key_id(key), key) for key in sealing_keys])

    @classmethod
    def coerce(cls, keys: KeyRing | bytes) -> KeyRing:
        """A ring as given, or the ring of one raw key (tests, one-key callers)."""
        return keys if isinstance(keys, KeyRing) else cls([RingKey(key_id(keys), keys)])

    @property
    def current(self) -> RingKey:
        return self._keys[0]

    def get(self, kid: bytes) -> RingKey:
        """The key of that id; KeyMissing if the ring has none."""
        found = self._by_id.get(kid)
        if found is None:
            raise KeyMissing(kid.hex())
        return found

    def has(self, kid: bytes) -> bool:
        return kid in self._by_id

    def derive(self, purpose: str) -> KeyRing:
        """The ring of keys derived for `purpose`, with the ids of the keys they come from."""
        return KeyRing([RingKey(k.id, derive_key(k.secret, purpose)) for k in self._keys])

    @property
    def names(self) -> list[str]:
        return [k.name for k in self._keys]

    def __iter__(self) -> Iterator[RingKey]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeyRing(ids={self.names})"
