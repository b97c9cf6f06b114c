-- The submission ids of messages accepted (kept for weeks): a device that
-- sends again after an answer was lost (a timeout) is answered "already
-- accepted", and nothing is queued twice.
CREATE TABLE submissions (
    sender_device TEXT NOT NULL,
    submission_id TEXT NOT NULL,
    accepted_at INTEGER NOT NULL,
    PRIMARY KEY (sender_device, submission_id)
);
CREATE INDEX submissions_by_age ON submissions(accepted_at);
