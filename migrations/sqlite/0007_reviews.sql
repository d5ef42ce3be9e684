-- Answers the accept gate held for human review, with what a reviewer needs to judge them.
-- The prompt and answer text live here (not in the ledger, which keeps only their sha256
-- unless ledger_store_text is set); the verdict itself is a ledger entry.
CREATE TABLE review_queue (
    ledger_index  BIGINT PRIMARY KEY,  -- the held request's ledger entry
    request_id    TEXT   NOT NULL,
    system_id     TEXT   NOT NULL,
    created_at    TEXT   NOT NULL,
    messages      TEXT   NOT NULL,     -- JSON array of the prompt messages
    answer        TEXT   NOT NULL,
    status        TEXT   NOT NULL,     -- pending | approved | corrected | rejected
    verdict_by    TEXT,
    verdict_at    TEXT,
    correction    TEXT,
    comment       TEXT,
    verdict_index BIGINT               -- the verdict's ledger entry
);
CREATE INDEX review_queue_status ON review_queue (status, ledger_index);
