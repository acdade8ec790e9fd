"""What a just-in-time grant to a member cluster creates there, and how it goes again.

Per grant: a ServiceAccount in the keyferry-owned namespace (`access_namespace`), a
RoleBinding in the granted namespace (or a ClusterRoleBinding for all namespaces) of that
account to the named ClusterRole, and tokens of the account from the TokenRequest API.
Every object carries the labels `app.kubernetes.io/managed-by: keyferry` and
`keyferry.dev/grant: <grant id>`, and the annotation `keyferry.dev/owner: grant/<id>`, so
an operator (and the broker's cleanup pass) can find what a grant left.

Labels are not ownership: an object is deleted only with the UID the broker recorded
when the API server created it, as a delete precondition (the API server refuses the
delete when the object of that name has another UID). An object whose UID was not
recorded yet (the broker died between create and record) is deleted only if its name is
the grant's and its owner annotation names the grant.

The broker's rights this needs (docs/examples/broker-rbac.yaml, chart member RBAC) are
named by `Right`; a 403 becomes BrokerRightsMissing naming the missing rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from broker.errors import FailedPrecondition

from .client import ClusterClient, ClusterForbidden

MANAGED_BY = ("app.kubernetes.io/managed-by", "keyferry")
GRANT_LABEL = "keyferry.dev/grant"
OWNER_ANNOTATION = "keyferry.dev/owner"
MIN_TOKEN_SECONDS = 600  # the TokenRequest API refuses shorter lifetimes
RBAC_GROUP = "rbac.authorization.k8s.io"


class Right(StrEnum):
    """The rules of the broker's member-cluster RBAC that cluster access uses."""

    GET_CLUSTERROLE = (
        "get clusterroles (rbac.authorization.k8s.io), resourceNames: the grantable ClusterRoles"
    )
    BIND_CLUSTERROLE = (
        "bind clusterroles (rbac.authorization.k8s.io), resourceNames: the grantable ClusterRoles"
    )
    ACCOUNTS = "create/get/delete serviceaccounts in the access namespace"
    TOKENS = "create serviceaccounts/token in the access namespace"
    ROLEBINDINGS = "create/get/delete rolebindings, and bind the ClusterRole (resourceNames)"
    CLUSTERROLEBINDINGS = "create/get/delete clusterrolebindings, and bind the ClusterRole"


class BrokerRightsMissing(FailedPrecondition):
    """The broker's credential for the cluster lacks a rule cluster access needs."""


class NamespaceMissing(FailedPrecondition):
    pass


class ClusterRoleMissing(FailedPrecondition):
    pass


class Deleted(StrEnum):
    DELETED = "deleted"
    GONE = "gone"  # there was nothing of that name
    NOT_OURS = "not-ours"  # an object of that name with another UID, or not the grant's


@dataclass(frozen=True)
class GrantObjects:
    """The names of one grant's objects in its member cluster."""

    grant_id: str
    cluster_role: str
    namespace: str | None  # None: all namespaces (a ClusterRoleBinding)
    account_namespace: str
    account: str

    @property
    def binding(self) -> str:
        return f"keyferry-grant-{self.grant_id}"

    @property
    def owner(self) -> str:
        return f"grant/{self.grant_id}"

    def metadata(self, name: str, namespace: str | None) -> Any:
        return k8s.V1ObjectMeta(
            name=name,
            namespace=namespace,
            labels={MANAGED_BY[0]: MANAGED_BY[1], GRANT_LABEL: self.grant_id},
            annotations={OWNER_ANNOTATION: self.owner},
        )

    def is_ours(self, metadata: Any) -> bool:
        annotations = (metadata.annotations if metadata is not None else None) or {}
        labels = (metadata.labels if metadata is not None else None) or {}
        return (
            annotations.get(OWNER_ANNOTATION) == self.owner
            and labels.get(GRANT_LABEL) == self.grant_id
        )


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: datetime


def _ours_uid(made: Any, objects: GrantObjects, *, missing: str, not_ours: str) -> str:
    """The UID of an object the grant made (or had made before): NamespaceMissing when it
    could not be made (its namespace is absent), FailedPrecondition when one of that name
    exists and is not the grant's."""
    if made is None:
        raise NamespaceMissing(missing)
    if not objects.is_ours(made.metadata):
        raise FailedPrecondition(not_ours)
    return str(made.metadata.uid)


def account_name(grant_id: str) -> str:
    return f"keyferry-grant-{grant_id}"


