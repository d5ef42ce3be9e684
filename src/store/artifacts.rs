//! Queries for registry artifact versions and their aliases (`active`).

use anyhow::Context;
use sqlx::{Any, AnyConnection, Executor, Row, any::AnyRow};

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

/// One move of an alias, as recorded in the alias history.
#[derive(Debug, Clone, Copy)]
pub struct AliasMove<'a> {
    pub kind: &'a str,
    pub id: &'a str,
    pub alias: &'a str,
    pub version: i64,
    pub previous: Option<i64>,
    /// `seed`, `activate` or `rollback`.
    pub action: &'a str,
    pub actor: &'a str,
    pub now: &'a str,
}

#[derive(Debug, Clone)]
pub struct AliasHistoryRow {
    pub version: i64,
    pub previous: Option<i64>,
    pub action: String,
    pub actor: String,
    pub changed_at: String,
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
    pub async fn latest_artifact_version(&self, kind: &str, id: &str) -> anyhow::Result<Option<StoredArtifactVersion>> {
        let sql = concat!("SELECT ", columns!(), " FROM artifact_versions WHERE kind = $1 AND id = $2 ORDER BY version DESC LIMIT 1");
        let row = sqlx::query(sql).bind(kind).bind(id).fetch_optional(&self.pool).await.with_context(|| format!("reading latest {kind} {id}"))?;
        row.as_ref().map(from_row).transpose().context("decoding artifact version")
    }

    pub async fn artifact_version(&self, kind: &str, id: &str, version: i64) -> anyhow::Result<Option<StoredArtifactVersion>> {
        Self::artifact_version_with(&self.pool, kind, id, version).await
    }

