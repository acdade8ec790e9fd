"""Reading one context of a kubeconfig into what ClustersService.RegisterCluster needs: the
API server URL, its CA bundle, the credential, and (when not given) the issuer the
cluster announces at /.well-known/openid-configuration."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from pydantic import BaseModel, ConfigDict, SecretStr
from urllib3.exceptions import HTTPError

DISCOVERY_TIMEOUT = 10.0


class KubeconfigInvalid(Exception):
    """The kubeconfig or its context cannot give what registration needs; `message` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class KubeconfigCluster(BaseModel):
    model_config = ConfigDict(frozen=True)

    server: str
    ca_pem: str
    bearer_token: SecretStr | None = None
    cert_pem: str | None = None
    key_pem: SecretStr | None = None


def read_context(path: Path, context: str) -> KubeconfigCluster:
    """Server, CA and credential of `context` in the kubeconfig at `path`."""
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise KubeconfigInvalid(f"{path}: cannot be read as a kubeconfig: {exc}") from exc
    base = path.parent
    entry = _named(config, "contexts", context, path)["context"]
    cluster = _named(config, "clusters", entry.get("cluster", ""), path)["cluster"]
    user = _named(config, "users", entry.get("user", ""), path).get("user") or {}
    ca = _data(cluster, "certificate-authority", base)
    if not cluster.get("server") or ca is None:
        raise KubeconfigInvalid(f"{path}: context {context!r} needs a server and its CA bundle")
    token = user.get("token")
    if token is None and user.get("tokenFile"):
        token = (base / user["tokenFile"]).read_text().strip()
    cert, key = _data(user, "client-certificate", base), _data(user, "client-key", base)
    if token is None and (cert is None or key is None):
        raise KubeconfigInvalid(
            f"{path}: the user of context {context!r} has neither a token nor a client "
            "certificate and key (exec and auth-provider plugins are not supported)"
        )
    return KubeconfigCluster(
        server=cluster["server"],
        ca_pem=ca,
        bearer_token=SecretStr(token) if token else None,
        cert_pem=None if token else cert,
        key_pem=None if token or key is None else SecretStr(key),
    )


def discover_issuer(path: Path, context: str) -> str:
    """The issuer the cluster announces in its OIDC discovery document."""
    try:
        api = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(path), context=context
        )
        with api:
            response: Any = k8s.WellKnownApi(api).get_service_account_issuer_open_id_configuration(
                _request_timeout=DISCOVERY_TIMEOUT, _preload_content=False
            )
            issuer = json.loads(response.data.decode()).get("issuer")
    except (ApiException, ConfigException, HTTPError, OSError, ValueError) as exc:
        raise KubeconfigInvalid(
            f"cannot discover the issuer of context {context!r} from "
            f"/.well-known/openid-configuration ({type(exc).__name__}); pass --issuer"
        ) from exc
    if not isinstance(issuer, str) or not issuer:
        raise KubeconfigInvalid("the discovery document names no issuer; pass --issuer")
    return issuer


def _named(config: Any, section: str, name: str, path: Path) -> dict[str, Any]:
    for item in (config or {}).get(section) or []:
        if isinstance(item, dict) and item.get("name") == name:
            return item
    raise KubeconfigInvalid(f"{path}: no {section[:-1]} named {name!r}")


def _data(section: dict[str, Any], key: str, base: Path) -> str | None:
    """`<key>-data` (base64) or the file `<key>` (relative to the kubeconfig)."""
    if section.get(f"{key}-data"):
        return base64.b64decode(section[f"{key}-data"]).decode()
    if section.get(key):
        try:
            return str((base / section[key]).read_text())
        except OSError as exc:
            raise KubeconfigInvalid(f"{section[key]}: cannot be read: {exc.strerror}") from exc
    return None
