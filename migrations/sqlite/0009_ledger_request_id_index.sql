-- Feedback may name an answer by its request id: find it by index, not by scanning the log.
CREATE INDEX ledger_entries_request_id ON ledger_entries (request_id);
