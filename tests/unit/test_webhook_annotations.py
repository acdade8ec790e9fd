"""Every keyferry.io annotation: what parses, and the refusal (key and fix) for what does not."""

from __future__ import annotations

import pytest

from injector.contract import CredentialRequest, FileFormat, Mode, Signal
from injector.webhook.annotations import (
    FORMAT_PREFIX,
    INJECT,
    MAX_CREDENTIALS,
    MODE,
    ON_ROTATE,
    RESTART_CONTAINERS,
    RESTART_GRACE,
    ROLE_PREFIX,
    InjectionSpec,
    RestartRequest,
    parse_annotations,
)
from injector.webhook.errors import InvalidAnnotation

BASE = {INJECT: "true", f"{ROLE_PREFIX}db": "orders-db-ro"}


def test_no_inject_means_no_spec() -> None:
    assert parse_annotations({}) is None
    assert parse_annotations({"app.kubernetes.io/name": "x"}) is None
    assert parse_annotations({INJECT: "false", f"{ROLE_PREFIX}db": "orders-db-ro"}) is None


def test_full_spec() -> None:
    spec = parse_annotations(
        {
            **BASE,
            f"{ROLE_PREFIX}aws": "s3-reader",
            f"{FORMAT_PREFIX}db": "dsn",
            ON_ROTATE: "signal:SIGHUP",
            MODE: "sidecar",
            "unrelated.io/x": "y" * 10_000,
        }
    )
    assert spec == InjectionSpec(
        mode=Mode.SIDECAR,
        credentials=(
            CredentialRequest(name="aws", role="s3-reader"),
            CredentialRequest(name="db", role="orders-db-ro", format=FileFormat.DSN),
        ),
        on_rotate=Signal.SIGHUP,
    )


def test_defaults() -> None:
    spec = parse_annotations(BASE)
    assert spec is not None
    assert spec.mode is Mode.SIDECAR
    assert spec.on_rotate is None
    assert spec.credentials[0].format is None
    assert parse_annotations({**BASE, ON_ROTATE: "none", MODE: "init-only"}) == InjectionSpec(
        mode=Mode.INIT_ONLY, credentials=(CredentialRequest(name="db", role="orders-db-ro"),)
    )


def test_restart() -> None:
    spec = parse_annotations({**BASE, ON_ROTATE: "restart"})
    assert spec is not None
    assert spec.on_rotate is None
    assert spec.restart == RestartRequest(containers=None, grace_seconds=30)
    named = parse_annotations(
        {**BASE, ON_ROTATE: "restart", RESTART_CONTAINERS: "app, worker", RESTART_GRACE: "5"}
    )
    assert named is not None
    assert named.restart == RestartRequest(containers=("app", "worker"), grace_seconds=5)
    signalled = parse_annotations({**BASE, ON_ROTATE: "signal:SIGHUP"})
    assert signalled is not None
    assert signalled.restart is None


@pytest.mark.parametrize("fmt", [f.value for f in FileFormat])
def test_every_format(fmt: str) -> None:
    spec = parse_annotations({**BASE, f"{FORMAT_PREFIX}db": fmt})
    assert spec is not None
    assert spec.credentials[0].format == FileFormat(fmt)


