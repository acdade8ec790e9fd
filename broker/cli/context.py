"""The CLI's context file: where the broker's admin listener is and which certificate the
operator presents there (`keyferry admin init` writes it; `--context` or KEYFERRY_CONTEXT
picks another one).

    address: 127.0.0.1:8444        # the broker's admin listener (host:port)
    ca: admin-ca/ca.crt            # the admin CA: verifies the broker, signed the operator
    cert: admin-ca/operators/alice.crt
    key: admin-ca/operators/alice.key
    server_name: localhost         # optional: the name to check on the broker's certificate

Relative paths are read from the context file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from broker.errors import InvalidRequest
from broker.models import validation_problems

ENV = "KEYFERRY_CONTEXT"


def default_context_file() -> Path:
    """$XDG_CONFIG_HOME/keyferry/context.yaml, or ~/.config/keyferry/context.yaml."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "keyferry" / "context.yaml"


ContextOption = Annotated[
    Path | None,
    typer.Option(
        "--context",
        envvar=ENV,
        help="the CLI context file (admin address, CA, operator certificate); default "
        "~/.config/keyferry/context.yaml, written by `keyferry admin init`",
        show_default=False,
    ),
]


class CliContext(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str = Field(min_length=3, description="host:port of the admin listener")
    ca: Path = Field(description="the admin CA certificate (PEM)")
    cert: Path = Field(description="the operator's client certificate (PEM)")
    key: Path = Field(description="the operator's private key (PEM)")
    server_name: str | None = Field(
        default=None, description="the name checked on the broker's certificate"
    )


class ContextInvalid(InvalidRequest):
    def __init__(self, path: Path, problem: str) -> None:
        super().__init__("context", f"{path}: {problem}")


def load_context(path: Path | None) -> tuple[CliContext, Path]:
    """The context (paths made absolute) and the file it came from, or ContextInvalid."""
    path = path or default_context_file()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ContextInvalid(
            path, "no such file; run `keyferry admin init` or pass --context"
        ) from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ContextInvalid(path, f"cannot be read: {exc}") from exc
    try:
        context = CliContext.model_validate(data)
    except ValidationError as exc:
        raise ContextInvalid(path, "; ".join(validation_problems(exc))) from exc
    folder = path.parent
    return (
        context.model_copy(
            update={
                "ca": folder / context.ca,
                "cert": folder / context.cert,
                "key": folder / context.key,
            }
        ),
        path,
    )


def save_context(path: Path, context: CliContext) -> None:
    """Write the context file (mode 0600: it names a private key)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = context.model_dump(mode="json", exclude_none=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(yaml.safe_dump(data, sort_keys=False))
