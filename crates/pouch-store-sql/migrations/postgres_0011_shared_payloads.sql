-- One payload stored once for every queue item that carries it: a message
-- to a thousand devices, or a Welcome to every device a commit adds, is one
-- row here and a thousand small queue rows referring to it. A payload goes
-- when the last queue item that refers to it is acknowledged or dropped.
-- `size` keeps each item's length for the queue quota and fetch limits.
CREATE TABLE queue_payloads (
    payload_id BIGSERIAL PRIMARY KEY,
    data BYTEA NOT NULL
);
ALTER TABLE queue ADD COLUMN payload_id BIGINT;
ALTER TABLE queue ADD COLUMN size BIGINT NOT NULL DEFAULT 0;
-- Items queued before this version each get a payload of their own.
UPDATE queue SET payload_id = nextval('queue_payloads_payload_id_seq'), size = length(payload);
INSERT INTO queue_payloads (payload_id, data) SELECT payload_id, payload FROM queue;
ALTER TABLE queue DROP COLUMN payload;
ALTER TABLE queue ALTER COLUMN payload_id SET NOT NULL;
ALTER TABLE queue ADD FOREIGN KEY (payload_id) REFERENCES queue_payloads(payload_id);
CREATE INDEX queue_by_payload ON queue(payload_id);
