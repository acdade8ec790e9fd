# The Vault policy of the keyferry broker, for its AppRole (token_policies = ["keyferry-broker"]).
#
#   vault policy write keyferry-broker docs/vault-policy.hcl
#
# It assumes the default mount prefix `keyferry/`: every keyferry mount is one path
# segment under it (keyferry/db-orders, keyferry/aws, keyferry/app-config, ...). With
# another prefix, replace `keyferry/` throughout. The integration tests load this file
# as-is and run every backend operation with a token that holds only this policy.

# Database engine (creds/<role>) and aws engine iam_user (creds/<role>).
path "keyferry/+/creds/*" {
  capabilities = ["read"]
}

# Database engine: rotate a connection's root credential (keyferry rotate-root), on
# operators' demand only (Cedar action rotate_root).
path "keyferry/+/rotate-root/*" {
  capabilities = ["update"]
}

# aws engine, assumed_role: STS session credentials (sts/<role>, with ttl and role_arn).
path "keyferry/+/sts/*" {
  capabilities = ["update"]
}

# KV version 2: read a value, latest or a pinned version.
path "keyferry/+/data/*" {
  capabilities = ["read"]
}

# PKI: issue a certificate, revoke one by serial.
path "keyferry/+/issue/*" {
  capabilities = ["update"]
}
path "keyferry/+/revoke" {
  capabilities = ["update"]
}

# Renew and revoke leases, by lease id in the URL so only keyferry's leases qualify.
path "sys/leases/renew/keyferry/*" {
  capabilities = ["update"]
}
path "sys/leases/revoke/keyferry/*" {
  capabilities = ["update"]
}

# Reconcile: list every lease under keyferry's prefix (Vault requires sudo to list leases;
# the path confines it to keyferry's prefix).
path "sys/leases/lookup/keyferry/*" {
  capabilities = ["list", "sudo"]
}

# Audit checkpoints are signed by Vault's transit engine; the key never leaves Vault.
path "keyferry/transit/sign/*" {
  capabilities = ["update"]
}
path "keyferry/transit/verify/*" {
  capabilities = ["update"]
}

# The broker's own token: look it up and renew it before it expires.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