    /// [`Store::artifact_version`] on a given connection or transaction.
    pub async fn artifact_version_with<'c>(
        executor: impl Executor<'c, Database = Any>,
        kind: &str,
        id: &str,
        version: i64,
    ) -> anyhow::Result<Option<StoredArtifactVersion>> {
        let sql = concat!("SELECT ", columns!(), " FROM artifact_versions WHERE kind = $1 AND id = $2 AND version = $3");
        let row = sqlx::query(sql)
            .bind(kind)
            .bind(id)
            .bind(version)
            .fetch_optional(executor)
            .await
            .with_context(|| format!("reading {kind} {id}@{version}"))?;
        row.as_ref().map(from_row).transpose().context("decoding artifact version")
    }

    /// Every version of one artifact, oldest first.
    pub async fn artifact_versions(&self, kind: &str, id: &str) -> anyhow::Result<Vec<StoredArtifactVersion>> {
        let sql = concat!("SELECT ", columns!(), " FROM artifact_versions WHERE kind = $1 AND id = $2 ORDER BY version");
        let rows = sqlx::query(sql).bind(kind).bind(id).fetch_all(&self.pool).await.with_context(|| format!("listing versions of {kind} {id}"))?;
        rows.iter().map(from_row).collect::<Result<_, _>>().context("decoding artifact version")
    }

    /// Every artifact of `kind`: its id, latest version number and active version (if any).
    pub async fn artifact_summaries(&self, kind: &str) -> anyhow::Result<Vec<(String, i64, Option<i64>)>> {
        let rows = sqlx::query(
            "SELECT v.id AS id, CAST(MAX(v.version) AS BIGINT) AS latest, a.version AS active
             FROM artifact_versions v
             LEFT JOIN artifact_aliases a ON a.kind = v.kind AND a.id = v.id AND a.alias = 'active'
             WHERE v.kind = $1 GROUP BY v.id, a.version ORDER BY v.id",
        )
        .bind(kind)
        .fetch_all(&self.pool)
        .await
        .with_context(|| format!("listing {kind} artifacts"))?;
        rows.iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("latest")?, row.try_get("active")?)))
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding artifact summaries")
    }

    /// Writes `new` as the next version of its artifact and returns the version number.
    pub async fn insert_artifact_version(&self, new: &NewArtifactVersion) -> anyhow::Result<i64> {
        let mut tx = self.begin_write().await?;
        let next = Self::insert_artifact_version_with(&mut tx, new).await?;
        tx.commit().await.context("committing artifact version")?;
        Ok(next)
    }

    /// [`Store::insert_artifact_version`] inside the caller's write transaction.
    pub async fn insert_artifact_version_with(tx: &mut AnyConnection, new: &NewArtifactVersion) -> anyhow::Result<i64> {
        let next: i64 =
            sqlx::query("SELECT CAST(COALESCE(MAX(version), 0) + 1 AS BIGINT) AS next FROM artifact_versions WHERE kind = $1 AND id = $2")
                .bind(&new.kind)
                .bind(&new.id)
                .fetch_one(&mut *tx)
                .await
                .context("choosing the next version number")?
                .try_get("next")?;
        sqlx::query(concat!("INSERT INTO artifact_versions (", columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"))
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
        Ok(next)
    }

    /// Changes a version's lifecycle status; `approval` (who, when) is written once, on approval.
    pub async fn set_artifact_status(
        tx: &mut AnyConnection,
        kind: &str,
        id: &str,
        version: i64,
        status: &str,
        approval: Option<(&str, &str)>,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE artifact_versions SET status = $4, approved_by = COALESCE($5, approved_by),
                 approved_at = COALESCE($6, approved_at)
             WHERE kind = $1 AND id = $2 AND version = $3",
        )
        .bind(kind)
        .bind(id)
        .bind(version)
        .bind(status)
        .bind(approval.map(|(by, _)| by))
        .bind(approval.map(|(_, at)| at))
        .execute(tx)
        .await
        .with_context(|| format!("setting {kind} {id}@{version} to {status}"))?;
        Ok(())
    }

    /// Points `alias` at `version` and appends the move to the alias history.
    pub async fn move_artifact_alias(tx: &mut AnyConnection, alias_move: &AliasMove<'_>) -> anyhow::Result<()> {
        let AliasMove { kind, id, alias, version, previous, action, actor, now } = *alias_move;
        sqlx::query(
            "INSERT INTO artifact_aliases (kind, id, alias, version, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (kind, id, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
        )
        .bind(kind)
        .bind(id)
        .bind(alias)
        .bind(version)
        .bind(now)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("pointing {kind} {id} alias {alias} at {version}"))?;
        sqlx::query(
            "INSERT INTO artifact_alias_history (kind, id, alias, version, previous, action, actor, changed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(kind)
        .bind(id)
        .bind(alias)
        .bind(version)
        .bind(previous)
        .bind(action)
        .bind(actor)
        .bind(now)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("recording the move of {kind} {id} alias {alias}"))?;
        Ok(())
    }

    /// The moves of one alias, oldest first.
    pub async fn artifact_alias_history(&self, kind: &str, id: &str, alias: &str) -> anyhow::Result<Vec<AliasHistoryRow>> {
        let rows = sqlx::query(
            "SELECT version, previous, action, actor, changed_at FROM artifact_alias_history
             WHERE kind = $1 AND id = $2 AND alias = $3 ORDER BY seq",
        )
        .bind(kind)
        .bind(id)
        .bind(alias)
        .fetch_all(&self.pool)
        .await
        .with_context(|| format!("reading the history of {kind} {id} alias {alias}"))?;
        rows.iter()
            .map(|row| {
                Ok(AliasHistoryRow {
                    version: row.try_get("version")?,
                    previous: row.try_get("previous")?,
                    action: row.try_get("action")?,
                    actor: row.try_get("actor")?,
                    changed_at: row.try_get("changed_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding alias history")
    }

    /// Every artifact of `kind` that has `alias`, with the version it points at.
    pub async fn artifact_aliases(&self, kind: &str, alias: &str) -> anyhow::Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT id, version FROM artifact_aliases WHERE kind = $1 AND alias = $2 ORDER BY id")
            .bind(kind)
            .bind(alias)
            .fetch_all(&self.pool)
            .await
            .with_context(|| format!("listing {kind} aliases {alias}"))?;
        rows.iter().map(|row| Ok((row.try_get("id")?, row.try_get("version")?))).collect::<Result<_, sqlx::Error>>().context("decoding aliases")
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
    pub async fn artifact_version_by_digest(&self, kind: &str, id: &str, digest: &str) -> anyhow::Result<Option<StoredArtifactVersion>> {
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
        Self::artifact_alias_with(&self.pool, kind, id, alias).await
    }

    pub async fn artifact_alias_with<'c>(
        executor: impl Executor<'c, Database = Any>,
        kind: &str,
        id: &str,
        alias: &str,
    ) -> anyhow::Result<Option<i64>> {
        let row = sqlx::query("SELECT version FROM artifact_aliases WHERE kind = $1 AND id = $2 AND alias = $3")
            .bind(kind)
            .bind(id)
            .bind(alias)
            .fetch_optional(executor)
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

/// A shadow attachment: the policy version evaluated beside a system's own.
#[derive(Debug, Clone)]
pub struct ShadowRow {
    pub system_id: String,
    pub policy_id: String,
    pub policy_version: i64,
    pub attached_by: String,
    pub attached_at: String,
}

impl Store {
    /// Attaches `shadow` to its system (replacing any), or with `None` detaches the system's.
    pub async fn set_system_shadow(tx: &mut AnyConnection, system_id: &str, shadow: Option<&ShadowRow>) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM system_shadows WHERE system_id = $1")
            .bind(system_id)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("detaching the shadow of {system_id}"))?;
        if let Some(row) = shadow {
            sqlx::query(
                "INSERT INTO system_shadows (system_id, policy_id, policy_version, attached_by, attached_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&row.system_id)
            .bind(&row.policy_id)
            .bind(row.policy_version)
            .bind(&row.attached_by)
            .bind(&row.attached_at)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("attaching a shadow to {system_id}"))?;
        }
        Ok(())
    }

    pub async fn system_shadows(&self) -> anyhow::Result<Vec<ShadowRow>> {
        let rows = sqlx::query("SELECT system_id, policy_id, policy_version, attached_by, attached_at FROM system_shadows ORDER BY system_id")
            .fetch_all(&self.pool)
            .await
            .context("listing shadows")?;
        rows.iter()
            .map(|row| {
                Ok(ShadowRow {
                    system_id: row.try_get("system_id")?,
                    policy_id: row.try_get("policy_id")?,
                    policy_version: row.try_get("policy_version")?,
                    attached_by: row.try_get("attached_by")?,
                    attached_at: row.try_get("attached_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding shadows")
    }
}
