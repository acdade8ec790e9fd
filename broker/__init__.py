"""keyferry broker: the central service that issues, renews, rotates and revokes credentials."""
