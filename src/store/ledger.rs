//! Queries for the ledger: entries and RFC 6962 stored hashes, written in one transaction.

use std::collections::HashMap;

use anyhow::Context;
use sqlx::{Any, AnyConnection, Row, Transaction};

use super::Store;

/// One ledger row as the domain built it; `entry` is the canonical JSON the leaf hash covers.
#[derive(Debug, Clone)]
pub struct NewLedgerRow {
    pub index: i64,
    pub created_at: String,
    pub request_id: String,
    pub entry_type: String,
    pub system_id: Option<String>,
    pub outcome: String,
    pub entry: String,
}

impl Store {
    pub async fn begin(&self) -> anyhow::Result<Transaction<'static, Any>> {
        self.pool.begin().await.context("starting transaction")
    }

    /// A transaction that will write. On SQLite it takes the write lock up front (waiting up to
    /// the busy timeout): a deferred transaction that reads first and then writes fails at once
    /// with SQLITE_BUSY when another writer got in between.
    pub async fn begin_write(&self) -> anyhow::Result<Transaction<'static, Any>> {
        match self.backend {
            super::Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            super::Backend::Postgres => self.pool.begin().await,
        }
        .context("starting write transaction")
    }

    /// Number of entries (= next index), read inside the appending transaction.
    pub async fn ledger_size(conn: &mut AnyConnection) -> anyhow::Result<i64> {
        let row = sqlx::query("SELECT CAST(COALESCE(MAX(idx) + 1, 0) AS BIGINT) AS n FROM ledger_entries")
            .fetch_one(conn)
            .await
            .context("reading ledger size")?;
        Ok(row.try_get("n")?)
    }

    pub async fn ledger_read_hashes(
        conn: &mut AnyConnection,
        indexes: &[i64],
    ) -> anyhow::Result<HashMap<i64, Vec<u8>>> {
        let mut found = HashMap::with_capacity(indexes.len());
        // Bounded batches keep the statement under every backend's bind-parameter limit.
        for chunk in indexes.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT hash_index, hash FROM ledger_hashes WHERE hash_index IN ({})",
                placeholders.join(", ")
            );
            // Only numbered placeholders are interpolated; the values are bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for index in chunk {
                query = query.bind(*index);
            }
            for row in query.fetch_all(&mut *conn).await.context("reading stored hashes")? {
                found.insert(row.try_get("hash_index")?, row.try_get("hash")?);
            }
        }
        Ok(found)
    }

    pub async fn ledger_insert(
        conn: &mut AnyConnection,
        row: &NewLedgerRow,
        first_hash_index: i64,
        hashes: &[Vec<u8>],
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO ledger_entries (idx, created_at, request_id, entry_type, system_id, outcome, entry)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(row.index)
        .bind(&row.created_at)
        .bind(&row.request_id)
        .bind(&row.entry_type)
        .bind(&row.system_id)
        .bind(&row.outcome)
        .bind(&row.entry)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("inserting ledger entry {}", row.index))?;
        for (offset, hash) in hashes.iter().enumerate() {
            sqlx::query("INSERT INTO ledger_hashes (hash_index, hash) VALUES ($1, $2)")
                .bind(first_hash_index + offset as i64)
                .bind(hash.as_slice())
                .execute(&mut *conn)
                .await
                .context("inserting stored hash")?;
        }
        Ok(())
    }

    /// The canonical JSON of entry `index`, if it exists.
    pub async fn ledger_entry(&self, index: i64) -> anyhow::Result<Option<String>> {
        let row = sqlx::query("SELECT entry FROM ledger_entries WHERE idx = $1")
            .bind(index)
            .fetch_optional(&self.pool)
            .await
            .with_context(|| format!("reading ledger entry {index}"))?;
        row.map(|row| row.try_get("entry")).transpose().context("decoding ledger entry")
    }

    /// Entries in index order, `limit` at most, starting at `from`.
    pub async fn ledger_entries(&self, from: i64, limit: i64) -> anyhow::Result<Vec<(i64, String)>> {
        let rows = sqlx::query("SELECT idx, entry FROM ledger_entries WHERE idx >= $1 ORDER BY idx LIMIT $2")
            .bind(from)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .context("reading ledger entries")?;
        rows.iter()
            .map(|row| Ok((row.try_get("idx")?, row.try_get("entry")?)))
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding ledger entries")
    }

    pub async fn ledger_count(&self) -> anyhow::Result<i64> {
        let mut conn = self.pool.acquire().await.context("acquiring connection")?;
        Store::ledger_size(&mut conn).await
    }
}
