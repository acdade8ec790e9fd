"""The admin listener's PKI: one CA that signs the broker's admin serving certificate and
every operator's client certificate (what `keyferry admin init` and `issue-operator` write).

An operator certificate's subject is the operator: CN is the name, each O attribute one
group (Kubernetes' convention for client certificates); operators.py reads it back. Its
subject alternative name `urn:keyferry:operator:<identity>` is the person behind it (an
email, an employee id): the identity approvals compare, so one person holding two names
cannot approve their own request. Without one, the identity is the name.

Operator certificates are short-lived (OPERATOR_VALIDITY, 12 hours by default): renewing
one (`renew_operator`) signs a new key for the same subject and identity. A certificate
that must stop working before it ends goes on the admin listener's deny-list of serials
(operators.py, `keyferry admin revoke-operator`). Keys are ECDSA P-256 and every private
key is written with mode 0600, never overwritten in place without the caller asking
(`force`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.errors import InvalidRequest

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=365)  # the broker's admin serving certificate
OPERATOR_VALIDITY = dt.timedelta(hours=12)
MAX_OPERATOR_VALIDITY = dt.timedelta(days=7)
IDENTITY_URN = "urn:keyferry:operator:"
BACKDATE = dt.timedelta(minutes=5)
CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "broker-admin.crt", "broker-admin.key"
OPERATORS = "operators"
CA_NAME = "keyferry admin CA"


class PkiExists(InvalidRequest):
    """A file that `init`/`issue-operator` would write exists; pass force to replace it."""

    def __init__(self, path: Path) -> None:
        super().__init__("force", f"{path} exists; pass --force to replace it")
        self.path = path


@dataclass(frozen=True)
class PemPair:
    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class AdminCa:
    """The CA as loaded from its folder: signs the broker's and operators' certificates."""

    folder: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_path(self) -> Path:
        return self.folder / CA_CERT

    @classmethod
    def load(cls, folder: Path) -> AdminCa:
        cert_path, key_path = folder / CA_CERT, folder / CA_KEY
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise InvalidRequest(
                "dir", f"no admin CA in {folder} ({exc}); run `keyferry admin init` first"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidRequest("dir", f"{key_path} is not an EC private key")
        return cls(folder, cert, key)

    def issue_server(self, hosts: Sequence[str], *, force: bool = False) -> PemPair:
        """The broker's admin serving certificate for `hosts` (DNS names or IP addresses)."""
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyferry-broker-admin")])
        return self._issue(
            subject,
            [x509.SubjectAlternativeName(sans)],
            ExtendedKeyUsageOID.SERVER_AUTH,
            cert_path=self.folder / SERVER_CERT,
            key_path=self.folder / SERVER_KEY,
            force=force,
        )

    def issue_operator(
        self,
        name: str,
        groups: Sequence[str],
        *,
        identity: str | None = None,
        validity: dt.timedelta = OPERATOR_VALIDITY,
        force: bool = False,
    ) -> PemPair:
        """A client certificate whose subject is the operator: CN name, one O per group,
        and the person's `identity` as a URN; it lasts `validity`."""
        check_operator(name, groups)
        check_validity(validity)
        if identity is not None:
            check_identity(identity)
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
        attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        folder = self.folder / OPERATORS
        folder.mkdir(mode=0o700, exist_ok=True)
        sans = []
        if identity is not None:
            uri = x509.UniformResourceIdentifier(IDENTITY_URN + identity)
            sans.append(x509.SubjectAlternativeName([uri]))
        return self._issue(
            x509.Name(attributes),
            sans,
            ExtendedKeyUsageOID.CLIENT_AUTH,
            cert_path=folder / f"{name}.crt",
            key_path=folder / f"{name}.key",
            force=force,
            validity=validity,
        )

    def renew_operator(self, name: str, validity: dt.timedelta = OPERATOR_VALIDITY) -> PemPair:
        """A new key and certificate for operator `name`, with the subject and identity of
        its current certificate (expired or not); InvalidRequest when it has none."""
        path = self.folder / OPERATORS / f"{name}.crt"
        try:
            current = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise InvalidRequest(
                "name",
                f"no certificate of operator {name!r} in {path.parent} ({exc}); "
                "issue one with `keyferry admin issue-operator`",
            ) from exc
        groups = [
            str(a.value) for a in current.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        ]
        return self.issue_operator(
            name, groups, identity=certificate_identity(current), validity=validity, force=True
        )

    def _issue(
        self,
        subject: x509.Name,
        extensions: list[x509.SubjectAlternativeName],
        usage: x509.ObjectIdentifier,
        *,
        cert_path: Path,
        key_path: Path,
        force: bool,
        validity: dt.timedelta = LEAF_VALIDITY,
    ) -> PemPair:
        for path in (cert_path, key_path):
            if path.exists() and not force:
                raise PkiExists(path)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + validity, self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return PemPair(cert_path, key_path)


def create_ca(folder: Path, *, force: bool = False) -> AdminCa:
    """A new CA in `folder` (ca.crt, ca.key mode 0600); PkiExists if one is there."""
    for path in (folder / CA_CERT, folder / CA_KEY):
        if path.exists() and not force:
            raise PkiExists(path)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    write_private(folder / CA_KEY, _key_pem(key))
    (folder / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return AdminCa(folder, cert, key)


def check_operator(name: str, groups: Sequence[str]) -> None:
    """An operator name and groups fit for a subject and for file names."""
    for field, value in [("name", name), *(("group", g) for g in groups)]:
        if not value or len(value) > 64 or not all(c.isalnum() or c in "-_.@" for c in value):
            raise InvalidRequest(
                field, f"{value!r}: use 1 to 64 letters, digits, '-', '_', '.' or '@'"
            )
    if name.startswith("."):
        raise InvalidRequest("name", f"{name!r} must not start with '.'")


def check_validity(validity: dt.timedelta) -> None:
    if not dt.timedelta(minutes=5) <= validity <= MAX_OPERATOR_VALIDITY:
        raise InvalidRequest(
            "validity", "an operator certificate lasts between 5m and 7d (renew it instead)"
        )


def check_identity(identity: str) -> None:
    """A person's identity for a certificate URN: an email or an id, no spaces."""
    allowed = set("-_.@+")
    if not 0 < len(identity) <= 128 or not all(c.isalnum() or c in allowed for c in identity):
        raise InvalidRequest(
            "identity", f"{identity!r}: use 1 to 128 letters, digits, '-', '_', '.', '@', '+'"
        )


def certificate_identity(cert: x509.Certificate) -> str | None:
    """The `urn:keyferry:operator:` identity of a certificate, if it has exactly one."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    found = [
        uri.removeprefix(IDENTITY_URN)
        for uri in sans.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(IDENTITY_URN)
    ]
    return found[0] if len(found) == 1 and found[0] else None


def write_private(path: Path, data: bytes) -> None:
    """Write a private file with mode 0600 (also when it existed with a wider mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
