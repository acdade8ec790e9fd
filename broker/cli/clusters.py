"""`keyferry clusters`: register, list, inspect and deregister member clusters through the
broker's admin listener."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import grpc
import typer
from google.protobuf import timestamp_pb2

from broker.api.v1 import clusters_pb2, clusters_pb2_grpc, rbac_pb2, rbac_pb2_grpc

from .admin_channel import TIMEOUT, call_admin
from .context import ContextOption
from .exits import CONFIG
from .kubeconfig import KubeconfigInvalid, discover_issuer, read_context
from .output import Output, OutputOption, emit, emit_one

if TYPE_CHECKING:
    from broker.api.v1.clusters_pb2_grpc import ClustersServiceAsyncStub
    from broker.api.v1.rbac_pb2_grpc import RbacServiceAsyncStub

T = TypeVar("T")

app = typer.Typer(
    name="clusters",
    help=(
        "Manage the member clusters whose pods may ask the broker for credentials.\n\n"
        "Talks to a running broker's admin listener (mutual TLS) as the operator of the CLI "
        "context (--context, KEYFERRY_CONTEXT). Cedar decides each call as the action "
        "`register` on the cluster. The broker needs, in each member cluster, exactly the "
        "RBAC in docs/examples/broker-rbac.yaml."
    ),
    epilog=(
        "Examples:\n\n  keyferry clusters register --kubeconfig broker-a.kubeconfig --context a\n\n"
        "  keyferry clusters list --output json"
    ),
    no_args_is_help=True,
)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  keyferry clusters register --kubeconfig broker-a.kubeconfig --context a\n\n"
        "  keyferry clusters register --kubeconfig kc.yaml --context prod --name prod-eu-1 -o json "
        "--issuer https://kubernetes.default.svc.cluster.local\n\n"
        "The server, CA bundle and credential (token or client certificate) come from the "
        "context; use a ServiceAccount token bound by docs/examples/broker-rbac.yaml. "
        "Without --issuer the cluster's /.well-known/openid-configuration names it.\n\n"
        "With cluster_registration.approval: required (the default) the cluster is checked "
        "and its registration waits for another operator: `keyferry access approve ID` "
        "with the id printed adds it.\n\n"
        "Exit codes: 0 registered, or checked and awaiting approval; 2 the kubeconfig is "
        "unusable; 1 the broker refused (the message names what failed: TLS, auth, RBAC, "
        "discovery); 3 the broker did not answer."
    )
)
def register(
    *,
    kubeconfig: Annotated[Path, typer.Option(help="the kubeconfig file with the cluster")],
    context: Annotated[str, typer.Option("--context", help="the kubeconfig context")],
    name: Annotated[
        str | None, typer.Option(help="the cluster's keyferry name (default: the context's)")
    ] = None,
    issuer: Annotated[
        str | None, typer.Option(help="the --service-account-issuer (default: discovered)")
    ] = None,
    keyferry_context: Annotated[
        Path | None,
        typer.Option(
            "--keyferry-context",
            envvar="KEYFERRY_CONTEXT",
            help="the CLI context file (default ~/.config/keyferry/context.yaml)",
            show_default=False,
        ),
    ] = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Register the cluster of a kubeconfig context with the broker."""
    try:
        found = read_context(kubeconfig, context)
        issuer = issuer or discover_issuer(kubeconfig, context)
    except KubeconfigInvalid as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(CONFIG) from None
    credential = clusters_pb2.ClusterCredential()
    if found.bearer_token is not None:
        credential.bearer_token = found.bearer_token.get_secret_value()
    elif found.cert_pem is not None and found.key_pem is not None:
        credential.client_certificate.cert_pem = found.cert_pem
        credential.client_certificate.key_pem = found.key_pem.get_secret_value()
    request = clusters_pb2.RegisterClusterRequest(
        name=name or context,
        server=found.server,
        ca_pem=found.ca_pem,
        credential=credential,
        issuer=issuer,
    )
    reply = _call(keyferry_context, lambda stub: stub.RegisterCluster(request, timeout=TIMEOUT))
    if output is not Output.TABLE:
        row = _row(reply.cluster, dt.datetime.now(dt.UTC))
        pending = {"pending_grant_id": reply.pending_grant_id} if reply.pending_grant_id else {}
        emit_one({**row, **pending}, output)
        return
    keys = ", ".join(reply.cluster.key_ids)
    if reply.pending_grant_id:
        typer.echo(
            f"cluster {reply.cluster.name} checked (issuer {issuer}; keys {keys}); its "
            f"registration waits for another operator: keyferry access approve "
            f"{reply.pending_grant_id}"
        )
        return
    typer.echo(f"cluster {reply.cluster.name} registered (issuer {issuer}; keys {keys})")


