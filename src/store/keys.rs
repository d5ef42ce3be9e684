//! Queries for API keys and their daily token usage.

use anyhow::Context;
use sqlx::{Row, any::AnyRow};

use super::Store;

#[derive(Debug, Clone, PartialEq)]
pub struct KeyRow {
    pub key_id: String,
    pub secret_sha256: String,
    pub subject: String,
    /// JSON array text.
    pub roles: String,
    /// JSON array text.
    pub scopes: String,
    pub created_at: String,
    pub created_by: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub rate_limit_per_minute: Option<i64>,
    pub daily_token_budget: Option<i64>,
}

macro_rules! key_columns {
    () => {
        "key_id, secret_sha256, subject, roles, scopes, created_at, created_by, expires_at, revoked_at, rate_limit_per_minute, daily_token_budget"
    };
}

fn from_row(row: &AnyRow) -> Result<KeyRow, sqlx::Error> {
    Ok(KeyRow {
        key_id: row.try_get("key_id")?,
        secret_sha256: row.try_get("secret_sha256")?,
        subject: row.try_get("subject")?,
        roles: row.try_get("roles")?,
        scopes: row.try_get("scopes")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        rate_limit_per_minute: row.try_get("rate_limit_per_minute")?,
        daily_token_budget: row.try_get("daily_token_budget")?,
    })
}

impl Store {
    pub async fn insert_key(&self, key: &KeyRow) -> anyhow::Result<()> {
        sqlx::query(concat!("INSERT INTO api_keys (", key_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"))
            .bind(&key.key_id)
            .bind(&key.secret_sha256)
            .bind(&key.subject)
            .bind(&key.roles)
            .bind(&key.scopes)
            .bind(&key.created_at)
            .bind(&key.created_by)
            .bind(&key.expires_at)
            .bind(&key.revoked_at)
            .bind(key.rate_limit_per_minute)
            .bind(key.daily_token_budget)
            .execute(&self.pool)
            .await
            .with_context(|| format!("storing key {}", key.key_id))?;
        Ok(())
    }

    pub async fn key(&self, key_id: &str) -> anyhow::Result<Option<KeyRow>> {
        let row = sqlx::query(concat!("SELECT ", key_columns!(), " FROM api_keys WHERE key_id = $1"))
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await
            .context("reading key")?;
        row.as_ref().map(from_row).transpose().context("decoding key")
    }

    pub async fn keys(&self) -> anyhow::Result<Vec<KeyRow>> {
        let rows = sqlx::query(concat!("SELECT ", key_columns!(), " FROM api_keys ORDER BY created_at, key_id"))
            .fetch_all(&self.pool)
            .await
            .context("listing keys")?;
        rows.iter().map(from_row).collect::<Result<_, _>>().context("decoding key")
    }

    pub async fn key_count(&self) -> anyhow::Result<i64> {
        let row = sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM api_keys").fetch_one(&self.pool).await.context("counting keys")?;
        Ok(row.try_get("n")?)
    }

    /// Marks a key revoked; returns false when it does not exist or was already revoked.
    pub async fn revoke_key(&self, key_id: &str, now: &str) -> anyhow::Result<bool> {
        let done = sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE key_id = $1 AND revoked_at IS NULL")
            .bind(key_id)
            .bind(now)
            .execute(&self.pool)
            .await
            .context("revoking key")?;
        Ok(done.rows_affected() == 1)
    }

    /// Adds `tokens` to a key's usage for `day` and returns the day's total.
    pub async fn add_key_usage(&self, key_id: &str, day: &str, tokens: i64) -> anyhow::Result<i64> {
        sqlx::query(
            "INSERT INTO api_key_usage (key_id, day, tokens) VALUES ($1, $2, $3)
             ON CONFLICT (key_id, day) DO UPDATE SET tokens = api_key_usage.tokens + excluded.tokens",
        )
        .bind(key_id)
        .bind(day)
        .bind(tokens)
        .execute(&self.pool)
        .await
        .context("recording token usage")?;
        self.key_usage(key_id, day).await
    }

    pub async fn key_usage(&self, key_id: &str, day: &str) -> anyhow::Result<i64> {
        let row = sqlx::query("SELECT tokens FROM api_key_usage WHERE key_id = $1 AND day = $2")
            .bind(key_id)
            .bind(day)
            .fetch_optional(&self.pool)
            .await
            .context("reading token usage")?;
        Ok(row.map(|r| r.try_get("tokens")).transpose()?.unwrap_or(0))
    }
}
