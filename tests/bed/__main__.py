"""The bed's command line: build the servers, or start them and print where they listen."""

from __future__ import annotations

import signal
import time
from typing import Annotated

import typer

from . import gobuild
from .bed import Bed
from .cluster import Cluster
from .errors import BedError
from .images import ImageBuilder
from .kube import SHARED_ISSUER, ClusterSpec
from .progress import say

app = typer.Typer(
    help="keyferry's test bed: real Vault, PostgreSQL, MariaDB, moto, Jaeger (and Kubernetes) "
    "servers on free loopback ports.\n\nExamples:\n\n  python -m tests.bed build          "
    "# build every Go server into the cache\n\n  python -m tests.bed images         "
    "# build the images (as root)"
    "\n\n  python -m tests.bed up --hold      # start all, print addresses, "
    "wait for Ctrl-C",
    no_args_is_help=True,
    add_completion=False,
)

SERVERS = ("vault", "vault_persistent", "postgres", "mariadb", "moto", "jaeger", "kubernetes")
OPTIONAL = ("node",)  # cluster a's real node: root only, so only when asked for


@app.command()
def build(
    names: Annotated[
        list[str] | None,
        typer.Argument(help=f"wrappers to build (default: all of {', '.join(gobuild.ALL)})"),
    ] = None,
) -> None:
    """Build the Go servers from their wrapper modules into the cache (skips what is cached)."""
    for name in names or list(gobuild.ALL):
        if name not in gobuild.ALL:
            raise typer.BadParameter(
                f"unknown build {name!r}; choose from {', '.join(gobuild.ALL)}"
            )
        target = gobuild.ALL[name]
        target.build()
        say(f"{name}: {target.out_dir()}")


@app.command()
def images() -> None:
    """Build keyferry's images (broker, webhook, agent) and the end-to-end tests' app image
    with mmdebstrap and buildah, as root, into OCI archives in the cache (skips what is cached)."""
    try:
        ImageBuilder().all()
    except BedError as exc:
        typer.echo(f"bed: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command()
def up(
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            help=f"start only these (default: all of {', '.join(SERVERS)}; "
            "`node` adds cluster a's real node, as root)",
        ),
    ] = None,
    clusters: Annotated[
        int,
        typer.Option(help="how many Kubernetes clusters (a, b, c, ...) `kubernetes` starts", min=1),
    ] = 2,
    shared_issuer: Annotated[
        bool,
        typer.Option(
            help=f"give the last two clusters the same issuer, {SHARED_ISSUER}, as real "
            "fleets have (default: each cluster's issuer is its own URL)"
        ),
    ] = False,
    hold: Annotated[
        bool,
        typer.Option(
            help="keep the servers running until Ctrl-C; without it, stop them after printing"
        ),
    ] = False,
) -> None:
    """Start the bed's servers, health-check them and print their addresses."""
    chosen = only or list(SERVERS)
    for name in chosen:
        if name not in (*SERVERS, *OPTIONAL):
            choices = ", ".join((*SERVERS, *OPTIONAL))
            raise typer.BadParameter(f"unknown server {name!r}; choose from {choices}")
    bed = Bed(keep_files=hold)
    try:
        for name in chosen:
            if name == "kubernetes":
                bed.clusters(_cluster_specs(clusters, shared_issuer))
            else:
                getattr(bed, name)()
        typer.echo(f"\nworkspace: {bed.workspace.root} (provider: {bed.provider.name})")
        for name, server in bed.servers.items():
            typer.echo(f"  {name:<18} up   {server.describe()}")
        for server in bed.servers.values():
            if isinstance(server, Cluster):
                typer.echo(f"  export KUBECONFIG={server.kubeconfig}   # cluster {server.name}")
        if hold:
            typer.echo("\nservers are running; press Ctrl-C to stop them")
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    except BedError as exc:
        typer.echo(f"bed: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        bed.stop()
    typer.echo("bed: all servers healthy, and stopped")


def _cluster_specs(count: int, shared_issuer: bool) -> list[ClusterSpec]:
    names = [chr(ord("a") + i) for i in range(count)]
    sharing = set(names[-2:]) if shared_issuer and count >= 2 else set()
    return [ClusterSpec(n, SHARED_ISSUER if n in sharing else None) for n in names]


if __name__ == "__main__":
    app()
