-- Adding or removing an operator, once there are two, waits for a second
-- operator's approval like a reset: such a request names an administrator
-- (and, to add one, their key) instead of an account. SQLite cannot drop
-- NOT NULL in place, so the table is rebuilt (it holds few rows).
CREATE TABLE approvals_new (
    id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    address TEXT,
    device TEXT,
    admin_name TEXT,
    admin_key BLOB,
    requested_by TEXT NOT NULL,
    requested_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    approved_by TEXT,
    approved_at INTEGER
);
INSERT INTO approvals_new (id, action, address, device, requested_by, requested_at, expires_at, approved_by, approved_at)
    SELECT id, action, address, device, requested_by, requested_at, expires_at, approved_by, approved_at FROM approvals;
DROP TABLE approvals;
ALTER TABLE approvals_new RENAME TO approvals;
