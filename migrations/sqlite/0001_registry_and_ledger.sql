-- Registry: immutable artifact versions (model cards, system cards, policy bundles).
CREATE TABLE artifact_versions (
    kind        TEXT    NOT NULL,  -- model_card | system_card | policy_bundle
    id          TEXT    NOT NULL,
    version     BIGINT  NOT NULL,
    original    TEXT    NOT NULL,  -- the document exactly as submitted (YAML, JSON or Rego bundle)
    canonical   TEXT    NOT NULL,  -- canonical JSON form; digest is sha256 of these bytes
    digest      TEXT    NOT NULL,
    author      TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,  -- RFC 3339
    status      TEXT    NOT NULL,  -- draft | approved | active | retired (lifecycle, mutable)
    approved_by TEXT,
    approved_at TEXT,
    PRIMARY KEY (kind, id, version)
);
CREATE INDEX artifact_versions_digest ON artifact_versions (digest);

-- A version's content never changes; only its lifecycle columns may.
CREATE TRIGGER artifact_versions_content_is_immutable
BEFORE UPDATE OF kind, id, version, original, canonical, digest, author, created_at ON artifact_versions
BEGIN
    SELECT RAISE(ABORT, 'artifact versions are immutable');
END;
CREATE TRIGGER artifact_versions_are_never_deleted
BEFORE DELETE ON artifact_versions
BEGIN
    SELECT RAISE(ABORT, 'artifact versions are never deleted');
END;

-- Which version is active for each artifact.
CREATE TABLE artifact_aliases (
    kind       TEXT   NOT NULL,
    id         TEXT   NOT NULL,
    alias      TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    updated_at TEXT   NOT NULL,
    PRIMARY KEY (kind, id, alias)
);

-- Ledger: one row per entry; leaf hash = sha256(0x00 || entry bytes) (RFC 6962).
CREATE TABLE ledger_entries (
    idx        BIGINT PRIMARY KEY,
    created_at TEXT   NOT NULL,
    request_id TEXT   NOT NULL,
    entry_type TEXT   NOT NULL,  -- inference | governance
    system_id  TEXT,
    outcome    TEXT   NOT NULL,
    entry      TEXT   NOT NULL   -- canonical JSON bytes of the entry
);
CREATE INDEX ledger_entries_created_at ON ledger_entries (created_at);

-- RFC 6962 stored hashes in the tlog layout (see tlog_tiles::stored_hash_index).
CREATE TABLE ledger_hashes (
    hash_index BIGINT PRIMARY KEY,
    hash       BLOB   NOT NULL
);

CREATE TRIGGER ledger_entries_are_append_only_update BEFORE UPDATE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
CREATE TRIGGER ledger_entries_are_append_only_delete BEFORE DELETE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
CREATE TRIGGER ledger_hashes_are_append_only_update BEFORE UPDATE ON ledger_hashes
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
CREATE TRIGGER ledger_hashes_are_append_only_delete BEFORE DELETE ON ledger_hashes
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
