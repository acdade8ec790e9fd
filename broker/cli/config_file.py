"""The `--config` option of the commands that read the broker's config file, and its loading."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from broker.settings import BrokerSettings, SettingsInvalid, load_settings

from .exits import CONFIG

ConfigFile = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        help="the broker's YAML config file",
        exists=True,
        dir_okay=False,
        readable=True,
    ),
]


def load_or_exit(config: Path) -> BrokerSettings:
    """The settings, or exit 2 with the message that names the field and the fix."""
    try:
        return load_settings(config)
    except SettingsInvalid as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(CONFIG) from None
