-- Administrators are people with Ed25519 keys and roles (operator,
-- security, auditor), not holders of one shared token. A name is never
-- reused: a removed administrator keeps their row (removed_at), so past
-- events still name one person.
CREATE TABLE admins (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    public_key BYTEA NOT NULL,
    added_by TEXT,
    added_at BIGINT NOT NULL,
    removed_at BIGINT
);
CREATE TABLE admin_challenges (
    challenge BYTEA PRIMARY KEY,
    name TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
-- Only the SHA-256 of a sign-in token is kept.
CREATE TABLE admin_tokens (
    token_hash BYTEA PRIMARY KEY,
    name TEXT NOT NULL REFERENCES admins (name),
    expires_at BIGINT NOT NULL
);
-- The two-person rule: a reset or an administrator's revocation waits here
-- until a second administrator approves it.
CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    address TEXT NOT NULL,
    device TEXT,
    requested_by TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    approved_by TEXT,
    approved_at BIGINT
);
