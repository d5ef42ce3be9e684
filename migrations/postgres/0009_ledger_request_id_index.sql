-- Kept in step with migrations/sqlite/0009_ledger_request_id_index.sql.
CREATE INDEX ledger_entries_request_id ON ledger_entries (request_id);
