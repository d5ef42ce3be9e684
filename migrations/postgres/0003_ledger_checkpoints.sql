-- Kept in step with migrations/sqlite/0003_ledger_checkpoints.sql.
CREATE TABLE ledger_checkpoints (
    tree_size  BIGINT PRIMARY KEY,
    created_at TEXT   NOT NULL,
    note       TEXT   NOT NULL
);
CREATE TRIGGER ledger_checkpoints_are_append_only
BEFORE UPDATE OR DELETE ON ledger_checkpoints
FOR EACH ROW EXECUTE FUNCTION tiergate_refuse('the ledger is append-only');
