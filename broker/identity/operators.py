"""Operators on the admin listener, as their verified client certificate names them.

The TLS layer has already verified the chain against the admin CA (the listener requires
a client certificate); this only reads the subject: CN is the operator's name, each O
attribute one group (as Kubernetes reads client certificates), and its
`urn:keyferry:operator:` subject alternative name the person (`Operator.identity`; the
name when there is none), which approvals compare. OU and other attributes are ignored.
A certificate without exactly one CN names nobody and is refused.

`RevokedSerials` is the admin listener's deny-list (admin.revoked_operators): serials of
operator certificates that must stop working before they end, one hexadecimal serial a
line (`keyferry admin revoke-operator` appends them). The file is read again whenever it
changes; one that cannot be read refuses every admin call (fail closed).
"""

from __future__ import annotations

import threading
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from broker.errors import TemporaryError, Unauthenticated
from broker.policy import Operator

from .admin_pki import certificate_identity

MAX_DENY_LIST = 100_000  # serials a deny-list file may hold


def operator_from_certificate(pem: bytes) -> Operator:
    """The Operator a PEM client certificate names; Unauthenticated when it names none."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise Unauthenticated("the client certificate cannot be read") from exc
    names = [_text(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(names) != 1 or not names[0]:
        raise Unauthenticated(
            "the client certificate's subject must have exactly one CN (the operator's name); "
            "issue one with `keyferry admin issue-operator`"
        )
    groups = [
        _text(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    ]
    return Operator(
        name=names[0],
        groups=tuple(dict.fromkeys(g for g in groups if g)),
        identity=certificate_identity(cert),
    )


class OperatorRevoked(Unauthenticated):
    """The client certificate's serial is on the admin listener's deny-list."""


class DenyListUnreadable(TemporaryError):
    """The deny-list file cannot be read: every admin call is refused until it can."""


class RevokedSerials:
    """The deny-list file, read again when its modification time or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self.serials()  # a file that cannot be read stops the start

    def check(self, pem: bytes) -> None:
        """OperatorRevoked when the certificate's serial is listed."""
        try:
            serial = x509.load_pem_x509_certificate(pem).serial_number
        except ValueError as exc:
            raise Unauthenticated("the client certificate cannot be read") from exc
        if serial in self.serials():
            raise OperatorRevoked(
                f"operator certificate serial {serial:x} was revoked (admin.revoked_operators); "
                "ask the admin CA's holder for a new certificate"
            )

    def serials(self) -> frozenset[int]:
        with self._lock:
            try:
                stat = self.path.stat()
                seen = (stat.st_mtime_ns, stat.st_size)
                if seen != self._seen:
                    self._serials = parse_serials(self.path.read_text())
                    self._seen = seen
            except (OSError, ValueError) as exc:
                raise DenyListUnreadable(
                    f"the operator deny-list {self.path} cannot be read ({exc}); every admin "
                    "call is refused until it can",
                    retry_after=5.0,
                ) from exc
            return self._serials


def parse_serials(text: str) -> frozenset[int]:
    """Hexadecimal serials, one a line; `#` starts a comment; ValueError on anything else."""
    found = set()
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip().replace(":", "")
        if not entry:
            continue
        try:
            found.add(int(entry, 16))
        except ValueError:
            raise ValueError(f"line {number}: {entry[:40]!r} is not a hexadecimal serial") from None
        if len(found) > MAX_DENY_LIST:
            raise ValueError(f"more than {MAX_DENY_LIST} serials")
    return frozenset(found)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
