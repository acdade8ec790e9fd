"""The `--config` option of the commands that read the broker's config file, and its loading."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from broker.moved_settings import SettingMoved
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
    """The settings, or exit 2 with the message that names the field and the fix. A key
    that moved (broker.moved_settings) is printed as one `warning:` line on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SettingMoved)
        try:
            settings = load_settings(config)
        except SettingsInvalid as exc:
            typer.echo(exc.message, err=True)
            raise typer.Exit(CONFIG) from None
    for warning in caught:
        if isinstance(warning.message, SettingMoved):
            typer.echo(f"warning: {warning.message}", err=True)
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return settings
