-- One replica at a time signs the scheduled checkpoints: the one holding this lease. A replica
-- renews its own lease or takes one that has expired; if the leader dies, another takes over
-- once the lease runs out. Signing is idempotent per tree size, so a brief overlap is harmless.
CREATE TABLE checkpoint_leader (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    replica TEXT NOT NULL,
    lease_until_ms BIGINT NOT NULL
);

-- Which replica published each checkpoint (NULL for those published before this column).
ALTER TABLE ledger_checkpoints ADD COLUMN published_by TEXT;
