"""Credential values rendered as file contents, one function per format, each escaping every
character its consumer gives meaning to.

| format | consumer | what survives |
|---|---|---|
| env | POSIX shell `set -a; . file` | any character but NUL (values single-quoted) |
| json | any JSON parser | anything, NUL as \\u0000 |
| dsn | libpq keyword/value conninfo | any character but NUL (single-quoted, `\\` and `'` escaped) |
| pgpass | libpq's password file | no NUL, CR or LF (line-based); `:` and `\\` escaped |
| aws-credentials | botocore's shared credentials file | no NUL, CR, LF or surrounding blanks |
| pem | TLS libraries | PEM text only |

NUL: a value holding U+0000 cannot live in an environment variable, a C string or a text line
read by libpq or botocore, so every format but json refuses it with a FormatError naming the
credential and the key (never the value) and suggesting json. Silently dropping or truncating
it would hand the app a different secret than the one issued.

The DSN holds what the credential carries: `user` and `password` always, and `host`, `port`,
`dbname`, `sslmode` when the credential has them. The app supplies the rest (its own config,
or PGHOST/PGPORT/PGDATABASE, which libpq merges in).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping

from injector.terms import FileFormat

from .errors import FormatError

Values = Mapping[str, str]

# The keys each backend's credential carries (see broker/backends), by which the agent
# recognises the backend when the pod did not ask for a format.
_DEFAULTS: tuple[tuple[frozenset[str], FileFormat], ...] = (
    (frozenset({"username", "password"}), FileFormat.DSN),
    (frozenset({"access_key_id", "secret_access_key"}), FileFormat.AWS_CREDENTIALS),
    (frozenset({"certificate", "private_key"}), FileFormat.PEM),
)
_DSN_KEYS = (("host", "host"), ("port", "port"), ("dbname", "dbname"), ("database", "dbname"))
_ENV_NAME = re.compile(r"[^A-Za-z0-9_]")


def default_format(values: Values) -> FileFormat:
    """The backend's default format, recognised by the credential's keys; json for KV values."""
    keys = set(values)
    for needed, chosen in _DEFAULTS:
        if needed <= keys:
            return chosen
    return FileFormat.JSON


def render(fmt: FileFormat, name: str, values: Values) -> bytes:
    """The file contents for credential `name` in format `fmt`; FormatError when impossible."""
    return _RENDERERS[fmt](name, values).encode("utf-8")


def _refuse(name: str, key: str, fmt: str, what: str) -> FormatError:
    return FormatError(
        f"credential {name!r}: value {key!r} {what}, which format {fmt} cannot hold; "
        f"ask for keyferry.io/format.{name}: json"
    )


def _no_nul(name: str, fmt: str, values: Values) -> None:
    for key, value in values.items():
        if "\0" in value:
            raise _refuse(name, key, fmt, "contains a NUL character")


def _need(name: str, fmt: str, values: Values, *keys: str) -> None:
    missing = [k for k in keys if k not in values]
    if missing:
        present = ", ".join(repr(key) for key in sorted(values)) or "nothing"
        raise FormatError(
            f"credential {name!r} has no {', '.join(missing)} for format {fmt} "
            f"(it has: {present}); ask for another "
            f"keyferry.io/format.{name}, such as json"
        )


def render_env(name: str, values: Values) -> str:
    """`NAME='value'` lines: upper-cased names, other characters as `_`, single-quoted values."""
    _no_nul(name, "env", values)
    lines: dict[str, str] = {}
    for key in sorted(values):
        variable = _ENV_NAME.sub("_", key).upper()
        if not variable or variable[0].isdigit():
            variable = f"_{variable}"
        if variable in lines:
            raise FormatError(
                f"credential {name!r}: keys {lines[variable]!r} and {key!r} both become "
                f"variable {variable}; ask for keyferry.io/format.{name}: json"
            )
        lines[variable] = key
    quoted = {var: "'" + values[key].replace("'", "'\\''") + "'" for var, key in lines.items()}
    return "".join(f"{var}={value}\n" for var, value in quoted.items())


def render_json(name: str, values: Values) -> str:
    """One JSON object, keys sorted, ASCII-only (every other character escaped)."""
    return json.dumps(dict(values), sort_keys=True, ensure_ascii=True, indent=2) + "\n"


def _conninfo_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render_dsn(name: str, values: Values) -> str:
    """A libpq keyword/value connection string (`host='…' user='…' password='…'`)."""
    _need(name, "dsn", values, "username", "password")
    _no_nul(name, "dsn", values)
    parts = [(keyword, values[key]) for key, keyword in _DSN_KEYS if key in values]
    parts += [("user", values["username"]), ("password", values["password"])]
    if "sslmode" in values:
        parts.append(("sslmode", values["sslmode"]))
    return " ".join(f"{keyword}={_conninfo_quote(value)}" for keyword, value in parts) + "\n"


def _pgpass_field(name: str, key: str, value: str) -> str:
    if any(c in value for c in "\0\r\n"):
        raise _refuse(name, key, "pgpass", "contains a NUL or line break")
    return value.replace("\\", "\\\\").replace(":", "\\:")


def render_pgpass(name: str, values: Values) -> str:
    """`host:port:database:user:password`, `*` for what the credential does not say."""
    _need(name, "pgpass", values, "username", "password")
    fields = [
        _pgpass_field(name, key, values[key]) if key in values else "*"
        for key in ("host", "port", "dbname")
    ]
    fields += [_pgpass_field(name, k, values[k]) for k in ("username", "password")]
    return ":".join(fields) + "\n"


_AWS_KEYS = (
    ("access_key_id", "aws_access_key_id"),
    ("secret_access_key", "aws_secret_access_key"),
    ("session_token", "aws_session_token"),
)


def render_aws_credentials(name: str, values: Values) -> str:
    """An AWS shared credentials file with one `[default]` profile."""
    _need(name, "aws-credentials", values, "access_key_id", "secret_access_key")
    lines = ["[default]"]
    for key, option in _AWS_KEYS:
        if key not in values:
            continue
        value = values[key]
        if any(c in value for c in "\0\r\n") or value != value.strip() or not value:
            raise _refuse(
                name,
                key,
                "aws-credentials",
                "is empty or has a NUL, line break or blanks around it",
            )
        lines.append(f"{option} = {value}")
    return "\n".join(lines) + "\n"


_PEM_BLOCK = re.compile(
    r"^(-----BEGIN [A-Z0-9 ]+-----\n[A-Za-z0-9+/=\n]+-----END [A-Z0-9 ]+-----\n+)+$"
)


def render_pem(name: str, values: Values) -> str:
    """The private key, the certificate and any CA certificates, as one PEM bundle."""
    _need(name, "pem", values, "certificate", "private_key")
    chain = "ca_chain" if "ca_chain" in values else "issuing_ca"  # the chain holds the issuer
    blocks = []
    for key in ("private_key", "certificate", chain):
        if key not in values:
            continue
        text = values[key].replace("\r\n", "\n").strip() + "\n"
        if not _PEM_BLOCK.match(text):
            raise _refuse(name, key, "pem", "is not PEM text")
        blocks.append(text)
    return "".join(blocks)


_RENDERERS: dict[FileFormat, Callable[[str, Values], str]] = {
    FileFormat.ENV: render_env,
    FileFormat.JSON: render_json,
    FileFormat.DSN: render_dsn,
    FileFormat.PGPASS: render_pgpass,
    FileFormat.AWS_CREDENTIALS: render_aws_credentials,
    FileFormat.PEM: render_pem,
}
