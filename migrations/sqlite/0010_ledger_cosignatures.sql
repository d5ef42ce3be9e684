-- Witness cosignatures (c2sp.org/tlog-cosignature) on published checkpoints: one line per
-- witness and tree size, appended to the checkpoint's note when it is published as witnessed.
-- Evidence, like the checkpoints themselves: append-only.
CREATE TABLE ledger_cosignatures (
    tree_size   BIGINT NOT NULL REFERENCES ledger_checkpoints (tree_size),
    witness     TEXT   NOT NULL,
    -- The witness's own timestamp in the cosignature (Unix seconds).
    cosigned_at BIGINT NOT NULL,
    -- The note signature line, `— <witness> <base64>`.
    signature   TEXT   NOT NULL,
    received_at TEXT   NOT NULL,
    PRIMARY KEY (tree_size, witness)
);
CREATE TRIGGER ledger_cosignatures_are_append_only_update BEFORE UPDATE ON ledger_cosignatures
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
CREATE TRIGGER ledger_cosignatures_are_append_only_delete BEFORE DELETE ON ledger_cosignatures
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
