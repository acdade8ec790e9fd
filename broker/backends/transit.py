"""Vault transit signs audit checkpoints; the signing key never leaves Vault.

The broker's Vault policy needs only:

    path "<mount>/sign/<key>"   { capabilities = ["update"] }
    path "<mount>/verify/<key>" { capabilities = ["update"] }

and the key is created non-exportable (`ed25519`, the transit default for signing here).
It lives with the backends because they are the only modules that talk to Vault; the audit
trail depends only on its `Signer` protocol (broker/audit/checkpoints.py), not on this class.
It is synchronous: call it from a worker thread. Failures leave through the backends' one
exception table (vault_errors.translate).
"""

from __future__ import annotations

import base64
from typing import Any

import hvac
from hvac import exceptions as vault_errors

from broker.errors import KeyferryError, VaultUnavailable

from .vault_errors import translate

DEFAULT_MOUNT = "transit"
MESSAGE_CAP = 200


class TransitSigner:
    def __init__(self, client: hvac.Client, key: str, mount: str = DEFAULT_MOUNT) -> None:
        self._client = client
        self.key = key
        self.mount = mount

    def sign(self, data: bytes) -> str:
        """A `vault:v<N>:...` signature of `data`; VaultUnavailable if Vault does not sign."""
        try:
            answer: dict[str, Any] = self._client.secrets.transit.sign_data(
                name=self.key, hash_input=_b64(data), mount_point=self.mount
            )
        except (vault_errors.VaultError, OSError) as exc:  # requests' errors are OSErrors
            raise _failed(f"transit {self.mount}/sign/{self.key}", exc) from exc
        return str(answer["data"]["signature"])

    def verify(self, data: bytes, signature: str) -> bool:
        """Whether Vault confirms the signature; a signature Vault cannot parse is False."""
        try:
            answer: dict[str, Any] = self._client.secrets.transit.verify_signed_data(
                name=self.key, hash_input=_b64(data), signature=signature, mount_point=self.mount
            )
        except vault_errors.InvalidRequest:
            return False
        except (vault_errors.VaultError, OSError) as exc:
            raise _failed(f"transit {self.mount}/verify/{self.key}", exc) from exc
        return bool(answer["data"]["valid"])


def _failed(what: str, exc: BaseException) -> KeyferryError:
    mapped = translate(exc)
    if mapped is not None:
        return mapped
    return VaultUnavailable(f"{what} failed: {str(exc)[:MESSAGE_CAP]}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
