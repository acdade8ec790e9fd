"""Property tests over every parser of untrusted input: only the documented validation errors
may leave them, and what they accept keeps its promise (a safe file name, a JSON file that
parses back to the values, a response for every decodable review).

| target | input from | documented errors |
|---|---|---|
| annotations | a pod's author | InvalidAnnotation |
| formats | Vault (through the broker) | FormatError |
| request validation | a gRPC caller | InvalidRequest (protobuf's DecodeError for raw bytes) |
| tokens | anyone who can reach the workload listener | Unauthenticated |
| JWKS | a member cluster's API server | PyJWKSetError |
| AdmissionReview | the API server (or anyone who reaches the webhook) | pydantic ValidationError |

Run briefly with every test run; `tests/run fuzz` runs them at length (tests/fuzz/conftest.py).
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jwt
from google.protobuf.message import DecodeError
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from broker.api.v1 import clusters_pb2, roles_pb2
from broker.clusters.config import NAME as CLUSTER_NAME
from broker.errors import InvalidRequest, Unauthenticated
from broker.identity import ClusterKeys, TokenVerifier
from broker.identity.tokens import signing_keys
from broker.server import convert
from broker.service.workload.names import check_credential_name
from injector.agent.errors import FormatError
from injector.agent.formats import default_format, render
from injector.contract import FileFormat
from injector.webhook.annotations import (
    FORMAT_PREFIX,
    INJECT,
    MODE,
    ON_ROTATE,
    ROLE_PREFIX,
    parse_annotations,
)
from injector.webhook.config import AgentConfig, BrokerEndpoint, WebhookConfig
from injector.webhook.errors import InvalidAnnotation
from injector.webhook.mutate import mutate
from injector.webhook.review import AdmissionResponse, AdmissionReview
from injector.webhook.server import pod_name

from .targets import seen

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)
F = TypeVar("F", bound=Callable[..., Any])
SEEDS = json.loads((Path(__file__).parent / "corpus" / "seeds.json").read_text())


def with_seeds(
    target: str, unpack: Callable[[Any], tuple[Any, ...]] = lambda x: (x,)
) -> Callable[[F], F]:
    """Every input of tests/fuzz/corpus/seeds.json for `target`, as explicit examples: the
    hand-kept corpus replays in every run, short or long."""

    def decorate(test: F) -> F:
        for seed in SEEDS[target]:
            test = example(*unpack(seed))(test)
        return test

    return decorate


def attempt(call: Callable[[], T], errors: type[E]) -> tuple[T | None, E | None]:
    """The call's result, or the documented error it raised; any other error escapes."""
    try:
        return call(), None
    except errors as refused:
        return None, refused


# --- annotations ------------------------------------------------------------------------------

_KEYS = st.one_of(
    st.sampled_from([INJECT, MODE, ON_ROTATE, "keyferry.io/image", "keyferry.io/template.x"]),
    st.builds(lambda p, s: p + s, st.sampled_from([ROLE_PREFIX, FORMAT_PREFIX]), st.text()),
    st.text(),
)
_VALUES = st.one_of(
    st.sampled_from(
        [
            "true",
            "false",
            "orders-db-ro",
            "json",
            "env",
            "dsn",
            "pem",
            "init-only",
            "sidecar",
            "signal:SIGHUP",
            "none",
            "../x",
            "/etc/passwd",
            "{{ .Data }}",
        ]
    ),
    st.text(),
)


@given(st.dictionaries(_KEYS, _VALUES, max_size=24))
@example({INJECT: "true", ROLE_PREFIX + "..": "orders-db-ro"})
@example({INJECT: "true", ROLE_PREFIX + "/etc/shadow": "orders-db-ro"})
@example({INJECT: "true", ROLE_PREFIX + "db": "r" * 10_000})
@example({INJECT: "true", **{f"{ROLE_PREFIX}f{i}": "orders-db-ro" for i in range(3000)}})
@with_seeds("annotations")
def test_annotations(annotations: dict[str, str]) -> None:
    seen("annotations")
    spec, refused = attempt(lambda: parse_annotations(annotations), InvalidAnnotation)
    if refused is not None:
        assert refused.key
        return
    for credential in spec.credentials if spec else ():
        assert "/" not in credential.name
        assert "\\" not in credential.name
        assert credential.name.strip(".")
        assert "\n" not in credential.name + credential.role
        assert annotations[ROLE_PREFIX + credential.name] == credential.role


