//! The database: sqlx Any pool (SQLite default, PostgreSQL), migrations, and every query.

mod artifacts;
mod experiments;
mod keys;
mod ledger;
mod reviews;
mod rollups;
mod sessions;

pub use artifacts::{AliasHistoryRow, AliasMove, NewArtifactVersion, ShadowRow, StoredArtifactVersion};
pub use experiments::{ExperimentRunRow, RUNNING as EXPERIMENT_RUNNING};
pub use keys::KeyRow;
pub use ledger::{LedgerFilter, LedgerRow, StoredCheckpoint, StoredCosignature};
pub use reviews::ReviewRow;
pub use rollups::RollupRow;
pub use sessions::SessionRow;

use std::str::FromStr;

use anyhow::Context;
use sqlx::{
    AnyPool, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The shared connection pool. Cloning is cheap (the pool is reference-counted).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens the database named by `url`, creating an SQLite file (and its directory) if needed.
    pub async fn connect(url: &str) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            anyhow::bail!("unsupported database URL {url:?}: use sqlite://… or postgres://…");
        };
        if backend == Backend::Sqlite {
            create_sqlite_parent_dir(url)?;
        }
        let options = AnyConnectOptions::from_str(url).with_context(|| format!("parsing database URL {url:?}"))?;
        let mut pool_options = AnyPoolOptions::new().max_connections(8);
        if backend == Backend::Sqlite {
            pool_options = pool_options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL: readers never block the ledger writer; synchronous=FULL: a committed
                    // ledger entry survives power loss, which is the ledger's promise.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    Ok(())
                })
            });
        }
        let pool = pool_options.connect_with(options).await.with_context(|| format!("connecting to database {}", redact(url)))?;
        Ok(Store { pool, backend })
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self.backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&self.pool).await,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&self.pool).await,
        }
        .context("running database migrations")
    }

    /// Cheap liveness probe used by readiness.
    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.context("pinging database")?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

fn create_sqlite_parent_dir(url: &str) -> anyhow::Result<()> {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:").split('?').next().unwrap_or_default();
    if path.is_empty() || path.starts_with(":memory:") {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).with_context(|| format!("creating database directory {}", parent.display()))?;
    }
    Ok(())
}

/// Strips a password from a URL before it reaches a log line or an error message.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_database_urls() {
        assert_eq!(redact("postgres://u:secret@db:5432/x"), "postgres://***@db:5432/x");
        assert_eq!(redact("sqlite://data/x.db"), "sqlite://data/x.db");
    }
}
