"""RbacService on the admin listener: clusters' labels and RBAC profiles
(service/admin/rbac_sync.py)."""

from __future__ import annotations

from typing import Any

import grpc
import yaml

from broker.api.v1 import rbac_pb2, rbac_pb2_grpc
from broker.errors import InvalidRequest
from broker.service import RbacSync

from .interceptors import current_call
from .operators import operator_of

Context = grpc.aio.ServicerContext[Any, Any]
MAX_PROFILES_FILE = 256 * 1024


class RbacServicer(rbac_pb2_grpc.RbacServiceServicer):
    def __init__(self, sync: RbacSync) -> None:
        self._sync = sync

    async def LabelCluster(
        self, request: rbac_pb2.LabelClusterRequest, context: Context
    ) -> rbac_pb2.LabelClusterResponse:
        labels = await self._sync.label(
            operator_of(context),
            request.cluster,
            dict(request.labels),
            list(request.remove),
            current_call().request_id,
        )
        return rbac_pb2.LabelClusterResponse(labels=labels)

    async def ListClusterLabels(
        self, request: rbac_pb2.ListClusterLabelsRequest, context: Context
    ) -> rbac_pb2.ListClusterLabelsResponse:
        labels = await self._sync.labels(operator_of(context), current_call().request_id)
        return rbac_pb2.ListClusterLabelsResponse(
            clusters=[
                rbac_pb2.ClusterLabels(cluster=name, labels=values)
                for name, values in sorted(labels.items())
            ]
        )

    async def ApplyProfiles(
        self, request: rbac_pb2.ApplyProfilesRequest, context: Context
    ) -> rbac_pb2.ApplyProfilesResponse:
        if len(request.profiles_yaml.encode()) > MAX_PROFILES_FILE:
            raise InvalidRequest("profiles_yaml", "is over 256 KiB; split the profiles")
        try:
            data = yaml.safe_load(request.profiles_yaml) or {}
        except yaml.YAMLError as exc:
            raise InvalidRequest("profiles_yaml", f"is not YAML: {exc}") from exc
        changes = await self._sync.apply(
            operator_of(context), data, request.dry_run, current_call().request_id
        )
        return rbac_pb2.ApplyProfilesResponse(
            changes=[
                rbac_pb2.RbacChange(
                    cluster=c.cluster,
                    action=c.action,
                    profile=c.profile,
                    binding=c.binding,
                    namespace=c.namespace,
                    detail=c.detail,
                )
                for c in changes
            ]
        )
