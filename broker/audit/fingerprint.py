"""Secret values appear in the audit trail only as keyed fingerprints.

A keyed HMAC rather than a plain hash: a short or guessable secret (a six-digit PIN, a
password from a word list) cannot be recovered by hashing candidates without the key,
yet the same secret always gives the same fingerprint, so records can be correlated.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr

from broker.errors import InvalidRequest

PREFIX = "hmac-sha256:"
MIN_KEY_BYTES = 32


class Fingerprinter:
    def __init__(self, key: SecretStr | bytes) -> None:
        raw = key.get_secret_value().encode() if isinstance(key, SecretStr) else key
        if len(raw) < MIN_KEY_BYTES:
            raise InvalidRequest(
                "audit.hmac_key", f"must be at least {MIN_KEY_BYTES} bytes of random data"
            )
        self._key = raw

    def fingerprint(self, secret: str | bytes | SecretStr) -> str:
        """`hmac-sha256:<hex>` of the secret's UTF-8 bytes; never the secret itself."""
        if isinstance(secret, SecretStr):
            secret = secret.get_secret_value()
        data = secret.encode() if isinstance(secret, str) else secret
        return PREFIX + hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "Fingerprinter(key=**********)"
