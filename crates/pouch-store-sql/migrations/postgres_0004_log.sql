-- Key transparency: an append-only Merkle log of every device-list version.
CREATE TABLE log_state (
    id INTEGER PRIMARY KEY,
    size BIGINT NOT NULL,
    checkpoint_size BIGINT NOT NULL,
    checkpoint BYTEA
);
INSERT INTO log_state (id, size, checkpoint_size) VALUES (1, 0, 0);
CREATE TABLE log_entries (
    idx BIGINT PRIMARY KEY,
    address TEXT NOT NULL,
    version BIGINT NOT NULL,
    data BYTEA NOT NULL
);
CREATE INDEX log_entries_by_address ON log_entries(address, version);
-- RFC 6962 stored hashes (tlog "stored hash index" → hash).
CREATE TABLE log_hashes (idx BIGINT PRIMARY KEY, hash BYTEA NOT NULL);