# --- formats ----------------------------------------------------------------------------------

_CREDENTIAL_KEYS = st.one_of(
    st.sampled_from(
        [
            "username",
            "password",
            "host",
            "port",
            "dbname",
            "access_key_id",
            "secret_access_key",
            "security_token",
            "certificate",
            "private_key",
            "issuing_ca",
        ]
    ),
    st.text(),
)


_MARK = "s3cr3t:"  # every fuzzed value carries it, so a quoted value is recognisable


@given(
    st.sampled_from(FileFormat),
    st.text(max_size=64),
    st.dictionaries(_CREDENTIAL_KEYS, st.text().map(lambda t: _MARK + t)),
)
@example(FileFormat.ENV, "db", {"password": _MARK + "a\x00b"})
@example(FileFormat.PGPASS, "db", {"username": _MARK + "u", "password": _MARK + "p\nq"})
@example(FileFormat.PEM, "tls", {"certificate": _MARK + "-----BEGIN x", "private_key": _MARK})
@with_seeds("formats", lambda s: (FileFormat(s[0]), s[1], {k: _MARK + v for k, v in s[2].items()}))
def test_formats(fmt: FileFormat, name: str, values: dict[str, str]) -> None:
    seen("formats")
    try:
        rendered = render(fmt, name, values)
    except FormatError as refused:
        message = str(refused)
        for named in (name, *values):  # quoted (escapes and all) or bare, as the message has it
            message = message.replace(repr(named), "").replace(named, "")
        assert _MARK not in message  # a refusal names the credential and key, never a value
        return
    assert isinstance(rendered, bytes)
    if fmt is FileFormat.JSON:
        assert json.loads(rendered) == values
    assert default_format(values) in FileFormat


# --- request validation at the gRPC boundary ------------------------------------------------

_DURATION = st.builds(
    lambda s, n: {"seconds": s, "nanos": n},
    st.integers(-(2**40), 2**40),
    st.integers(-999_999_999, 999_999_999),
)


def _role(kind: str, fields: dict[str, Any], name: str, description: str) -> roles_pb2.Role:
    role = roles_pb2.Role(name=name, description=description)
    if kind != "none":
        getattr(role, kind).SetInParent()
        for key, value in fields.items():
            target = getattr(role, kind)
            if key in ("ttl",) and hasattr(target, key):
                getattr(target, key).seconds = value["seconds"] % (10**10)
            elif key == "alt_names" and hasattr(target, key):
                target.alt_names.extend(value)
            elif hasattr(target, key):
                # A value protobuf itself refuses never reaches the broker.
                with contextlib.suppress(TypeError, ValueError):
                    setattr(target, key, value)
    return role


_ROLE_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "mount": st.text(),
        "vault_role": st.text(),
        "path": st.text(),
        "version": st.integers(0, 2**31),
        "credential_type": st.integers(-3, 5),
        "role_arn": st.text(),
        "common_name": st.text(),
        "alt_names": st.lists(st.text(), max_size=4),
        "ttl": _DURATION,
    },
)


@given(
    st.lists(
        st.builds(
            _role,
            st.sampled_from(["none", "database", "aws", "kv", "pki"]),
            _ROLE_FIELDS,
            st.text(max_size=80),
            st.text(max_size=80),
        ),
        max_size=3,
    )
)
def test_role_requests(roles: list[roles_pb2.Role]) -> None:
    seen("request validation")
    specs, refused = attempt(lambda: convert.role_specs(roles), InvalidRequest)
    if refused is not None:
        assert refused.field.startswith("roles[")
        return
    assert len(specs or ()) == len(roles)


@given(st.binary(max_size=512))
def test_raw_role_requests(raw: bytes) -> None:
    seen("request validation")
    try:
        request = roles_pb2.ApplyRolesRequest.FromString(raw)
    except DecodeError:
        return
    with contextlib.suppress(InvalidRequest):
        convert.role_specs(list(request.roles))


