//! Queries for the ledger: entries and RFC 6962 stored hashes, written in one transaction.

use std::collections::HashMap;

use anyhow::Context;
use sqlx::{Any, AnyConnection, Row, Transaction};

use super::Store;

/// Which entries an auditor asks for; every field narrows the result.
#[derive(Debug, Clone, Default)]
pub struct LedgerFilter {
    pub from_index: Option<i64>,
    /// Exclusive.
    pub to_index: Option<i64>,
    /// RFC 3339 UTC with microseconds (the stored format), inclusive.
    pub since: Option<String>,
    /// Exclusive.
    pub until: Option<String>,
    pub system_id: Option<String>,
    pub policy: Option<String>,
    pub outcome: Option<String>,
    pub served_tier: Option<i64>,
    pub entry_type: Option<String>,
    pub request_id: Option<String>,
    pub limit: i64,
}

/// One ledger row: the entry's canonical JSON (what the leaf hash covers) and the columns it
/// is filtered by. The domain builds it for writing; queries return it.
#[derive(Debug, Clone)]
pub struct LedgerRow {
    pub index: i64,
    pub created_at: String,
    pub request_id: String,
    pub entry_type: String,
    pub system_id: Option<String>,
    pub policy: Option<String>,
    pub outcome: String,
    pub served_tier: Option<i64>,
    pub entry: String,
}

/// A published checkpoint as stored.
#[derive(Debug, Clone)]
pub struct StoredCheckpoint {
    pub tree_size: i64,
    pub created_at: String,
    pub note: String,
    /// The replica that signed it; `None` for checkpoints published before this was kept.
    pub published_by: Option<String>,
}

/// A witness's cosignature of a published checkpoint, as stored.
#[derive(Debug, Clone)]
pub struct StoredCosignature {
    pub tree_size: i64,
    pub witness: String,
    /// The witness's timestamp (Unix seconds).
    pub cosigned_at: i64,
    /// The note signature line.
    pub signature: String,
}

/// A `ledger_checkpoints` row (every query of it selects these four columns).
fn checkpoint_from(row: &sqlx::any::AnyRow) -> Result<StoredCheckpoint, sqlx::Error> {
    Ok(StoredCheckpoint {
        tree_size: row.try_get("tree_size")?,
        created_at: row.try_get("created_at")?,
        note: row.try_get("note")?,
        published_by: row.try_get("published_by")?,
    })
}

/// The advisory lock every writing transaction holds on PostgreSQL ("tiergate" in ASCII).
const WRITE_LOCK_KEY: i64 = 0x7469_6572_6761_7465;