@app.command(
    "list",
    epilog=(
        "Examples:\n\n  keyferry clusters list\n\n"
        "  KEYFERRY_CONTEXT=/tmp/kf/context.yaml keyferry clusters list\n\n"
        "SOURCE is config (the broker's config file) or registered. CONTACT is how long ago "
        "the API server last answered the broker, JWKS the age of the keys tokens are "
        "checked with. WATCH is the pod watch: watching, reconnecting (`clusters get` and "
        "-o json say why) or not started; EVENT is how long ago it last delivered an event "
        "or bookmark. - when never.\n\n"
        "Exit codes: 0 listed; 2 the context file is unusable; 1 the broker refused; "
        "3 the broker did not answer."
    ),
)
def list_clusters(context: ContextOption = None, output: OutputOption = Output.TABLE) -> None:
    """List the clusters with their health: last contact, JWKS age, live leases, pod watch,
    labels."""

    async def both(stubs: tuple[Any, Any]) -> tuple[Any, dict[str, dict[str, str]]]:
        clusters, rbac = stubs
        reply = await clusters.ListClusters(clusters_pb2.ListClustersRequest(), timeout=TIMEOUT)
        try:
            labelled = await rbac.ListClusterLabels(
                rbac_pb2.ListClusterLabelsRequest(), timeout=TIMEOUT
            )
        except grpc.aio.AioRpcError:  # no permit for manage_rbac: no labels shown
            return reply, {}
        return reply, {c.cluster: dict(c.labels) for c in labelled.clusters}

    reply, labels = call_admin(
        context,
        lambda channel: (
            clusters_pb2_grpc.ClustersServiceStub(channel),
            rbac_pb2_grpc.RbacServiceStub(channel),
        ),
        both,
    )
    now = dt.datetime.now(dt.UTC)
    rows = [_row(c, now) for c in reply.clusters]
    for row in rows:
        found = labels.get(str(row["name"]), {})
        row["labels"] = ",".join(f"{k}={v}" for k, v in sorted(found.items())) or None
    emit(
        rows,
        output,
        columns=(
            "name",
            "source",
            "contact",
            "jwks",
            "leases",
            "issuer",
            "watch",
            "event",
            "server",
            "labels",
        ),
        empty="no clusters yet; add one with `keyferry clusters register`",
    )


@app.command(
    epilog=(
        "Examples:\n\n  keyferry clusters get a\n\n"
        "  keyferry clusters get prod-eu-1 --output yaml\n\n"
        "Exit codes: 0 shown; 1 no such cluster, or the broker refused; 2 the context file "
        "is unusable; 3 the broker did not answer."
    )
)
def get(name: str, context: ContextOption = None, output: OutputOption = Output.TABLE) -> None:
    """Show one cluster: server, issuer, key ids, health."""
    reply = _call(
        context,
        lambda stub: stub.GetCluster(clusters_pb2.GetClusterRequest(name=name), timeout=TIMEOUT),
    )
    emit_one(_row(reply.cluster, dt.datetime.now(dt.UTC)), output)


def _row(c: clusters_pb2.Cluster, now: dt.datetime) -> dict[str, object]:
    return {
        "name": c.name,
        "source": _source(c),
        "server": c.server or None,
        "issuer": c.issuer,
        "key_ids": list(c.key_ids),
        "contact": _age(c, "last_contact", now),
        "jwks": _age(c, "jwks_fetched_at", now),
        "watch": _WATCH.get(c.pod_watch.state, "unknown"),
        "watch_error": c.pod_watch.last_error or None,
        "event": _age(c.pod_watch, "last_event", now),
        "leases": c.active_leases,
    }


_WATCH = {
    clusters_pb2.WATCH_STATE_NOT_STARTED: "not started",
    clusters_pb2.WATCH_STATE_WATCHING: "watching",
    clusters_pb2.WATCH_STATE_RECONNECTING: "reconnecting",
}


