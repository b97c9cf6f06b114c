-- Pouch server schema v1 (PostgreSQL). Mirrors sqlite_0001_initial.sql.
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE users (
    address TEXT PRIMARY KEY,
    name TEXT,
    created_at BIGINT NOT NULL
);
CREATE TABLE invites (
    secret_hash BYTEA PRIMARY KEY,
    address TEXT NOT NULL REFERENCES users(address),
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    address TEXT NOT NULL REFERENCES users(address),
    name TEXT NOT NULL,
    signature_key BYTEA NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    next_seq BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX devices_by_address ON devices(address);
CREATE TABLE auth_challenges (challenge BYTEA PRIMARY KEY, device_id TEXT NOT NULL, expires_at BIGINT NOT NULL);
CREATE TABLE auth_tokens (token_hash BYTEA PRIMARY KEY, device_id TEXT NOT NULL, expires_at BIGINT NOT NULL);
CREATE TABLE key_packages (
    id BIGSERIAL PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    data BYTEA NOT NULL,
    last_resort BOOLEAN NOT NULL
);
CREATE INDEX key_packages_by_device ON key_packages(device_id, last_resort, id);
CREATE TABLE mls_groups (group_id TEXT PRIMARY KEY, epoch BIGINT NOT NULL, created_at BIGINT NOT NULL);
CREATE TABLE group_members (
    group_id TEXT NOT NULL REFERENCES mls_groups(group_id),
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    PRIMARY KEY (group_id, device_id)
);
CREATE TABLE queue (
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    group_id TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    payload BYTEA NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE TABLE blobs (
    blob_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES devices(device_id),
    created_at BIGINT NOT NULL,
    chunks BIGINT,
    size BIGINT
);
CREATE TABLE blob_chunks (
    blob_id TEXT NOT NULL REFERENCES blobs(blob_id),
    idx BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (blob_id, idx)
);
