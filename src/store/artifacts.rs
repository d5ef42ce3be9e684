//! Queries for registry artifact versions and their aliases (`active`).

use anyhow::Context;
use sqlx::{Row, any::AnyRow};

use super::Store;

/// A version to be written; the store assigns the version number, the domain everything else.
#[derive(Debug, Clone)]
pub struct NewArtifactVersion {
    pub kind: String,
    pub id: String,
    pub original: String,
    pub canonical: String,
    pub digest: String,
    pub author: String,
    pub created_at: String,
    pub status: String,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StoredArtifactVersion {
    pub kind: String,
    pub id: String,
    pub version: i64,
    pub original: String,
    pub canonical: String,
    pub digest: String,
    pub author: String,
    pub created_at: String,
    pub status: String,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
}

/// The column list, as a macro so that every statement stays a `&'static str` (sqlx refuses
/// dynamically built SQL unless audited).
macro_rules! columns {
    () => {
        "kind, id, version, original, canonical, digest, author, created_at, status, approved_by, approved_at"
    };
}

fn from_row(row: &AnyRow) -> Result<StoredArtifactVersion, sqlx::Error> {
    Ok(StoredArtifactVersion {
        kind: row.try_get("kind")?,
        id: row.try_get("id")?,
        version: row.try_get("version")?,
        original: row.try_get("original")?,
        canonical: row.try_get("canonical")?,
        digest: row.try_get("digest")?,
        author: row.try_get("author")?,
        created_at: row.try_get("created_at")?,
        status: row.try_get("status")?,
        approved_by: row.try_get("approved_by")?,
        approved_at: row.try_get("approved_at")?,
    })
}

impl Store {
    pub async fn latest_artifact_version(
        &self,
        kind: &str,
        id: &str,
    ) -> anyhow::Result<Option<StoredArtifactVersion>> {
        let sql = concat!("SELECT ", columns!(), " FROM artifact_versions WHERE kind = $1 AND id = $2 ORDER BY version DESC LIMIT 1");
        let row = sqlx::query(sql)
            .bind(kind)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .with_context(|| format!("reading latest {kind} {id}"))?;
        row.as_ref().map(from_row).transpose().context("decoding artifact version")
    }

    pub async fn artifact_version(
        &self,
        kind: &str,
        id: &str,
        version: i64,
    ) -> anyhow::Result<Option<StoredArtifactVersion>> {
        let sql = concat!("SELECT ", columns!(), " FROM artifact_versions WHERE kind = $1 AND id = $2 AND version = $3");
        let row = sqlx::query(sql)
            .bind(kind)
            .bind(id)
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .with_context(|| format!("reading {kind} {id}@{version}"))?;
        row.as_ref().map(from_row).transpose().context("decoding artifact version")
    }

    /// Writes `new` as the next version of its artifact and returns the version number.
    pub async fn insert_artifact_version(&self, new: &NewArtifactVersion) -> anyhow::Result<i64> {
        let mut tx = self.begin_write().await?;
        let next: i64 = sqlx::query(
            "SELECT CAST(COALESCE(MAX(version), 0) + 1 AS BIGINT) AS next FROM artifact_versions WHERE kind = $1 AND id = $2",
        )
        .bind(&new.kind)
        .bind(&new.id)
        .fetch_one(&mut *tx)
        .await
        .context("choosing the next version number")?
        .try_get("next")?;
        sqlx::query(concat!(
            "INSERT INTO artifact_versions (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&new.kind)
        .bind(&new.id)
        .bind(next)
        .bind(&new.original)
        .bind(&new.canonical)
        .bind(&new.digest)
        .bind(&new.author)
        .bind(&new.created_at)
        .bind(&new.status)
        .bind(&new.approved_by)
        .bind(&new.approved_at)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("inserting {} {}@{next}", new.kind, new.id))?;
        tx.commit().await.context("committing artifact version")?;
        Ok(next)
    }

    pub async fn set_artifact_alias(
        &self,
        kind: &str,
        id: &str,
        alias: &str,
        version: i64,
        now: &str,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO artifact_aliases (kind, id, alias, version, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (kind, id, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
        )
        .bind(kind)
        .bind(id)
        .bind(alias)
        .bind(version)
        .bind(now)
        .execute(&self.pool)
        .await
        .with_context(|| format!("pointing {kind} {id} alias {alias} at {version}"))?;
        Ok(())
    }

    /// Every artifact of `kind` that has `alias`, with the version it points at.
    pub async fn artifact_aliases(&self, kind: &str, alias: &str) -> anyhow::Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT id, version FROM artifact_aliases WHERE kind = $1 AND alias = $2 ORDER BY id",
        )
        .bind(kind)
        .bind(alias)
        .fetch_all(&self.pool)
        .await
        .with_context(|| format!("listing {kind} aliases {alias}"))?;
        rows.iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("version")?)))
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding aliases")
    }

    pub async fn artifact_version_count(&self) -> anyhow::Result<i64> {
        let row = sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM artifact_versions")
            .fetch_one(&self.pool)
            .await
            .context("counting artifact versions")?;
        Ok(row.try_get("n")?)
    }
}

impl Store {
    /// The version of artifact `kind`/`id` whose content has `digest`, if one exists.
    pub async fn artifact_version_by_digest(
        &self,
        kind: &str,
        id: &str,
        digest: &str,
    ) -> anyhow::Result<Option<StoredArtifactVersion>> {
        let sql = concat!("SELECT ", columns!(), " FROM artifact_versions WHERE kind = $1 AND id = $2 AND digest = $3 ORDER BY version LIMIT 1");
        let row = sqlx::query(sql)
            .bind(kind)
            .bind(id)
            .bind(digest)
            .fetch_optional(&self.pool)
            .await
            .with_context(|| format!("looking up {kind} {id} by digest"))?;
        row.as_ref().map(from_row).transpose().context("decoding artifact version")
    }

    pub async fn artifact_alias(&self, kind: &str, id: &str, alias: &str) -> anyhow::Result<Option<i64>> {
        let row = sqlx::query("SELECT version FROM artifact_aliases WHERE kind = $1 AND id = $2 AND alias = $3")
            .bind(kind)
            .bind(id)
            .bind(alias)
            .fetch_optional(&self.pool)
            .await
            .with_context(|| format!("reading {kind} {id} alias {alias}"))?;
        row.map(|row| row.try_get("version")).transpose().context("decoding alias")
    }
}

impl Store {
    /// Every artifact version whose digest is in `digests`.
    pub async fn artifact_versions_by_digests(&self, digests: &[String]) -> anyhow::Result<Vec<StoredArtifactVersion>> {
        let mut found = Vec::new();
        for chunk in digests.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                concat!("SELECT ", columns!(), " FROM artifact_versions WHERE digest IN ({}) ORDER BY kind, id, version"),
                placeholders.join(", ")
            );
            // Only numbered placeholders are interpolated; the digests are bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for digest in chunk {
                query = query.bind(digest);
            }
            for row in query.fetch_all(&self.pool).await.context("reading artifacts by digest")? {
                found.push(from_row(&row).context("decoding artifact version")?);
            }
        }
        Ok(found)
    }
}
