-- Bounded storage: which blob a queued message refers to (so a blob is
-- deleted once no queue item refers to it), whether a blob was ever sent,
-- and running byte counts per device for the queue and blob quotas.
ALTER TABLE queue ADD COLUMN blob_id TEXT;
CREATE INDEX queue_by_blob ON queue(blob_id);
ALTER TABLE blobs ADD COLUMN referenced BOOLEAN NOT NULL DEFAULT FALSE;
-- Blobs from before this version are not tied to queue items: they count
-- as never sent and go 24 h after the upgrade (no deployment predates it).
CREATE INDEX blobs_by_created ON blobs(created_at);
ALTER TABLE devices ADD COLUMN queued_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN blob_bytes BIGINT NOT NULL DEFAULT 0;
CREATE INDEX link_requests_by_status ON link_requests(status, expires_at);
