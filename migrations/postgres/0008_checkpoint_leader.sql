-- Kept in step with migrations/sqlite/0008_checkpoint_leader.sql.
CREATE TABLE checkpoint_leader (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    replica TEXT NOT NULL,
    lease_until_ms BIGINT NOT NULL
);

ALTER TABLE ledger_checkpoints ADD COLUMN published_by TEXT;
