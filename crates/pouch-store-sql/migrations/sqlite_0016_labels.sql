-- The outer copy of a message's classification label (STANAG 4774 XML), kept
-- with the payload so that every recipient device receives it beside the
-- message and can compare it with the label inside (issue: labels).
ALTER TABLE queue_payloads ADD COLUMN label TEXT;
