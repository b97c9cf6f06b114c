-- Counters the detection rules keep as events arrive, per clock-aligned
-- window, instead of re-reading the window's events: failed attempts per
-- action and source, key-package claims per claimer and account, Welcomes
-- per claimer and device.
CREATE TABLE detection_counts (
    name TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (name, window_start)
);
CREATE INDEX detection_counts_window ON detection_counts (window_start);
