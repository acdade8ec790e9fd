"""ClustersService on the admin listener: the cluster registry for ops, each call decided by
Cedar for the operator its client certificate names (broker.service.admin.clusters)."""

from __future__ import annotations

from typing import Any

import grpc

from broker.api.v1 import clusters_pb2, clusters_pb2_grpc
from broker.errors import InvalidRequest
from broker.service import ClusterAdmin

from . import convert
from .interceptors import current_call
from .operators import operator_of

Context = grpc.aio.ServicerContext[Any, Any]


class ClustersServicer(clusters_pb2_grpc.ClustersServiceServicer):
    def __init__(self, clusters: ClusterAdmin) -> None:
        self._clusters = clusters

    async def RegisterCluster(
        self, request: clusters_pb2.RegisterClusterRequest, context: Context
    ) -> clusters_pb2.RegisterClusterResponse:
        connection = convert.cluster_connection(request)
        done = await self._clusters.register(
            operator_of(context), connection, current_call().request_id
        )
        return clusters_pb2.RegisterClusterResponse(
            cluster=convert.cluster_message(done.view),
            pending_grant_id=done.pending_grant_id or "",
        )

    async def GetCluster(
        self, request: clusters_pb2.GetClusterRequest, context: Context
    ) -> clusters_pb2.GetClusterResponse:
        view = await self._clusters.get(
            operator_of(context), _name(request.name), current_call().request_id
        )
        return clusters_pb2.GetClusterResponse(cluster=convert.cluster_message(view))

    async def ListClusters(
        self, request: clusters_pb2.ListClustersRequest, context: Context
    ) -> clusters_pb2.ListClustersResponse:
        views = await self._clusters.list_all(operator_of(context), current_call().request_id)
        return clusters_pb2.ListClustersResponse(
            clusters=[convert.cluster_message(v) for v in views]
        )

    async def DeregisterCluster(
        self, request: clusters_pb2.DeregisterClusterRequest, context: Context
    ) -> clusters_pb2.DeregisterClusterResponse:
        done = await self._clusters.deregister(
            operator_of(context), _name(request.name), request.force, current_call().request_id
        )
        return clusters_pb2.DeregisterClusterResponse(
            revoked=done.revoked, queued=done.queued, pending_grant_id=done.pending_grant_id or ""
        )


def _name(name: str) -> str:
    if not name:
        raise InvalidRequest("name", "is required: the cluster's name")
    return name
