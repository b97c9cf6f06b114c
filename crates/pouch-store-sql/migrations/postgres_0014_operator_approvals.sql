-- Adding or removing an operator, once there are two, waits for a second
-- operator's approval like a reset: such a request names an administrator
-- (and, to add one, their key) instead of an account.
ALTER TABLE approvals ALTER COLUMN address DROP NOT NULL;
ALTER TABLE approvals ADD COLUMN admin_name TEXT;
ALTER TABLE approvals ADD COLUMN admin_key BYTEA;
