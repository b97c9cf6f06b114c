-- Federation's conversations across domains (issue: federation).
--
-- A hub (the server of a conversation's creator) keeps the devices of other
-- domains that are members of its conversations as rows of `devices` (and
-- their accounts as rows of `users`) with the domain they live in: never
-- signed in to, never given key packages, their queue is what the hub still
-- owes that domain (forwarded in order, acknowledged by the peer).
ALTER TABLE users ADD COLUMN home_domain TEXT;
ALTER TABLE devices ADD COLUMN home_domain TEXT;
CREATE INDEX devices_by_home_domain ON devices(home_domain);
-- A follower's conversations hosted elsewhere: which peer is the hub (the
-- first peer that Welcomed one of this server's devices into it); only the
-- hub may enqueue for it, and this server's devices' messages and commits
-- for it are passed on to it.
CREATE TABLE federation_groups (
    group_id TEXT PRIMARY KEY,
    hub TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
-- What each peer has delivered here, per device queue at the peer: its
-- queue position, so a delivery repeated after a lost answer is dropped
-- (exactly once into each device queue).
CREATE TABLE federation_received (
    origin TEXT NOT NULL,
    device_id TEXT NOT NULL,
    up_to BIGINT NOT NULL,
    PRIMARY KEY (origin, device_id)
);
-- The nonce a conversation's id was made from with this server's domain
-- (its proof of being the hub, shown to peers with each Welcome); NULL for
-- a conversation begun by a device of an earlier release, which stays
-- within this domain.
ALTER TABLE mls_groups ADD COLUMN hub_nonce BLOB;
