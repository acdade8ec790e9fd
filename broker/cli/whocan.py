"""`keyferry who-can` and `keyferry why`: the broker's Cedar policies asked who can get a
role, and why one request would be decided as it would (PolicyService, admin listener)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from broker.api.v1 import policy_pb2, policy_pb2_grpc

from .admin_channel import TIMEOUT, call_admin
from .context import ContextOption
from .exits import CONFIG
from .output import Output, OutputOption, emit, emit_one

if TYPE_CHECKING:
    from broker.api.v1.policy_pb2_grpc import PolicyServiceAsyncStub

T = TypeVar("T")
EXITS = (
    "\n\nExit codes: 0 answered; 2 an option or the context is invalid; 1 the broker refused "
    "(Cedar's `explain` on the Broker, an unknown role or cluster); 3 the broker did not answer."
)
WHO_CAN_EPILOG = (
    "Examples:\n\n"
    "  keyferry who-can orders-db-ro\n\n"
    "  keyferry who-can orders-db-ro --credential orders-db -o json\n\n"
    "  keyferry who-can --kube-role edit --cluster a\n\n"
    "Workloads: every live pod of every cluster the broker knows (the pod watch's live set, "
    "or one list of the API server), asked as its token would make it, grouped by cluster, "
    "namespace and service account, with the policies that allow them and the pods a "
    "forbid refuses. Operators cannot be listed: the answer names each group a policy "
    "mentions (as a member of only that group), each operator a policy names, and an "
    "operator no policy names, that may issue the role or request it (access request). "
    "The same Cedar policies and gate as every call; nothing is changed." + EXITS
)
WHY_EPILOG = (
    "Examples:\n\n"
    "  keyferry why --cluster a --namespace orders --service-account api --role orders-db-ro"
    "\n\n"
    "  keyferry why --cluster a --namespace orders --service-account api --pod debug-1 "
    "--role orders-db-ro\n\n"
    "  keyferry why --operator alice --group developers --action request_access "
    "--role orders-db-ro\n\n"
    "Cedar's decision and the policy ids that made it (the permits that allowed it, or the "
    "forbids that refused it; none: default deny), and what else the broker checks." + EXITS
)


def who_can(
    *,
    role: Annotated[
        str | None, typer.Argument(help="a role of the catalog (not with --kube-role)")
    ] = None,
    credential: Annotated[
        str, typer.Option(help="the credential name a pod would ask with (policies may look)")
    ] = "",
    kube_role: Annotated[
        str | None, typer.Option(help="a ClusterRole instead: who may request it, where")
    ] = None,
    cluster: Annotated[str | None, typer.Option(help="with --kube-role: the cluster")] = None,
    context: ContextOption = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Who can get a role: workloads (with their live pods) and operators, and through
    which Cedar policies; or who may request a ClusterRole of a cluster, and where."""
    if (role is None) == (kube_role is None) or (kube_role is None) != (cluster is None):
        typer.echo("give a ROLE, or --kube-role with --cluster", err=True)
        raise typer.Exit(CONFIG)
    message = policy_pb2.WhoCanRequest(
        role=role or "",
        credential_name=credential,
        kube_role=kube_role or "",
        cluster=cluster or "",
    )
    reply = _call(context, lambda stub: stub.WhoCan(message, timeout=TIMEOUT))
    rows: list[dict[str, object]] = [
        {
            "kind": "workload",
            "who": f"{w.cluster}/{w.namespace}/{w.service_account}",
            "action": "issue",
            "pods": list(w.pods),
            "policies": list(w.policy_ids),
            "refused_pods": list(w.refused_pods),
        }
        for w in reply.workloads
    ]
    rows += [
        {
            "kind": "operator",
            "who": o.operator,
            "action": o.action + (f" in {', '.join(o.namespaces)}" if o.namespaces else ""),
            "pods": [],
            "policies": list(o.policy_ids),
            "refused_pods": [],
        }
        for o in reply.operators
    ]
    if output is not Output.TABLE:
        emit_one(
            {
                "role": reply.role,
                "who": rows,
                "inventory": dict(reply.inventory),
                "truncated": reply.truncated,
            },
            output,
        )
        return
    emit(
        rows,
        output,
        columns=("kind", "who", "action", "pods", "policies", "refused_pods"),
        empty=f"nobody can get {reply.role!r}",
    )
    for name, source in sorted(reply.inventory.items()):
        typer.echo(f"pods of cluster {name}: {source}")
    if reply.truncated:
        typer.echo("cut short: more live pods than one answer asks about")


def why(
    *,
    role: Annotated[str, typer.Option(help="a role of the catalog")],
    cluster: Annotated[str, typer.Option(help="a workload's cluster")] = "",
    namespace: Annotated[str, typer.Option(help="a workload's namespace")] = "",
    service_account: Annotated[str, typer.Option(help="a workload's service account")] = "",
    pod: Annotated[str, typer.Option(help="a workload's pod name (policies on names)")] = "",
    operator: Annotated[str, typer.Option(help="an operator instead of a workload")] = "",
    group: Annotated[
        list[str] | None, typer.Option(help="the operator's groups (repeat for several)")
    ] = None,
    action: Annotated[str, typer.Option(help="an operator's: issue or request_access")] = "",
    credential: Annotated[str, typer.Option(help="the credential name asked with")] = "",
    context: ContextOption = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Why one request would be allowed or refused, by which Cedar policies."""
    if bool(operator) == bool(cluster):
        typer.echo("give --operator, or --cluster with --namespace and --service-account", err=True)
        raise typer.Exit(CONFIG)
    message = policy_pb2.WhyRequest(
        role=role,
        cluster=cluster,
        namespace=namespace,
        service_account=service_account,
        pod=pod,
        operator=operator,
        groups=group or [],
        action=action,
        credential_name=credential,
    )
    reply = _call(context, lambda stub: stub.Why(message, timeout=TIMEOUT))
    emit_one(
        {
            "allowed": reply.allowed,
            "policies": list(reply.policy_ids),
            "principal": reply.principal,
            "action": reply.action,
            "resource": reply.resource,
            "errors": list(reply.errors),
            "notes": list(reply.notes),
        },
        output,
    )


def _call(context: Path | None, call: Callable[[PolicyServiceAsyncStub], Awaitable[T]]) -> T:
    return call_admin(context, policy_pb2_grpc.PolicyServiceStub, call)
