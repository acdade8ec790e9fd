"""The gRPC server: listeners, servicers, and the one place errors become statuses."""

from .app import BrokerServer, create_server

__all__ = ["BrokerServer", "create_server"]
