-- Web console sessions: a signed-in API key exchanged for a server-side session, so the key
-- never reaches the browser. Held in the database (not one replica's memory) so a session
-- works on every replica and sign-out ends it everywhere. Only the token's sha256 is stored.
CREATE TABLE console_sessions (
    token_sha256 TEXT PRIMARY KEY,
    key_id       TEXT NOT NULL REFERENCES api_keys (key_id),
    -- Sent with every state-changing form and compared with the form's field.
    csrf_token   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    -- Absolute expiry; the idle limit is measured from last_seen_at.
    expires_at   TEXT NOT NULL,
    ended_at     TEXT
);
CREATE INDEX console_sessions_by_key ON console_sessions (key_id);