@app.command(
    epilog=(
        "Examples:\n\n  keyferry clusters deregister a\n\n"
        "  keyferry clusters deregister a --force\n\n"
        "Every live lease of the cluster is revoked first. When some cannot be revoked now "
        "the cluster stays registered (exit 1) unless --force: then it is removed and those "
        "leases stay queued; the broker retries them until they are revoked. With "
        "cluster_registration.approval: required (the default) nothing happens until another "
        "operator runs `keyferry access approve ID` with the id printed.\n\n"
        "Exit codes: 0 deregistered, or awaiting approval; 1 some leases could not be "
        "revoked (without --force), "
        "no such cluster, or the broker refused; 2 the context file is unusable; "
        "3 the broker did not answer."
    )
)
def deregister(
    name: str,
    force: Annotated[
        bool, typer.Option(help="remove it even if some leases are only queued for revocation")
    ] = False,
    context: ContextOption = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Revoke every lease of a cluster, then remove it from the broker."""
    request = clusters_pb2.DeregisterClusterRequest(name=name, force=force)
    reply = _call(context, lambda stub: stub.DeregisterCluster(request, timeout=TIMEOUT))
    if output is not Output.TABLE:
        done = {"name": name, "revoked": reply.revoked, "queued": reply.queued}
        pending = {"pending_grant_id": reply.pending_grant_id} if reply.pending_grant_id else {}
        emit_one({**done, **pending}, output)
        return
    if reply.pending_grant_id:
        typer.echo(
            f"deregistration of cluster {name} waits for another operator: keyferry access "
            f"approve {reply.pending_grant_id} (nothing was revoked yet)"
        )
        return
    typer.echo(
        f"cluster {name} deregistered: {reply.revoked} lease(s) revoked, "
        f"{reply.queued} queued for retry"
    )


def _source(cluster: clusters_pb2.Cluster) -> str:
    return "registered" if cluster.source == clusters_pb2.CLUSTER_SOURCE_REGISTERED else "config"


def _age(
    message: clusters_pb2.Cluster | clusters_pb2.PodWatchHealth, field: str, now: dt.datetime
) -> str:
    if not message.HasField(field):  # type: ignore[arg-type]
        return "-"
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    seconds = int((now - stamp.ToDatetime(dt.UTC)).total_seconds())
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"


@app.command(
    epilog=(
        "Examples:\n\n  keyferry clusters label a env=prod team=orders\n\n"
        "  keyferry clusters label a team-\n\n"
        "KEY=VALUE sets a label, KEY- removes one. RBAC profiles (`keyferry rbac apply`) "
        "select clusters by their labels; the leader binds the profiles' groups in every "
        "cluster that matches (docs/cluster-access.md). Cedar action manage_rbac.\n\n"
        "Exit codes: 0 labelled; 2 a label or the context is invalid; 1 the broker refused; "
        "3 the broker did not answer."
    )
)
def label(
    name: Annotated[str, typer.Argument(help="the cluster's name")],
    labels: Annotated[list[str], typer.Argument(help="KEY=VALUE to set, KEY- to remove")],
    context: ContextOption = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Set or remove a cluster's labels."""
    wanted: dict[str, str] = {}
    remove: list[str] = []
    for item in labels:
        if item.endswith("-") and "=" not in item:
            remove.append(item[:-1])
        elif "=" in item:
            key, value = item.split("=", 1)
            wanted[key] = value
        else:
            typer.echo(f"{item!r}: write KEY=VALUE to set a label, KEY- to remove one", err=True)
            raise typer.Exit(CONFIG)
    message = rbac_pb2.LabelClusterRequest(cluster=name, labels=wanted, remove=remove)
    reply = call_admin(
        context,
        rbac_pb2_grpc.RbacServiceStub,
        lambda stub: cast("RbacServiceAsyncStub", stub).LabelCluster(message, timeout=TIMEOUT),
    )
    emit_one({"cluster": name, "labels": dict(reply.labels)}, output)


def _call(context: Path | None, call: Callable[[ClustersServiceAsyncStub], Awaitable[T]]) -> T:
    return call_admin(context, clusters_pb2_grpc.ClustersServiceStub, call)
