-- The log's public leaves name no one: `data` is now the leaf (hashed into
-- the tree, served in the tiles) and `entry` the full entry it commits to,
-- served to signed-in devices only. Leaves from before keep their entry in
-- `data` (an append-only log cannot be rewritten), with `entry` NULL.
ALTER TABLE log_entries ADD COLUMN entry BLOB;
-- The commitment-key leaf is stored under the empty address: one per log.
CREATE UNIQUE INDEX log_commitment_key ON log_entries(address) WHERE address = '';
