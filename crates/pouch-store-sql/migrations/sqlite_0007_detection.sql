-- Detection: how far a device has
-- acknowledged its queue (a copy with an older cursor is a cloned device),
-- and where the event chain starts after old events are pruned.
ALTER TABLE devices ADD COLUMN acked_up_to BIGINT NOT NULL DEFAULT 0;
ALTER TABLE events_state ADD COLUMN anchor_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE events_state ADD COLUMN anchor_hash TEXT NOT NULL DEFAULT 'pouch-events-v1';
CREATE INDEX events_by_time ON events(at);
CREATE INDEX events_by_account_time ON events(account, at);
-- Per-device baselines, kept as the events arrive so that rules never
-- rescan weeks of events: items fetched per window, networks used.
CREATE TABLE fetch_windows (
    device_id TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    items BIGINT NOT NULL,
    PRIMARY KEY (device_id, window_start)
);
CREATE TABLE device_sources (
    device_id TEXT NOT NULL,
    source TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    PRIMARY KEY (device_id, source)
);
