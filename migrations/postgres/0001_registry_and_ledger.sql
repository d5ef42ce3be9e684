-- Kept in step with migrations/sqlite/0001_registry_and_ledger.sql (same tables and columns).

CREATE TABLE artifact_versions (
    kind        TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    version     BIGINT  NOT NULL,
    original    TEXT    NOT NULL,
    canonical   TEXT    NOT NULL,
    digest      TEXT    NOT NULL,
    author      TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    approved_by TEXT,
    approved_at TEXT,
    PRIMARY KEY (kind, id, version)
);
CREATE INDEX artifact_versions_digest ON artifact_versions (digest);

-- Trigger functions take no declared arguments: the message comes in TG_ARGV.
CREATE FUNCTION tiergate_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', TG_ARGV[0];
END;
$$;

CREATE TRIGGER artifact_versions_content_is_immutable
BEFORE UPDATE OF kind, id, version, original, canonical, digest, author, created_at ON artifact_versions
FOR EACH ROW EXECUTE FUNCTION tiergate_refuse('artifact versions are immutable');
CREATE TRIGGER artifact_versions_are_never_deleted
BEFORE DELETE ON artifact_versions
FOR EACH ROW EXECUTE FUNCTION tiergate_refuse('artifact versions are never deleted');

CREATE TABLE artifact_aliases (
    kind       TEXT   NOT NULL,
    id         TEXT   NOT NULL,
    alias      TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    updated_at TEXT   NOT NULL,
    PRIMARY KEY (kind, id, alias)
);

CREATE TABLE ledger_entries (
    idx        BIGINT PRIMARY KEY,
    created_at TEXT   NOT NULL,
    request_id TEXT   NOT NULL,
    entry_type TEXT   NOT NULL,
    system_id  TEXT,
    outcome    TEXT   NOT NULL,
    entry      TEXT   NOT NULL
);
CREATE INDEX ledger_entries_created_at ON ledger_entries (created_at);

CREATE TABLE ledger_hashes (
    hash_index BIGINT PRIMARY KEY,
    hash       BYTEA  NOT NULL
);

CREATE TRIGGER ledger_entries_are_append_only
BEFORE UPDATE OR DELETE ON ledger_entries
FOR EACH ROW EXECUTE FUNCTION tiergate_refuse('the ledger is append-only');
CREATE TRIGGER ledger_hashes_are_append_only
BEFORE UPDATE OR DELETE ON ledger_hashes
FOR EACH ROW EXECUTE FUNCTION tiergate_refuse('the ledger is append-only');
CREATE TRIGGER ledger_entries_are_never_truncated
BEFORE TRUNCATE ON ledger_entries
FOR EACH STATEMENT EXECUTE FUNCTION tiergate_refuse('the ledger is append-only');
CREATE TRIGGER ledger_hashes_are_never_truncated
BEFORE TRUNCATE ON ledger_hashes
FOR EACH STATEMENT EXECUTE FUNCTION tiergate_refuse('the ledger is append-only');
