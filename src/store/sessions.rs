//! Queries for web console sessions.

use anyhow::Context;
use sqlx::{Row, any::AnyRow};

use super::Store;

#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub token_sha256: String,
    pub key_id: String,
    pub csrf_token: String,
    pub created_at: String,
    pub last_seen_at: String,
    pub expires_at: String,
    pub ended_at: Option<String>,
}

fn from_row(row: &AnyRow) -> Result<SessionRow, sqlx::Error> {
    Ok(SessionRow {
        token_sha256: row.try_get("token_sha256")?,
        key_id: row.try_get("key_id")?,
        csrf_token: row.try_get("csrf_token")?,
        created_at: row.try_get("created_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        expires_at: row.try_get("expires_at")?,
        ended_at: row.try_get("ended_at")?,
    })
}

impl Store {
    pub async fn insert_session(&self, session: &SessionRow) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO console_sessions (token_sha256, key_id, csrf_token, created_at, last_seen_at, expires_at, ended_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&session.token_sha256)
        .bind(&session.key_id)
        .bind(&session.csrf_token)
        .bind(&session.created_at)
        .bind(&session.last_seen_at)
        .bind(&session.expires_at)
        .bind(&session.ended_at)
        .execute(&self.pool)
        .await
        .context("storing console session")?;
        Ok(())
    }

    pub async fn session(&self, token_sha256: &str) -> anyhow::Result<Option<SessionRow>> {
        let row = sqlx::query(
            "SELECT token_sha256, key_id, csrf_token, created_at, last_seen_at, expires_at, ended_at
             FROM console_sessions WHERE token_sha256 = $1",
        )
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await
        .context("reading console session")?;
        row.as_ref().map(from_row).transpose().context("decoding console session")
    }

    /// Moves the idle clock of a live session.
    pub async fn touch_session(&self, token_sha256: &str, now: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE console_sessions SET last_seen_at = $2 WHERE token_sha256 = $1 AND ended_at IS NULL")
            .bind(token_sha256)
            .bind(now)
            .execute(&self.pool)
            .await
            .context("updating console session")?;
        Ok(())
    }

    /// Ends a session (sign-out, or found expired); false when it had already ended.
    pub async fn end_session(&self, token_sha256: &str, now: &str) -> anyhow::Result<bool> {
        let done = sqlx::query("UPDATE console_sessions SET ended_at = $2 WHERE token_sha256 = $1 AND ended_at IS NULL")
            .bind(token_sha256)
            .bind(now)
            .execute(&self.pool)
            .await
            .context("ending console session")?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends every session of a key (when the key is revoked).
    pub async fn end_sessions_of_key(&self, key_id: &str, now: &str) -> anyhow::Result<u64> {
        let done = sqlx::query("UPDATE console_sessions SET ended_at = $2 WHERE key_id = $1 AND ended_at IS NULL")
            .bind(key_id)
            .bind(now)
            .execute(&self.pool)
            .await
            .context("ending console sessions of a key")?;
        Ok(done.rows_affected())
    }
}
