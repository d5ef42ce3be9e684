-- Per-system figures of the ledger added up per minute and per hour, so the console's overview
-- reads at most a few hundred small rows however many entries its window holds. Derived data,
-- not part of the hashed record: the entries stay authoritative, and the rows can be rebuilt
-- from them (rollups are written in the transaction that appends the entries they count; a
-- ledger older than this table is added up by a catch-up from `ledger_rollup_state`).
CREATE TABLE ledger_rollups (
    -- Bucket width in seconds (60 or 3600) and its start, RFC 3339 UTC ("…T17:05:00Z").
    span_s       BIGINT NOT NULL,
    bucket_start TEXT   NOT NULL,
    system_id    TEXT   NOT NULL,
    -- JSON: counts by outcome, escalations, per-tier attempts/tokens/cost, latency histograms.
    figures      TEXT   NOT NULL,
    PRIMARY KEY (span_s, system_id, bucket_start)
);

-- The first ledger index not yet added to the rollups (one row).
CREATE TABLE ledger_rollup_state (
    id         BIGINT PRIMARY KEY CHECK (id = 0),
    next_index BIGINT NOT NULL
);
INSERT INTO ledger_rollup_state (id, next_index) VALUES (0, 0);

-- The overview's governance events of one system: few rows among many inference entries.
CREATE INDEX ledger_entries_type_system ON ledger_entries (entry_type, system_id, idx);
