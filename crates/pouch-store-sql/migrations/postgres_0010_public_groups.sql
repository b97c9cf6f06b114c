-- The public MLS state of each conversation (ratchet tree, group context,
-- transcript hash; nothing secret), with which the server checks every
-- commit before it changes the fan-out. NULL for conversations begun before.
ALTER TABLE mls_groups ADD COLUMN public_state BYTEA;
