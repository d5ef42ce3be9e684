//! Queries for the ledger's rollups: per-system figures added up per time bucket.

use anyhow::Context;
use sqlx::{AnyConnection, Row};

use super::Store;

/// One stored bucket: its start (RFC 3339 UTC) and its figures (JSON).
#[derive(Debug, Clone)]
pub struct RollupRow {
    pub bucket_start: String,
    pub figures: String,
}

impl Store {
    /// The first ledger index not yet added to the rollups.
    pub async fn rollup_next_index(conn: &mut AnyConnection) -> anyhow::Result<i64> {
        let row =
            sqlx::query("SELECT next_index FROM ledger_rollup_state WHERE id = 0").fetch_one(conn).await.context("reading the rollups' position")?;
        Ok(row.try_get("next_index")?)
    }

    pub async fn rollup_set_next_index(conn: &mut AnyConnection, next_index: i64) -> anyhow::Result<()> {
        sqlx::query("UPDATE ledger_rollup_state SET next_index = $1 WHERE id = 0")
            .bind(next_index)
            .execute(conn)
            .await
            .context("moving the rollups' position")?;
        Ok(())
    }

    /// The figures stored for one bucket, if any.
    pub async fn rollup_read(conn: &mut AnyConnection, span_s: i64, system_id: &str, bucket_start: &str) -> anyhow::Result<Option<String>> {
        let row = sqlx::query("SELECT figures FROM ledger_rollups WHERE span_s = $1 AND system_id = $2 AND bucket_start = $3")
            .bind(span_s)
            .bind(system_id)
            .bind(bucket_start)
            .fetch_optional(conn)
            .await
            .context("reading a rollup")?;
        row.map(|row| row.try_get("figures")).transpose().context("decoding a rollup")
    }

    pub async fn rollup_write(conn: &mut AnyConnection, span_s: i64, system_id: &str, bucket_start: &str, figures: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO ledger_rollups (span_s, system_id, bucket_start, figures) VALUES ($1, $2, $3, $4)
             ON CONFLICT (span_s, system_id, bucket_start) DO UPDATE SET figures = excluded.figures",
        )
        .bind(span_s)
        .bind(system_id)
        .bind(bucket_start)
        .bind(figures)
        .execute(conn)
        .await
        .with_context(|| format!("writing the rollup of {system_id} at {bucket_start}"))?;
        Ok(())
    }

    /// Drops buckets of `span_s` that start before `before` (the short buckets are only read
    /// for recent windows).
    pub async fn rollup_prune(conn: &mut AnyConnection, span_s: i64, before: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM ledger_rollups WHERE span_s = $1 AND bucket_start < $2")
            .bind(span_s)
            .bind(before)
            .execute(conn)
            .await
            .context("pruning rollups")?;
        Ok(())
    }

    /// A system's buckets of `span_s` starting at or after `since`, oldest first.
    pub async fn rollups_since(&self, span_s: i64, system_id: &str, since: &str) -> anyhow::Result<Vec<RollupRow>> {
        let rows = sqlx::query(
            "SELECT bucket_start, figures FROM ledger_rollups WHERE span_s = $1 AND system_id = $2 AND bucket_start >= $3 ORDER BY bucket_start",
        )
        .bind(span_s)
        .bind(system_id)
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .context("reading rollups")?;
        rows.iter()
            .map(|row| Ok(RollupRow { bucket_start: row.try_get("bucket_start")?, figures: row.try_get("figures")? }))
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding rollups")
    }
}