@given(
    st.builds(
        lambda name, server, ca, issuer, which, a, b: clusters_pb2.RegisterClusterRequest(
            name=name,
            server=server,
            ca_pem=ca,
            issuer=issuer,
            credential=(
                clusters_pb2.ClusterCredential(bearer_token=a)
                if which == "token"
                else clusters_pb2.ClusterCredential(
                    client_certificate=clusters_pb2.ClientCertificate(cert_pem=a, key_pem=b)
                )
                if which == "certificate"
                else clusters_pb2.ClusterCredential()
            ),
        ),
        st.one_of(st.text(max_size=70), st.sampled_from(["a", "a\n", "A", "-a"])),
        st.one_of(st.text(), st.just("https://127.0.0.1:6443")),
        st.text(max_size=40),
        st.text(max_size=40),
        st.sampled_from(["token", "certificate", "none"]),
        st.text(max_size=40),
        st.text(max_size=40),
    )
)
def test_cluster_requests(request: clusters_pb2.RegisterClusterRequest) -> None:
    seen("request validation")
    connection, refused = attempt(lambda: convert.cluster_connection(request), InvalidRequest)
    if refused is not None:
        assert refused.field
        return
    assert connection is not None
    assert connection.server.startswith("https://")
    assert CLUSTER_NAME.fullmatch(connection.name), "a cluster name that is not a DNS label"


@given(st.text(max_size=200))
@example("../etc/passwd")
@example("..")
@example("a\x00b")
@with_seeds("credential_names")
def test_credential_names(name: str) -> None:
    seen("request validation")
    accepted, refused = attempt(lambda: check_credential_name(name), InvalidRequest)
    if refused is not None:
        assert refused.field == "credential_name"
        return
    assert accepted is not None
    assert accepted not in (".", "..")
    assert "/" not in accepted
    assert "\\" not in accepted


# --- tokens and key sets ----------------------------------------------------------------------

_JWK = {
    "kty": "RSA",
    "kid": "k1",
    "use": "sig",
    "alg": "RS256",
    "e": "AQAB",
    "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95"
    "GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BT"
    "YuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTl"
    "XHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tej"
    "vcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
}
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(), inner, max_size=3)
    ),
    max_leaves=8,
)
_AUDIENCES = st.one_of(
    st.sampled_from(["keyferry:a", "keyferry:b", "keyferry:", "vault"]),
    st.lists(st.sampled_from(["keyferry:a", "keyferry:zz", "x"]), max_size=3),
    _JSON,
)
_K8S = st.one_of(
    st.fixed_dictionaries(
        {
            "namespace": _JSON,
            "serviceaccount": st.one_of(st.fixed_dictionaries({"name": _JSON}), _JSON),
            "pod": st.one_of(st.fixed_dictionaries({"name": _JSON, "uid": _JSON}), _JSON),
        }
    ),
    _JSON,
)


def _b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@given(
    header=st.one_of(
        st.fixed_dictionaries(
            {
                "alg": st.one_of(st.sampled_from(["RS256", "ES256", "none", "HS256"]), _JSON),
                "kid": st.one_of(st.just("k1"), _JSON),
            }
        ),
        _JSON,
    ),
    claims=st.one_of(
        st.fixed_dictionaries(
            {"aud": _AUDIENCES, "iss": st.one_of(st.just("https://issuer"), _JSON)},
            optional={
                "exp": _JSON,
                "iat": _JSON,
                "nbf": _JSON,
                "sub": _JSON,
                "kubernetes.io": _K8S,
            },
        ),
        _JSON,
    ),
    signature=st.binary(max_size=300),
)
@example(header={"alg": "RS256", "kid": "k1"}, claims={"aud": 5, "iss": "x"}, signature=b"x")
@example(header={"alg": "RS256", "kid": "k1"}, claims={"aud": True}, signature=b"")
def test_structured_tokens(header: Any, claims: Any, signature: bytes) -> None:
    seen("tokens")
    _verify(f"{_b64(header)}.{_b64(claims)}.{_b64(signature)}")


@given(st.text(max_size=400))
@example("")
@example("a.b.c")
@example("..")
@with_seeds("tokens")
def test_text_tokens(token: str) -> None:
    seen("tokens")
    _verify(token)


