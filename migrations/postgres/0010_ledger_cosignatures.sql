-- Kept in step with migrations/sqlite/0010_ledger_cosignatures.sql.
CREATE TABLE ledger_cosignatures (
    tree_size   BIGINT NOT NULL REFERENCES ledger_checkpoints (tree_size),
    witness     TEXT   NOT NULL,
    cosigned_at BIGINT NOT NULL,
    signature   TEXT   NOT NULL,
    received_at TEXT   NOT NULL,
    PRIMARY KEY (tree_size, witness)
);
CREATE TRIGGER ledger_cosignatures_are_append_only
BEFORE UPDATE OR DELETE ON ledger_cosignatures
FOR EACH ROW EXECUTE FUNCTION tiergate_refuse('the ledger is append-only');
