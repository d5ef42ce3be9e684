-- Kept in step with migrations/sqlite/0006_api_keys.sql. API keys. The secret is shown once at creation and stored only as its sha256 (keys are 256
-- random bits, so a fast hash is enough: there is nothing to brute-force).
CREATE TABLE api_keys (
    key_id               TEXT   PRIMARY KEY,  -- public part of the token, safe to log
    secret_sha256        TEXT   NOT NULL,
    subject              TEXT   NOT NULL,     -- the person or application behind the key
    roles                TEXT   NOT NULL,     -- JSON array: admin, author, approver, app, reviewer, auditor
    scopes               TEXT   NOT NULL,     -- JSON array of system ids an app key may call; ["*"] = all
    created_at           TEXT   NOT NULL,
    created_by           TEXT   NOT NULL,
    expires_at           TEXT,
    revoked_at           TEXT,
    rate_limit_per_minute BIGINT,             -- inference requests; NULL = the server default
    daily_token_budget   BIGINT               -- prompt + completion tokens per UTC day; NULL = none
);

-- Tokens used per key per UTC day (all tiers), for budgets.
CREATE TABLE api_key_usage (
    key_id TEXT   NOT NULL,
    day    TEXT   NOT NULL,  -- YYYY-MM-DD (UTC)
    tokens BIGINT NOT NULL,
    PRIMARY KEY (key_id, day)
);
