"""The gRPC server: listeners, servicers, and the one place errors become statuses."""
