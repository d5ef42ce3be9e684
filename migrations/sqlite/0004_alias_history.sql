-- Every move of an alias (activation, rollback, shipped-file seeding), oldest first: what
-- "roll back to the previous version" means, and when each version was live.
CREATE TABLE artifact_alias_history (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    alias      TEXT    NOT NULL,
    version    BIGINT  NOT NULL,
    previous   BIGINT,
    action     TEXT    NOT NULL,  -- seed | activate | rollback
    actor      TEXT    NOT NULL,
    changed_at TEXT    NOT NULL   -- RFC 3339
);
CREATE INDEX artifact_alias_history_artifact ON artifact_alias_history (kind, id, alias, seq);

CREATE TRIGGER artifact_alias_history_is_append_only_update BEFORE UPDATE ON artifact_alias_history
BEGIN
    SELECT RAISE(ABORT, 'alias history is append-only');
END;
CREATE TRIGGER artifact_alias_history_is_append_only_delete BEFORE DELETE ON artifact_alias_history
BEGIN
    SELECT RAISE(ABORT, 'alias history is append-only');
END;
