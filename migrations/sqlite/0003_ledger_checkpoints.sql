-- Published checkpoints: the signed tree heads the gateway has handed out, kept so auditors
-- can fetch the history and check consistency between any two.
CREATE TABLE ledger_checkpoints (
    tree_size  BIGINT PRIMARY KEY,
    created_at TEXT   NOT NULL,
    note       TEXT   NOT NULL
);
CREATE TRIGGER ledger_checkpoints_are_append_only_update BEFORE UPDATE ON ledger_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
CREATE TRIGGER ledger_checkpoints_are_append_only_delete BEFORE DELETE ON ledger_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