class ClusterAccess:
    """One member cluster's side of cluster grants, through the broker's ClusterClient."""

    def __init__(self, client: ClusterClient) -> None:
        self._client = client
        self.name = client.config.name

    def endpoint(self) -> tuple[str, str]:
        return self._client.endpoint()

    async def require_cluster_role(self, name: str) -> None:
        def read(api: Any) -> bool:
            try:
                k8s.RbacAuthorizationV1Api(api).read_cluster_role(
                    name, _request_timeout=self._client.timeout
                )
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            return True

        if not await self._run(f"GET clusterrole {name}", read, Right.GET_CLUSTERROLE):
            raise ClusterRoleMissing(
                f"ClusterRole {name!r} does not exist in cluster {self.name!r}; ask for one "
                "that does (kubectl get clusterroles), or create it there first"
            )

    async def create_account(self, objects: GrantObjects) -> str:
        """The ServiceAccount's UID (an existing one of the grant's is taken as it is)."""
        namespace, name = objects.account_namespace, objects.account

        def create(api: Any) -> Any:
            core = k8s.CoreV1Api(api)
            body = k8s.V1ServiceAccount(metadata=objects.metadata(name, namespace))
            try:
                return core.create_namespaced_service_account(
                    namespace, body, _request_timeout=self._client.timeout
                )
            except ApiException as exc:
                if exc.status == 409:
                    return core.read_namespaced_service_account(
                        name, namespace, _request_timeout=self._client.timeout
                    )
                if exc.status == 404:
                    return None
                raise

        made = await self._run(f"create serviceaccount {namespace}/{name}", create, Right.ACCOUNTS)
        return _ours_uid(
            made,
            objects,
            missing=(
                f"the access namespace {namespace!r} does not exist in cluster {self.name!r}; "
                "apply docs/examples/broker-rbac.yaml (or the chart's member RBAC) there"
            ),
            not_ours=(
                f"ServiceAccount {namespace}/{name} in cluster {self.name!r} exists and is not "
                "this grant's; it is left alone"
            ),
        )

    async def create_binding(self, objects: GrantObjects) -> str:
        """The binding's UID; NamespaceMissing when the granted namespace does not exist."""
        subject = k8s.RbacV1Subject(
            kind="ServiceAccount", name=objects.account, namespace=objects.account_namespace
        )
        role_ref = k8s.V1RoleRef(
            api_group=RBAC_GROUP, kind="ClusterRole", name=objects.cluster_role
        )
        namespace = objects.namespace

        def create(api: Any) -> Any:
            rbac = k8s.RbacAuthorizationV1Api(api)
            timeout = self._client.timeout
            try:
                if namespace is None:
                    cluster_wide = k8s.V1ClusterRoleBinding(
                        metadata=objects.metadata(objects.binding, None),
                        role_ref=role_ref,
                        subjects=[subject],
                    )
                    return rbac.create_cluster_role_binding(cluster_wide, _request_timeout=timeout)
                body = k8s.V1RoleBinding(
                    metadata=objects.metadata(objects.binding, namespace),
                    role_ref=role_ref,
                    subjects=[subject],
                )
                return rbac.create_namespaced_role_binding(
                    namespace, body, _request_timeout=timeout
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                if exc.status == 409:
                    if namespace is None:
                        return rbac.read_cluster_role_binding(
                            objects.binding, _request_timeout=timeout
                        )
                    return rbac.read_namespaced_role_binding(
                        objects.binding, namespace, _request_timeout=timeout
                    )
                raise

        right = Right.CLUSTERROLEBINDINGS if namespace is None else Right.ROLEBINDINGS
        where = "cluster-wide" if namespace is None else f"in namespace {namespace}"
        made = await self._run(f"create the grant's binding {where}", create, right)
        return _ours_uid(
            made,
            objects,
            missing=(
                f"namespace {namespace!r} does not exist in cluster {self.name!r}; ask for "
                "one that does (kubectl get namespaces)"
            ),
            not_ours=(
                f"binding {objects.binding} in cluster {self.name!r} exists and is not this "
                "grant's; it is left alone"
            ),
        )

    async def token(self, objects: GrantObjects, seconds: int) -> IssuedToken:
        """A token of the grant's ServiceAccount living `seconds` (at least the API's
        minimum, 10 minutes), for the API server's default audience."""
        namespace, name = objects.account_namespace, objects.account
        lifetime = max(seconds, MIN_TOKEN_SECONDS)

        def create(api: Any) -> Any:
            body = k8s.AuthenticationV1TokenRequest(
                spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=lifetime)
            )
            return k8s.CoreV1Api(api).create_namespaced_service_account_token(
                name, namespace, body, _request_timeout=self._client.timeout
            )

        made = await self._run(f"create a token of {namespace}/{name}", create, Right.TOKENS)
        expires = made.status.expiration_timestamp
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        return IssuedToken(token=str(made.status.token), expires_at=expires)

    async def delete_binding(self, objects: GrantObjects, uid: str | None) -> Deleted:
        namespace = objects.namespace

        def read(api: Any) -> Any:
            rbac = k8s.RbacAuthorizationV1Api(api)
            if namespace is None:
                return rbac.read_cluster_role_binding(
                    objects.binding, _request_timeout=self._client.timeout
                )
            return rbac.read_namespaced_role_binding(
                objects.binding, namespace, _request_timeout=self._client.timeout
            )

        def delete(api: Any, options: Any) -> Any:
            rbac = k8s.RbacAuthorizationV1Api(api)
            if namespace is None:
                return rbac.delete_cluster_role_binding(
                    objects.binding, body=options, _request_timeout=self._client.timeout
                )
            return rbac.delete_namespaced_role_binding(
                objects.binding, namespace, body=options, _request_timeout=self._client.timeout
            )

        right = Right.CLUSTERROLEBINDINGS if namespace is None else Right.ROLEBINDINGS
        return await self._delete(
            f"binding {objects.binding}",
            objects=objects,
            uid=uid,
            read=read,
            delete=delete,
            right=right,
        )

    async def delete_account(self, objects: GrantObjects, uid: str | None) -> Deleted:
        namespace, name = objects.account_namespace, objects.account

        def read(api: Any) -> Any:
            return k8s.CoreV1Api(api).read_namespaced_service_account(
                name, namespace, _request_timeout=self._client.timeout
            )

        def delete(api: Any, options: Any) -> Any:
            return k8s.CoreV1Api(api).delete_namespaced_service_account(
                name, namespace, body=options, _request_timeout=self._client.timeout
            )

        what = f"serviceaccount {namespace}/{name}"
        return await self._delete(
            what, objects=objects, uid=uid, read=read, delete=delete, right=Right.ACCOUNTS
        )

    async def binding_intact(self, objects: GrantObjects, uid: str) -> bool:
        """Whether the grant's binding is there, with its UID, its role and its one subject."""
        namespace = objects.namespace

        def read(api: Any) -> Any:
            rbac = k8s.RbacAuthorizationV1Api(api)
            try:
                if namespace is None:
                    return rbac.read_cluster_role_binding(
                        objects.binding, _request_timeout=self._client.timeout
                    )
                return rbac.read_namespaced_role_binding(
                    objects.binding, namespace, _request_timeout=self._client.timeout
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

        right = Right.CLUSTERROLEBINDINGS if namespace is None else Right.ROLEBINDINGS
        found = await self._run(f"GET binding {objects.binding}", read, right)
        if found is None or found.metadata.uid != uid:
            return False
        subjects = found.subjects or []
        return (
            found.role_ref.name == objects.cluster_role
            and found.role_ref.kind == "ClusterRole"
            and len(subjects) == 1
            and subjects[0].kind == "ServiceAccount"
            and subjects[0].name == objects.account
            and subjects[0].namespace == objects.account_namespace
        )

    async def _delete(
        self,
        what: str,
        *,
        objects: GrantObjects,
        uid: str | None,
        read: Any,
        delete: Any,
        right: Right,
    ) -> Deleted:
        """Delete with the recorded UID as precondition; without one, only an object whose
        owner annotation names the grant (and then with its own UID as precondition)."""

        def run(api: Any) -> Deleted:
            target = uid
            if target is None:
                try:
                    found = read(api)
                except ApiException as exc:
                    if exc.status == 404:
                        return Deleted.GONE
                    raise
                if not objects.is_ours(found.metadata):
                    return Deleted.NOT_OURS
                target = str(found.metadata.uid)
            options = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=target))
            try:
                delete(api, options)
            except ApiException as exc:
                if exc.status == 404:
                    return Deleted.GONE
                if exc.status == 409:
                    return Deleted.NOT_OURS
                raise
            return Deleted.DELETED

        result: Deleted = await self._run(f"delete {what}", run, right)
        return result

    async def _run(self, what: str, fn: Any, right: Right) -> Any:
        try:
            return await self._client.run(what, fn)
        except ClusterForbidden as exc:
            raise BrokerRightsMissing(
                f"the broker's RBAC in cluster {self.name!r} lacks a rule cluster access needs: "
                f"{right.value}; apply docs/examples/broker-rbac.yaml (or the chart's "
                f"memberRBAC) there. The API server said: {exc.message}"
            ) from exc


