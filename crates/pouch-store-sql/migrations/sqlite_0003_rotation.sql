-- Enforced rotation: when each member device last put fresh key material into each group.
ALTER TABLE group_members ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
