-- Columns auditors filter on, copied out of the entry when it is written (the entry stays the
-- only hashed, authoritative record).
ALTER TABLE ledger_entries ADD COLUMN policy TEXT;
ALTER TABLE ledger_entries ADD COLUMN served_tier BIGINT;
CREATE INDEX ledger_entries_system ON ledger_entries (system_id, idx);
CREATE INDEX ledger_entries_outcome ON ledger_entries (outcome, idx);