# -- RBAC profiles' bindings (service/admin/rbac_sync.py) ---------------------------------

PROFILE_LABEL = "keyferry.dev/profile"


@dataclass(frozen=True)
class ProfileBinding:
    """A binding a profile asks for: `group` bound to `cluster_role`, in `namespace` (a
    RoleBinding) or cluster-wide (None)."""

    profile: str
    group: str
    cluster_role: str
    namespace: str | None

    @property
    def name(self) -> str:
        return f"keyferry-profile-{self.profile}"


@dataclass(frozen=True)
class FoundBinding:
    uid: str
    matches: bool  # role and subjects as the profile asks


class ProfileBindings:
    """Reads, creates and deletes (by UID) the bindings of RBAC profiles in one cluster."""

    def __init__(self, client: ClusterClient) -> None:
        self._client = client
        self.name = client.config.name

    async def find(self, want: ProfileBinding) -> FoundBinding | None:
        def read(api: Any) -> Any:
            rbac = k8s.RbacAuthorizationV1Api(api)
            try:
                if want.namespace is None:
                    return rbac.read_cluster_role_binding(
                        want.name, _request_timeout=self._client.timeout
                    )
                return rbac.read_namespaced_role_binding(
                    want.name, want.namespace, _request_timeout=self._client.timeout
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

        found = await self._run(f"GET binding {want.name}", read, want)
        if found is None:
            return None
        subjects = found.subjects or []
        matches = (
            found.role_ref.kind == "ClusterRole"
            and found.role_ref.name == want.cluster_role
            and len(subjects) == 1
            and subjects[0].kind == "Group"
            and subjects[0].name == want.group
        )
        return FoundBinding(str(found.metadata.uid), matches)

    async def create(self, want: ProfileBinding) -> str | None:
        """The new binding's UID; None when one of that name exists (not touched)."""
        metadata = k8s.V1ObjectMeta(
            name=want.name,
            namespace=want.namespace,
            labels={MANAGED_BY[0]: MANAGED_BY[1], PROFILE_LABEL: want.profile},
            annotations={OWNER_ANNOTATION: f"profile/{want.profile}"},
        )
        role_ref = k8s.V1RoleRef(api_group=RBAC_GROUP, kind="ClusterRole", name=want.cluster_role)
        subjects = [k8s.RbacV1Subject(kind="Group", name=want.group, api_group=RBAC_GROUP)]

        def create(api: Any) -> Any:
            rbac = k8s.RbacAuthorizationV1Api(api)
            timeout = self._client.timeout
            try:
                if want.namespace is None:
                    body = k8s.V1ClusterRoleBinding(
                        metadata=metadata, role_ref=role_ref, subjects=subjects
                    )
                    return rbac.create_cluster_role_binding(body, _request_timeout=timeout)
                namespaced = k8s.V1RoleBinding(
                    metadata=metadata, role_ref=role_ref, subjects=subjects
                )
                return rbac.create_namespaced_role_binding(
                    want.namespace, namespaced, _request_timeout=timeout
                )
            except ApiException as exc:
                if exc.status == 409:
                    return None
                raise

        made = await self._run(f"create binding {want.name}", create, want)
        return None if made is None else str(made.metadata.uid)

    async def delete(self, name: str, namespace: str | None, uid: str) -> Deleted:
        def run(api: Any) -> Deleted:
            rbac = k8s.RbacAuthorizationV1Api(api)
            options = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=uid))
            timeout = self._client.timeout
            try:
                if namespace is None:
                    rbac.delete_cluster_role_binding(name, body=options, _request_timeout=timeout)
                else:
                    rbac.delete_namespaced_role_binding(
                        name, namespace, body=options, _request_timeout=timeout
                    )
            except ApiException as exc:
                if exc.status == 404:
                    return Deleted.GONE
                if exc.status == 409:
                    return Deleted.NOT_OURS
                raise
            return Deleted.DELETED

        right = Right.CLUSTERROLEBINDINGS if namespace is None else Right.ROLEBINDINGS
        try:
            result: Deleted = await self._client.run(f"delete binding {name}", run)
        except ClusterForbidden as exc:
            raise _missing(self.name, right, exc) from exc
        return result

    async def _run(self, what: str, fn: Any, want: ProfileBinding) -> Any:
        try:
            return await self._client.run(what, fn)
        except ClusterForbidden as exc:
            right = Right.CLUSTERROLEBINDINGS if want.namespace is None else Right.ROLEBINDINGS
            raise _missing(self.name, right, exc) from exc


def _missing(cluster: str, right: Right, exc: ClusterForbidden) -> BrokerRightsMissing:
    return BrokerRightsMissing(
        f"the broker's RBAC in cluster {cluster!r} lacks a rule RBAC profiles need: "
        f"{right.value}; apply docs/examples/broker-rbac.yaml (or the chart's memberRBAC) "
        f"there. The API server said: {exc.message}"
    )
