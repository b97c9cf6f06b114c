-- Access events: append-only and hash-chained.
CREATE TABLE events (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    account TEXT,
    action TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX events_by_account ON events(account, seq);
CREATE TABLE events_state (id INTEGER PRIMARY KEY, last_seq BIGINT NOT NULL, last_hash TEXT NOT NULL);
INSERT INTO events_state (id, last_seq, last_hash) VALUES (1, 0, 'pouch-events-v1');