_VERIFIER = TokenVerifier(
    {
        "a": ClusterKeys("a", "https://issuer", {"keys": [_JWK]}),
        "b": ClusterKeys("b", "https://issuer", {"keys": [dict(_JWK, kid="k2")]}),
    }
)


def _verify(token: str) -> None:
    accepted, refused = attempt(lambda: _VERIFIER.verify(token), Unauthenticated)
    assert accepted is None, "a token nobody signed was accepted"
    assert refused is not None


@given(
    st.one_of(
        st.fixed_dictionaries(
            {
                "keys": st.one_of(
                    _JSON,
                    st.lists(
                        st.one_of(
                            st.fixed_dictionaries(
                                {"kty": st.sampled_from(["RSA", "EC", "oct", "OKP", "x"])},
                                optional={
                                    "n": _JSON,
                                    "e": _JSON,
                                    "crv": _JSON,
                                    "x": _JSON,
                                    "y": _JSON,
                                    "k": _JSON,
                                    "kid": _JSON,
                                },
                            ),
                            _JSON,
                        ),
                        max_size=4,
                    ),
                )
            }
        ),
        st.dictionaries(st.text(), _JSON, max_size=3),
    )
)
@example({"keys": [{"kty": "oct"}]})
@example({"keys": "garbage"})
@with_seeds("jwks")
def test_jwks(jwks: dict[str, Any]) -> None:
    seen("JWKS")
    try:
        keys = signing_keys(jwks)
    except jwt.PyJWKSetError:
        return
    assert keys


# --- the AdmissionReview decoder --------------------------------------------------------------

_CONFIG = WebhookConfig(
    cluster_name="a",
    agent=AgentConfig(image="keyferry/agent:test"),
    broker=BrokerEndpoint(address="127.0.0.1:9443"),
)
_POD = st.fixed_dictionaries(
    {},
    optional={
        "metadata": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "annotations": st.one_of(st.dictionaries(_KEYS, _VALUES, max_size=6), _JSON),
                    "name": _JSON,
                    "generateName": _JSON,
                },
            ),
            _JSON,
        ),
        "spec": st.one_of(
            st.fixed_dictionaries(
                {
                    "containers": st.one_of(
                        st.lists(
                            st.fixed_dictionaries(
                                {"name": st.text(max_size=10)}, optional={"securityContext": _JSON}
                            ),
                            max_size=2,
                        ),
                        _JSON,
                    )
                },
                optional={
                    "securityContext": _JSON,
                    "initContainers": _JSON,
                    "volumes": _JSON,
                    "shareProcessNamespace": _JSON,
                },
            ),
            _JSON,
        ),
    },
)
_REVIEW = st.fixed_dictionaries(
    {
        "apiVersion": st.just("admission.k8s.io/v1"),
        "kind": st.just("AdmissionReview"),
        "request": st.one_of(
            st.fixed_dictionaries(
                {
                    "uid": st.text(max_size=8),
                    "kind": st.just({"group": "", "version": "v1", "kind": "Pod"}),
                    "resource": st.just({"group": "", "version": "v1", "resource": "pods"}),
                    "operation": st.sampled_from(["CREATE", "UPDATE", "DELETE", "x"]),
                },
                optional={
                    "namespace": st.text(max_size=10),
                    "object": st.one_of(_POD, _JSON),
                    "dryRun": _JSON,
                    "name": _JSON,
                    "subResource": _JSON,
                },
            ),
            _JSON,
        ),
    }
)


@given(st.one_of(_REVIEW.map(lambda r: json.dumps(r).encode()), st.binary(max_size=256)))
@with_seeds("admission_reviews", lambda s: (s.encode(),))
def test_admission_reviews(body: bytes) -> None:
    seen("AdmissionReview")
    try:
        review = AdmissionReview.model_validate_json(body)
    except ValidationError:
        return
    if review.request is None:
        return
    response = mutate(review.request, _CONFIG)
    assert isinstance(response, AdmissionResponse)
    assert response.uid == review.request.uid
    AdmissionReview(response=response).encode()
    name = pod_name(review.request)
    assert name is None or isinstance(name, str)
