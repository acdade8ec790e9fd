"""The store as async code uses it: every repository call awaitable, run on the store's
threads (StoreRunner), so a flow writes `await store.leases.get(lease_id)` and never
handles the runner itself.

Each method forwards to the repository's method of the same name, looked up at call time
(a test that replaces a repository's method sees the replacement used), with the same
parameters and result, checked by mypy.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, cast

from broker import tracing

from .cluster_requests import ClusterRequestRepository
from .clusters import ClusterRepository
from .grants import GrantRepository
from .kube_grants import KubeGrantRepository
from .leases import LeaseRepository
from .rbac import RbacRepository
from .roles import RoleRepository
from .runner import StoreRunner
from .store import Store

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")


def _forward(
    method: Callable[Concatenate[R, P], T],
) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, T]]:
    name = method.__name__

    async def call(self: _Async[R], /, *args: P.args, **kwargs: P.kwargs) -> T:
        with tracing.span(f"store {name}", {"db.operation.name": name}):
            return cast("T", await self._runner.run(getattr(self._repo, name), *args, **kwargs))

    call.__name__ = call.__qualname__ = name
    call.__doc__ = method.__doc__
    return call


class _Async(Generic[R]):
    def __init__(self, repo: R, runner: StoreRunner) -> None:
        self._repo = repo
        self._runner = runner


class AsyncLeases(_Async[LeaseRepository]):
    begin_issue = _forward(LeaseRepository.begin_issue)
    admit_issue = _forward(LeaseRepository.admit_issue)
    begin_rotation = _forward(LeaseRepository.begin_rotation)
    begin_rotations = _forward(LeaseRepository.begin_rotations)
    complete_issue = _forward(LeaseRepository.complete_issue)
    complete_issues = _forward(LeaseRepository.complete_issues)
    mark_failed = _forward(LeaseRepository.mark_failed)
    record_renewal = _forward(LeaseRepository.record_renewal)
    leases_to_renew = _forward(LeaseRepository.leases_to_renew)
    mark_revoking = _forward(LeaseRepository.mark_revoking)
    end_at_once = _forward(LeaseRepository.end_at_once)
    record_revoke_failure = _forward(LeaseRepository.record_revoke_failure)
    settle_revoked = _forward(LeaseRepository.settle_revoked)
    leases_to_revoke = _forward(LeaseRepository.leases_to_revoke)
    get = _forward(LeaseRepository.get)
    get_with_handle = _forward(LeaseRepository.get_with_handle)
    get_many = _forward(LeaseRepository.get_many)
    find_live = _forward(LeaseRepository.find_live)
    clusters_holding = _forward(LeaseRepository.clusters_holding)
    handle = _forward(LeaseRepository.handle)
    count_live = _forward(LeaseRepository.count_live)
    list_by_selector = _forward(LeaseRepository.list_by_selector)
    select_page = _forward(LeaseRepository.select_page)
    count_grouped = _forward(LeaseRepository.count_grouped)
    vault_handles = _forward(LeaseRepository.vault_handles)
    request_rotation = _forward(LeaseRepository.request_rotation)
    rotation_requests = _forward(LeaseRepository.rotation_requests)
    clear_rotation_request = _forward(LeaseRepository.clear_rotation_request)
    clear_rotation_requests = _forward(LeaseRepository.clear_rotation_requests)
    vault_lease_ids = _forward(LeaseRepository.vault_lease_ids)
    unissued_before = _forward(LeaseRepository.unissued_before)


class AsyncGrants(_Async[GrantRepository]):
    add = _forward(GrantRepository.add)
    get = _forward(GrantRepository.get)
    find = _forward(GrantRepository.find)
    due = _forward(GrantRepository.due)
    approve = _forward(GrantRepository.approve)
    deny = _forward(GrantRepository.deny)
    record_lease = _forward(GrantRepository.record_lease)
    mark_issued = _forward(GrantRepository.mark_issued)
    end = _forward(GrantRepository.end)


class AsyncKubeGrants(_Async[KubeGrantRepository]):
    add = _forward(KubeGrantRepository.add)
    get = _forward(KubeGrantRepository.get)
    many = _forward(KubeGrantRepository.many)
    of_cluster = _forward(KubeGrantRepository.of_cluster)
    begin_create = _forward(KubeGrantRepository.begin_create)
    record_uids = _forward(KubeGrantRepository.record_uids)
    created = _forward(KubeGrantRepository.created)
    to_remove = _forward(KubeGrantRepository.to_remove)
    removal_failed = _forward(KubeGrantRepository.removal_failed)
    removed = _forward(KubeGrantRepository.removed)
    due = _forward(KubeGrantRepository.due)
    present = _forward(KubeGrantRepository.present)
    pending_removals = _forward(KubeGrantRepository.pending_removals)


class AsyncRbac(_Async[RbacRepository]):
    labels = _forward(RbacRepository.labels)
    set_labels = _forward(RbacRepository.set_labels)
    profiles = _forward(RbacRepository.profiles)
    replace_profiles = _forward(RbacRepository.replace_profiles)
    bindings = _forward(RbacRepository.bindings)
    record_binding = _forward(RbacRepository.record_binding)
    forget_binding = _forward(RbacRepository.forget_binding)


class AsyncClusters(_Async[ClusterRepository]):
    add = _forward(ClusterRepository.add)
    get = _forward(ClusterRepository.get)
    list = _forward(ClusterRepository.list)
    list_intact = _forward(ClusterRepository.list_intact)
    exists = _forward(ClusterRepository.exists)
    record_jwks = _forward(ClusterRepository.record_jwks)
    delete = _forward(ClusterRepository.delete)


class AsyncClusterRequests(_Async[ClusterRequestRepository]):
    add = _forward(ClusterRequestRepository.add)
    get = _forward(ClusterRequestRepository.get)


class AsyncRoles(_Async[RoleRepository]):
    put = _forward(RoleRepository.put)
    get = _forward(RoleRepository.get)
    list = _forward(RoleRepository.list)
    delete = _forward(RoleRepository.delete)


class AsyncStore:
    """One store and its runner, as the flows are given them."""

    def __init__(self, store: Store, runner: StoreRunner) -> None:
        self.leases = AsyncLeases(store.leases, runner)
        self.grants = AsyncGrants(store.grants, runner)
        self.kube_grants = AsyncKubeGrants(store.kube_grants, runner)
        self.rbac = AsyncRbac(store.rbac, runner)
        self.clusters = AsyncClusters(store.clusters, runner)
        self.cluster_requests = AsyncClusterRequests(store.cluster_requests, runner)
        self.roles = AsyncRoles(store.roles, runner)