impl Store {
    pub async fn begin(&self) -> anyhow::Result<Transaction<'static, Any>> {
        self.pool.begin().await.context("starting transaction")
    }

    /// A transaction that will write. On SQLite it takes the write lock up front (waiting up to
    /// the busy timeout): a deferred transaction that reads first and then writes fails at once
    /// with SQLITE_BUSY when another writer got in between. On PostgreSQL it takes a
    /// transaction-scoped advisory lock, so that writers in other processes (replicas) are
    /// serialised too: ledger indexes and version numbers are read, then written, under it.
    pub async fn begin_write(&self) -> anyhow::Result<Transaction<'static, Any>> {
        match self.backend {
            super::Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await.context("starting write transaction"),
            super::Backend::Postgres => {
                let mut tx = self.pool.begin().await.context("starting write transaction")?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(WRITE_LOCK_KEY).execute(&mut *tx).await.context("taking the write lock")?;
                Ok(tx)
            }
        }
    }

    /// Number of entries (= next index), read inside the appending transaction.
    pub async fn ledger_size(conn: &mut AnyConnection) -> anyhow::Result<i64> {
        let row = sqlx::query("SELECT CAST(COALESCE(MAX(idx) + 1, 0) AS BIGINT) AS n FROM ledger_entries")
            .fetch_one(conn)
            .await
            .context("reading ledger size")?;
        Ok(row.try_get("n")?)
    }

    pub async fn ledger_read_hashes(conn: &mut AnyConnection, indexes: &[i64]) -> anyhow::Result<HashMap<i64, Vec<u8>>> {
        let mut found = HashMap::with_capacity(indexes.len());
        // Bounded batches keep the statement under every backend's bind-parameter limit.
        for chunk in indexes.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!("SELECT hash_index, hash FROM ledger_hashes WHERE hash_index IN ({})", placeholders.join(", "));
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

    pub async fn ledger_insert(conn: &mut AnyConnection, row: &LedgerRow, first_hash_index: i64, hashes: &[Vec<u8>]) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO ledger_entries (idx, created_at, request_id, entry_type, system_id, outcome, entry, policy, served_tier)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(row.index)
        .bind(&row.created_at)
        .bind(&row.request_id)
        .bind(&row.entry_type)
        .bind(&row.system_id)
        .bind(&row.outcome)
        .bind(&row.entry)
        .bind(&row.policy)
        .bind(row.served_tier)
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
        rows.iter().map(|row| Ok((row.try_get("idx")?, row.try_get("entry")?))).collect::<Result<_, sqlx::Error>>().context("decoding ledger entries")
    }

    /// Entries matching `filter`, in index order.
    pub async fn ledger_query(&self, filter: &LedgerFilter) -> anyhow::Result<Vec<LedgerRow>> {
        // Only fixed column names and numbered placeholders go into the SQL; values are bound.
        let mut conditions: Vec<String> = Vec::new();
        let mut text_values: Vec<(usize, String)> = Vec::new();
        let mut int_values: Vec<(usize, i64)> = Vec::new();
        let mut next = 1usize;
        let mut int_condition = |sql: &str, value: Option<i64>, conditions: &mut Vec<String>, next: &mut usize| {
            if let Some(value) = value {
                conditions.push(format!("{sql} ${next}"));
                int_values.push((*next, value));
                *next += 1;
            }
        };
        int_condition("idx >=", filter.from_index, &mut conditions, &mut next);
        int_condition("idx <", filter.to_index, &mut conditions, &mut next);
        int_condition("served_tier =", filter.served_tier, &mut conditions, &mut next);
        for (sql, value) in [
            ("created_at >=", &filter.since),
            ("created_at <", &filter.until),
            ("system_id =", &filter.system_id),
            ("policy =", &filter.policy),
            ("outcome =", &filter.outcome),
            ("entry_type =", &filter.entry_type),
            ("request_id =", &filter.request_id),
        ] {
            if let Some(value) = value {
                conditions.push(format!("{sql} ${next}"));
                text_values.push((next, value.clone()));
                next += 1;
            }
        }
        let where_clause = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let sql = format!(
            "SELECT idx, created_at, request_id, entry_type, system_id, policy, outcome, served_tier, entry
             FROM ledger_entries {where_clause} ORDER BY idx LIMIT ${next}"
        );
        // Bind in placeholder order.
        let mut binds: Vec<(usize, Result<i64, String>)> = int_values.into_iter().map(|(i, v)| (i, Ok(v))).collect();
        binds.extend(text_values.into_iter().map(|(i, v)| (i, Err(v))));
        binds.sort_by_key(|(i, _)| *i);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (_, value) in binds {
            query = match value {
                Ok(number) => query.bind(number),
                Err(text) => query.bind(text),
            };
        }
        let rows = query.bind(filter.limit).fetch_all(&self.pool).await.context("querying the ledger")?;
        rows.iter()
            .map(|row| {
                Ok(LedgerRow {
                    index: row.try_get("idx")?,
                    created_at: row.try_get("created_at")?,
                    request_id: row.try_get("request_id")?,
                    entry_type: row.try_get("entry_type")?,
                    system_id: row.try_get("system_id")?,
                    policy: row.try_get("policy")?,
                    outcome: row.try_get("outcome")?,
                    served_tier: row.try_get("served_tier")?,
                    entry: row.try_get("entry")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding ledger rows")
    }

    /// Stores a published checkpoint and the replica that signed it; one per tree size (a
    /// second for the same size is ignored).
    pub async fn ledger_insert_checkpoint(&self, tree_size: i64, created_at: &str, note: &str, published_by: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO ledger_checkpoints (tree_size, created_at, note, published_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tree_size) DO NOTHING",
        )
        .bind(tree_size)
        .bind(created_at)
        .bind(note)
        .bind(published_by)
        .execute(&self.pool)
        .await
        .context("storing checkpoint")?;
        Ok(())
    }

    /// Published checkpoints, newest first.
    pub async fn ledger_checkpoints(&self, limit: i64) -> anyhow::Result<Vec<StoredCheckpoint>> {
        let rows = sqlx::query("SELECT tree_size, created_at, note, published_by FROM ledger_checkpoints ORDER BY tree_size DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .context("reading checkpoints")?;
        rows.iter().map(checkpoint_from).collect::<Result<_, sqlx::Error>>().context("decoding checkpoints")
    }

    /// Takes or renews the lease that makes `replica` the one signing scheduled checkpoints.
    /// True when `replica` holds it now: it held it already, or the last holder's lease ran
    /// out. Times are the database's clock, so replicas' own clocks need not agree.
    pub async fn claim_checkpoint_lease(&self, replica: &str, lease_ms: i64) -> anyhow::Result<bool> {
        let now_ms = self.now_ms_sql();
        let statement = format!(
            "INSERT INTO checkpoint_leader (singleton, replica, lease_until_ms) VALUES (1, $1, {now_ms} + $2)
             ON CONFLICT (singleton) DO UPDATE SET replica = excluded.replica, lease_until_ms = excluded.lease_until_ms
             WHERE checkpoint_leader.replica = excluded.replica OR checkpoint_leader.lease_until_ms < {now_ms}"
        );
        // The only text spliced in is one of two fixed clock expressions.
        let done = sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(replica)
            .bind(lease_ms)
            .execute(&self.pool)
            .await
            .context("claiming the checkpoint lease")?;
        Ok(done.rows_affected() == 1)
    }

    /// The replica that holds (or last held) the checkpoint lease.
    pub async fn checkpoint_leader(&self) -> anyhow::Result<Option<String>> {
        let row = sqlx::query("SELECT replica FROM checkpoint_leader WHERE singleton = 1")
            .fetch_optional(&self.pool)
            .await
            .context("reading the checkpoint leader")?;
        row.map(|row| row.try_get("replica")).transpose().context("decoding the checkpoint leader")
    }

    /// The database's current time in milliseconds since the epoch, as an SQL expression.
    fn now_ms_sql(&self) -> &'static str {
        match self.backend {
            super::Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS BIGINT)",
            super::Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// Rows in the entries table (equal to `ledger_count` unless rows were deleted).
    pub async fn ledger_row_count(&self) -> anyhow::Result<i64> {
        let row =
            sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM ledger_entries").fetch_one(&self.pool).await.context("counting ledger rows")?;
        Ok(row.try_get("n")?)
    }

    /// The lowest index below the ledger's size that has no row.
    pub async fn ledger_first_missing_index(&self) -> anyhow::Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT CAST(MIN(idx + 1) AS BIGINT) AS missing FROM ledger_entries e
             WHERE NOT EXISTS (SELECT 1 FROM ledger_entries n WHERE n.idx = e.idx + 1)
               AND e.idx + 1 < (SELECT MAX(idx) FROM ledger_entries)",
        )
        .fetch_one(&self.pool)
        .await
        .context("finding a missing ledger index")?;
        let missing: Option<i64> = row.try_get("missing")?;
        if missing.is_some() {
            return Ok(missing);
        }
        // The gap may be at the start.
        let row = sqlx::query("SELECT CAST(MIN(idx) AS BIGINT) AS first FROM ledger_entries")
            .fetch_one(&self.pool)
            .await
            .context("reading the first ledger index")?;
        let first: Option<i64> = row.try_get("first")?;
        Ok(first.filter(|f| *f > 0).map(|_| 0))
    }

    /// When the newest recorded ledger incident (`tiergate ledger recover`) was committed.
    pub async fn ledger_last_incident_time(&self) -> anyhow::Result<Option<String>> {
        let row = sqlx::query("SELECT MAX(created_at) AS newest FROM ledger_entries WHERE entry_type = 'governance' AND outcome = $1")
            .bind(crate::ledger::INCIDENT_OUTCOME)
            .fetch_one(&self.pool)
            .await
            .context("reading the last ledger incident")?;
        Ok(row.try_get("newest")?)
    }

    /// The largest checkpoint published after `after` (an RFC 3339 time; all when `None`).
    pub async fn ledger_newest_checkpoint_since(&self, after: Option<&str>) -> anyhow::Result<Option<StoredCheckpoint>> {
        let row = sqlx::query(
            "SELECT tree_size, created_at, note, published_by FROM ledger_checkpoints WHERE created_at > $1 ORDER BY tree_size DESC LIMIT 1",
        )
        .bind(after.unwrap_or(""))
        .fetch_optional(&self.pool)
        .await
        .context("reading the newest checkpoint")?;
        row.map(|row| checkpoint_from(&row)).transpose().context("decoding the newest checkpoint")
    }

    pub async fn ledger_count(&self) -> anyhow::Result<i64> {
        let mut conn = self.pool.acquire().await.context("acquiring connection")?;
        Store::ledger_size(&mut conn).await
    }

    /// Keeps a witness's cosignature of the published checkpoint of `tree_size` (once per
    /// witness and size).
    pub async fn ledger_insert_cosignature(&self, cosignature: &StoredCosignature, received_at: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO ledger_cosignatures (tree_size, witness, cosigned_at, signature, received_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tree_size, witness) DO NOTHING",
        )
        .bind(cosignature.tree_size)
        .bind(&cosignature.witness)
        .bind(cosignature.cosigned_at)
        .bind(&cosignature.signature)
        .bind(received_at)
        .execute(&self.pool)
        .await
        .context("storing a cosignature")?;
        Ok(())
    }

    /// Cosignatures of checkpoints from `min_size` to `max_size` (inclusive), by size then witness.
    pub async fn ledger_cosignatures_between(&self, min_size: i64, max_size: i64) -> anyhow::Result<Vec<StoredCosignature>> {
        let rows = sqlx::query(
            "SELECT tree_size, witness, cosigned_at, signature FROM ledger_cosignatures
             WHERE tree_size >= $1 AND tree_size <= $2 ORDER BY tree_size, witness",
        )
        .bind(min_size)
        .bind(max_size)
        .fetch_all(&self.pool)
        .await
        .context("reading cosignatures")?;
        rows.iter()
            .map(|row| {
                Ok(StoredCosignature {
                    tree_size: row.try_get("tree_size")?,
                    witness: row.try_get("witness")?,
                    cosigned_at: row.try_get("cosigned_at")?,
                    signature: row.try_get("signature")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding cosignatures")
    }

    /// The newest published checkpoint cosigned by at least `quorum` of `witnesses`.
    pub async fn ledger_newest_witnessed(&self, witnesses: &[String], quorum: usize) -> anyhow::Result<Option<StoredCheckpoint>> {
        if witnesses.is_empty() || quorum == 0 {
            return Ok(None);
        }
        let names: Vec<String> = (0..witnesses.len()).map(|i| format!("${}", i + 2)).collect();
        let statement = format!(
            "SELECT tree_size, created_at, note, published_by FROM ledger_checkpoints WHERE tree_size IN (
                 SELECT tree_size FROM ledger_cosignatures WHERE witness IN ({}) GROUP BY tree_size HAVING COUNT(*) >= $1
             ) ORDER BY tree_size DESC LIMIT 1",
            names.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(statement)).bind(quorum as i64);
        for witness in witnesses {
            query = query.bind(witness);
        }
        let row = query.fetch_optional(&self.pool).await.context("reading the newest witnessed checkpoint")?;
        row.map(|row| checkpoint_from(&row)).transpose().context("decoding the newest witnessed checkpoint")
    }

    /// When the oldest checkpoint larger than `tree_size` was published (RFC 3339), if any.
    pub async fn ledger_first_checkpoint_after(&self, tree_size: i64) -> anyhow::Result<Option<String>> {
        let row = sqlx::query("SELECT created_at FROM ledger_checkpoints WHERE tree_size > $1 ORDER BY tree_size LIMIT 1")
            .bind(tree_size)
            .fetch_optional(&self.pool)
            .await
            .context("reading checkpoints")?;
        row.map(|row| row.try_get("created_at")).transpose().context("decoding a checkpoint time")
    }

    /// The largest tree size `witness` cosigned, if any.
    pub async fn ledger_witness_newest_size(&self, witness: &str) -> anyhow::Result<Option<i64>> {
        let row = sqlx::query("SELECT MAX(tree_size) AS size FROM ledger_cosignatures WHERE witness = $1")
            .bind(witness)
            .fetch_one(&self.pool)
            .await
            .context("reading cosignatures")?;
        row.try_get("size").context("decoding a cosigned size")
    }
}
