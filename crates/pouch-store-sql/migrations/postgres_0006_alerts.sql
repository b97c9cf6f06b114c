-- Detection: alerts raised by the rules, for the security team and the account's devices.
CREATE TABLE alerts (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    account TEXT,
    device TEXT,
    summary TEXT NOT NULL,
    event_seq BIGINT
);
CREATE INDEX alerts_by_account ON alerts(account, id);
