"""The one table that turns hvac, requests and timeout exceptions into the broker's error tree.

    foreign exception                               broker error         retry after
    requests ConnectionError, Timeout, TimeoutError VaultUnavailable     2 s
    hvac VaultDown (503: sealed, standby)           VaultUnavailable     5 s
    hvac 500, 501, 502, 412, 429, other statuses    VaultUnavailable     1 s
    any other requests exception                    VaultUnavailable     1 s
    hvac Forbidden (403), Unauthorized (401)        PermissionDenied
    hvac InvalidPath (404)                          NotFound
    hvac InvalidRequest (400), UnsupportedOperation,
      ParamValidationError                          InvalidRequest       (Vault's message, capped)

Order matters: the first row whose class matches wins, so subclasses come first. Callers
raise the result `from` the original, so logs keep the cause.
"""

from __future__ import annotations

from collections.abc import Callable

import hvac.exceptions as vault
import requests

from broker import errors

MESSAGE_CAP = 300
RETRY_CONNECT = 2.0
RETRY_SEALED = 5.0
RETRY_SERVER = 1.0


def capped(text: str, limit: int = MESSAGE_CAP) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _vault_says(exc: BaseException) -> str:
    errs = getattr(exc, "errors", None)
    if isinstance(errs, list) and errs:
        return capped("; ".join(str(e) for e in errs))
    return capped(str(exc.args[0]) if exc.args and exc.args[0] else type(exc).__name__)


def _unreachable(exc: BaseException) -> errors.KeyferryError:
    return errors.VaultUnavailable(
        f"Vault did not answer: {capped(str(exc) or type(exc).__name__)}",
        retry_after=RETRY_CONNECT,
    )


def _sealed(exc: BaseException) -> errors.KeyferryError:
    return errors.VaultUnavailable(
        f"Vault is sealed, on standby or down: {_vault_says(exc)}", retry_after=RETRY_SEALED
    )


def _server(exc: BaseException) -> errors.KeyferryError:
    return errors.VaultUnavailable(
        f"Vault failed to answer ({type(exc).__name__}): {_vault_says(exc)}",
        retry_after=RETRY_SERVER,
    )


def _denied(exc: BaseException) -> errors.KeyferryError:
    return errors.PermissionDenied(
        f"Vault refused the broker's token: {_vault_says(exc)}; check the broker's AppRole and "
        "that its policy is docs/vault-policy.hcl"
    )


def _missing(exc: BaseException) -> errors.KeyferryError:
    return errors.NotFound(f"Vault has nothing there: {_vault_says(exc)}")


def _invalid(exc: BaseException) -> errors.KeyferryError:
    return errors.InvalidRequest("vault", f"Vault refused the request: {_vault_says(exc)}")


TABLE: tuple[tuple[type[BaseException], Callable[[BaseException], errors.KeyferryError]], ...] = (
    (vault.VaultDown, _sealed),
    (vault.Forbidden, _denied),
    (vault.Unauthorized, _denied),
    (vault.InvalidPath, _missing),
    (vault.InvalidRequest, _invalid),
    (vault.UnsupportedOperation, _invalid),
    (vault.ParamValidationError, _invalid),
    (vault.VaultError, _server),
    (requests.ConnectionError, _unreachable),
    (requests.Timeout, _unreachable),
    (TimeoutError, _unreachable),
    (requests.RequestException, _server),
)


def translate(exc: BaseException) -> errors.KeyferryError | None:
    """The broker error for a foreign exception, or None when the table does not know it."""
    if isinstance(exc, errors.KeyferryError):
        return exc
    for kind, make in TABLE:
        if isinstance(exc, kind):
            return make(exc)
    return None
