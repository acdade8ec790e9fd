"""`keyferry clusters register` reads a kubeconfig context into server, CA and credential."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from broker.cli.kubeconfig import KubeconfigInvalid, read_context
from broker.service.admin.cluster_checks import key_fingerprints


def kubeconfig(path: Path, user: dict[str, str]) -> Path:
    (path.parent / "ca.crt").write_text("CA PEM")
    path.write_text(
        json.dumps(
            {
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": "https://k:6443", "certificate-authority": "ca.crt"},
                    }
                ],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "prod", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    return path


def test_a_token_context_gives_server_ca_relative_to_the_file_and_token(tmp_path: Path) -> None:
    found = read_context(kubeconfig(tmp_path / "kc", {"token": "t0k"}), "prod")
    assert (found.server, found.ca_pem) == ("https://k:6443", "CA PEM")
    assert found.bearer_token is not None
    assert found.bearer_token.get_secret_value() == "t0k"
    assert found.cert_pem is None


def test_a_certificate_context_gives_certificate_and_key(tmp_path: Path) -> None:
    data = {
        "client-certificate-data": base64.b64encode(b"CERT").decode(),
        "client-key-data": base64.b64encode(b"KEY").decode(),
    }
    found = read_context(kubeconfig(tmp_path / "kc", data), "prod")
    assert found.cert_pem == "CERT"
    assert found.key_pem is not None
    assert found.key_pem.get_secret_value() == "KEY"
    assert found.bearer_token is None


def test_a_missing_context_or_credential_is_named(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "kc", {"exec": "plugin"})
    with pytest.raises(KubeconfigInvalid, match="no context named 'dev'"):
        read_context(path, "dev")
    with pytest.raises(KubeconfigInvalid, match="neither a token nor a client certificate"):
        read_context(path, "prod")


def test_the_same_public_key_is_recognised_under_another_kid() -> None:
    key = {"kty": "RSA", "n": "abc", "e": "AQAB", "alg": "RS256", "use": "sig"}
    assert key_fingerprints({"keys": [{**key, "kid": "1"}]}) == key_fingerprints(
        {"keys": [{**key, "kid": "2"}]}
    )
    assert not key_fingerprints({"keys": [{**key, "n": "xyz"}]}) & key_fingerprints({"keys": [key]})
