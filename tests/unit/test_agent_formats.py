"""Every format with hostile values, read back by the consumer each format is for: a POSIX
shell, json, libpq's own conninfo parser, libpq's pgpass rules and botocore's config parser."""

from __future__ import annotations

import json
import subprocess

import pytest
from botocore.configloader import raw_config_parse
from psycopg.conninfo import conninfo_to_dict

from injector.agent.errors import FormatError
from injector.agent.formats import default_format, render
from injector.contract import FileFormat

HOSTILE = [
    "plain",
    'it\'s "quoted"',
    "line one\nline two\r\n",
    "$HOME `id` $(id) ${x}",
    "back\\slash\\\\ and trailing \\",
    "unicode: é ß 日本 🔑",
    " spaces around ",
    "key=value; #comment :colon:",
    "'",
    "",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_env_survives_a_posix_shell(value: str, tmp_path: object) -> None:
    text = render(FileFormat.ENV, "cfg", {"api-key": value, "password": value}).decode()
    script = f"set -a\n{text}\nprintf '%s' \"$API_KEY\"; printf '\\0'; printf '%s' \"$PASSWORD\""
    out = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout
    assert out.decode().split("\0") == [value, value]


@pytest.mark.parametrize("value", [*HOSTILE, "nul\0inside"])
def test_json_round_trips_anything(value: str) -> None:
    data = render(FileFormat.JSON, "cfg", {"k": value, "other": "x"})
    assert json.loads(data) == {"k": value, "other": "x"}
    assert data.isascii()


@pytest.mark.parametrize("value", HOSTILE)
def test_dsn_is_parsed_back_by_libpq(value: str) -> None:
    values = {"username": value or "u", "password": value, "host": "127.0.0.1", "port": "5432"}
    parsed = conninfo_to_dict(render(FileFormat.DSN, "db", values).decode())
    assert parsed == {
        "host": "127.0.0.1",
        "port": "5432",
        "user": value or "u",
        "password": value,
    }


def test_pgpass_escapes_colons_and_backslashes_and_refuses_line_breaks() -> None:
    text = render(FileFormat.PGPASS, "db", {"username": "u:1", "password": "p\\:x"}).decode()
    assert text == "*:*:*:u\\:1:p\\\\\\:x\n"
    with pytest.raises(FormatError, match="'password'") as caught:
        render(FileFormat.PGPASS, "db", {"username": "u", "password": "a\nb"})
    assert "a\nb" not in str(caught.value)


def test_aws_credentials_are_read_by_botocore(tmp_path: object) -> None:
    from pathlib import Path  # noqa: PLC0415

    values = {
        "access_key_id": "AKIA;#%(x)s",
        "secret_access_key": "s3cr=t/+ü",
        "session_token": "tok#en",
    }
    path = Path(str(tmp_path)) / "credentials"
    path.write_bytes(render(FileFormat.AWS_CREDENTIALS, "s3", values))
    parsed = raw_config_parse(str(path))["default"]
    assert parsed == {
        "aws_access_key_id": values["access_key_id"],
        "aws_secret_access_key": values["secret_access_key"],
        "aws_session_token": values["session_token"],
    }


@pytest.mark.parametrize("value", ["a\nb", " lead", "trail ", "", "n\0ul"])
def test_aws_credentials_refuse_what_botocore_would_change(value: str) -> None:
    with pytest.raises(FormatError, match="secret_access_key"):
        render(FileFormat.AWS_CREDENTIALS, "s3", {"access_key_id": "A", "secret_access_key": value})


PEM_KEY = "-----BEGIN PRIVATE KEY-----\nQUJD\n-----END PRIVATE KEY-----"
PEM_CERT = "-----BEGIN CERTIFICATE-----\nREVG\n-----END CERTIFICATE-----\n"


def test_pem_bundles_key_certificate_and_chain_once() -> None:
    values = {
        "certificate": PEM_CERT,
        "private_key": PEM_KEY,
        "issuing_ca": PEM_CERT,
        "ca_chain": PEM_CERT,
        "serial_number": "1",
    }
    text = render(FileFormat.PEM, "tls", values).decode()
    assert text == f"{PEM_KEY}\n{PEM_CERT}{PEM_CERT}"
    with pytest.raises(FormatError, match="not PEM"):
        render(FileFormat.PEM, "tls", {"certificate": "x'; rm -rf", "private_key": PEM_KEY})


@pytest.mark.parametrize(
    "fmt", [FileFormat.ENV, FileFormat.DSN, FileFormat.PGPASS, FileFormat.AWS_CREDENTIALS]
)
def test_nul_is_refused_naming_the_key_not_the_value(fmt: FileFormat) -> None:
    values = {
        "username": "u",
        "password": "sec\0ret",
        "access_key_id": "A",
        "secret_access_key": "sec\0ret",
    }
    with pytest.raises(FormatError) as caught:
        render(fmt, "db", values)
    assert "sec" not in str(caught.value).replace("secret_access_key", "")
    assert "format.db: json" in str(caught.value)


def test_env_refuses_two_keys_that_become_one_variable() -> None:
    with pytest.raises(FormatError, match="API_KEY"):
        render(FileFormat.ENV, "cfg", {"api-key": "1", "api_key": "2"})
    assert render(FileFormat.ENV, "cfg", {"1x": "v"}) == b"_1X='v'\n"


def test_a_format_without_its_keys_says_what_the_credential_has() -> None:
    with pytest.raises(FormatError, match=r"has no username, password .*it has: 'color'"):
        render(FileFormat.DSN, "cfg", {"color": "blue"})


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"username", "password"}, FileFormat.DSN),
        ({"access_key_id", "secret_access_key", "session_token"}, FileFormat.AWS_CREDENTIALS),
        ({"certificate", "private_key", "issuing_ca"}, FileFormat.PEM),
        ({"color", "password"}, FileFormat.JSON),
    ],
)
def test_default_format_by_backend(keys: set[str], expected: FileFormat) -> None:
    assert default_format(dict.fromkeys(keys, "x")) == expected
