-- Kept in step with migrations/sqlite/0004_alias_history.sql.
CREATE TABLE artifact_alias_history (
    seq        BIGSERIAL PRIMARY KEY,
    kind       TEXT      NOT NULL,
    id         TEXT      NOT NULL,
    alias      TEXT      NOT NULL,
    version    BIGINT    NOT NULL,
    previous   BIGINT,
    action     TEXT      NOT NULL,
    actor      TEXT      NOT NULL,
    changed_at TEXT      NOT NULL
);
CREATE INDEX artifact_alias_history_artifact ON artifact_alias_history (kind, id, alias, seq);

CREATE TRIGGER artifact_alias_history_is_append_only
BEFORE UPDATE OR DELETE ON artifact_alias_history
FOR EACH ROW EXECUTE FUNCTION tiergate_refuse('alias history is append-only');
