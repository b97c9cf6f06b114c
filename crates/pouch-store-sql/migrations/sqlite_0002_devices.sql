-- Devices issue: approval state, signed device lists, link requests, account resets.
ALTER TABLE devices ADD COLUMN approved_at BIGINT;
ALTER TABLE devices ADD COLUMN revoked_by TEXT;
UPDATE devices SET approved_at = created_at;
ALTER TABLE users ADD COLUMN reset_at BIGINT;
CREATE TABLE device_lists (
    address TEXT NOT NULL REFERENCES users(address),
    version BIGINT NOT NULL,
    body BLOB NOT NULL,
    signature BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (address, version)
);
CREATE TABLE link_requests (
    code TEXT PRIMARY KEY,
    poll_hash BLOB NOT NULL UNIQUE,
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    nonce BLOB NOT NULL,
    source TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    status TEXT NOT NULL
);