# (annotations, the key the refusal names, words of the problem or fix it must say)
REFUSALS = [
    ({INJECT: "yes"}, INJECT, ['"true" or "false"']),
    ({INJECT: "true"}, INJECT, ["no credential", f"{ROLE_PREFIX}<name>"]),
    ({**BASE, "keyferry.io/rol.db": "x"}, "keyferry.io/rol.db", ["not a keyferry annotation"]),
    ({**BASE, "keyferry.io/image": "evil:1"}, "keyferry.io/image", ["remove it"]),
    ({**BASE, "keyferry.io/broker-address": "x:1"}, "keyferry.io/broker-address", ["remove it"]),
    ({INJECT: "true", f"{ROLE_PREFIX}a/b": "r"}, f"{ROLE_PREFIX}a/b", ["path separator"]),
    ({INJECT: "true", f"{ROLE_PREFIX}..": "r"}, f"{ROLE_PREFIX}..", ["not a file name"]),
    ({INJECT: "true", f"{ROLE_PREFIX}.": "r"}, f"{ROLE_PREFIX}.", ["not a file name"]),
    ({INJECT: "true", f"{ROLE_PREFIX}": "r"}, f"{ROLE_PREFIX}", ["not a file name"]),
    ({INJECT: "true", f"{ROLE_PREFIX}{'a' * 49}": "r"}, f"{ROLE_PREFIX}{'a' * 49}", ["49"]),
    ({INJECT: "true", f"{ROLE_PREFIX}Orders": "r"}, f"{ROLE_PREFIX}Orders", ["lowercase"]),
    ({INJECT: "true", f"{ROLE_PREFIX}db.env": "r"}, f"{ROLE_PREFIX}db.env", ["safe file name"]),
    ({INJECT: "true", f"{ROLE_PREFIX}-db": "r"}, f"{ROLE_PREFIX}-db", ["starting and ending"]),
    ({INJECT: "true", f"{ROLE_PREFIX}db": "Orders_DB"}, f"{ROLE_PREFIX}db", ["role name"]),
    ({INJECT: "true", f"{ROLE_PREFIX}db": ""}, f"{ROLE_PREFIX}db", ["role name"]),
    ({**BASE, f"{ROLE_PREFIX}x": "r" * 300}, f"{ROLE_PREFIX}x", ["300 characters", "253"]),
    ({**BASE, INJECT: "true", MODE: "m" * 254}, MODE, ["254 characters"]),
    ({**BASE, f"{FORMAT_PREFIX}db": "yaml"}, f"{FORMAT_PREFIX}db", ["aws-credentials"]),
    ({**BASE, f"{FORMAT_PREFIX}other": "env"}, f"{FORMAT_PREFIX}other", [f"{ROLE_PREFIX}other"]),
    ({**BASE, MODE: "daemon"}, MODE, ["sidecar, init-only"]),
    ({**BASE, ON_ROTATE: "signal:SIGKILL"}, ON_ROTATE, ["signal:SIGHUP"]),
    ({**BASE, ON_ROTATE: "reboot"}, ON_ROTATE, ["none, restart or one of"]),
    ({**BASE, ON_ROTATE: "signal:restart"}, ON_ROTATE, ["none, restart or one of"]),
    ({**BASE, RESTART_CONTAINERS: "app"}, RESTART_CONTAINERS, [f"{ON_ROTATE}: restart"]),
    (
        {**BASE, ON_ROTATE: "signal:SIGHUP", RESTART_GRACE: "10"},
        RESTART_GRACE,
        [f"only read with {ON_ROTATE}: restart", "or remove this annotation"],
    ),
    ({**BASE, ON_ROTATE: "restart", RESTART_CONTAINERS: "App"}, RESTART_CONTAINERS, ["app,worker"]),
    ({**BASE, ON_ROTATE: "restart", RESTART_CONTAINERS: "app,"}, RESTART_CONTAINERS, ["''"]),
    ({**BASE, ON_ROTATE: "restart", RESTART_CONTAINERS: "a,b,a"}, RESTART_CONTAINERS, ["twice"]),
    ({**BASE, ON_ROTATE: "restart", RESTART_GRACE: "0"}, RESTART_GRACE, ["from 1 to 300"]),
    ({**BASE, ON_ROTATE: "restart", RESTART_GRACE: "301"}, RESTART_GRACE, ["from 1 to 300"]),
    ({**BASE, ON_ROTATE: "restart", RESTART_GRACE: "30s"}, RESTART_GRACE, ["whole seconds"]),
    ({**BASE, ON_ROTATE: "restart", RESTART_GRACE: "-5"}, RESTART_GRACE, ["SIGKILL"]),
    ({**BASE, ON_ROTATE: "signal:hup"}, ON_ROTATE, ["signal:SIGHUP"]),
    (
        {INJECT: "true", **{f"{ROLE_PREFIX}c{i}": "r" for i in range(MAX_CREDENTIALS + 1)}},
        f"{ROLE_PREFIX}*",
        [f"at most {MAX_CREDENTIALS}"],
    ),
]


@pytest.mark.parametrize(("annotations", "key", "words"), REFUSALS)
def test_refusals_name_the_key_and_the_fix(
    annotations: dict[str, str], key: str, words: list[str]
) -> None:
    with pytest.raises(InvalidAnnotation) as refused:
        parse_annotations(annotations)
    assert refused.value.key == key
    assert refused.value.message.startswith(f"annotation {key}: ")
    for word in words:
        assert word in refused.value.message


def test_bad_values_are_refused_even_without_inject() -> None:
    """A typo in the inject key itself must not silently turn injection off."""
    with pytest.raises(InvalidAnnotation) as refused:
        parse_annotations({"keyferry.io/injct": "true", f"{ROLE_PREFIX}db": "r"})
    assert refused.value.key == "keyferry.io/injct"
