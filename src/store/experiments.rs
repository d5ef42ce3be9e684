//! Queries for experiment runs: which experiment runs on which system, at what share.

use anyhow::Context;
use sqlx::{AnyConnection, Row, any::AnyRow};

use super::Store;

pub const RUNNING: &str = "running";

/// The run of a started experiment version.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentRunRow {
    pub experiment_id: String,
    pub experiment_version: i64,
    pub system_id: String,
    /// `running`, `stopped` or `promoted`.
    pub state: String,
    pub treatment_ppm: i64,
    /// Hex of the HMAC key assignments are hashed with.
    pub assignment_key: String,
    /// The ledger index of the `experiment_started` entry: the run's requests come after it.
    pub start_index: i64,
    pub started_by: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub end_reason: Option<String>,
}

/// The columns, as a literal for `concat!` (sqlx takes only static SQL text).
macro_rules! columns {
    () => {
        "experiment_id, experiment_version, system_id, state, treatment_ppm, assignment_key, start_index, started_by, started_at, ended_at, end_reason"
    };
}

fn from_row(row: &AnyRow) -> Result<ExperimentRunRow, sqlx::Error> {
    Ok(ExperimentRunRow {
        experiment_id: row.try_get("experiment_id")?,
        experiment_version: row.try_get("experiment_version")?,
        system_id: row.try_get("system_id")?,
        state: row.try_get("state")?,
        treatment_ppm: row.try_get("treatment_ppm")?,
        assignment_key: row.try_get("assignment_key")?,
        start_index: row.try_get("start_index")?,
        started_by: row.try_get("started_by")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        end_reason: row.try_get("end_reason")?,
    })
}

impl Store {
    pub async fn insert_experiment_run(tx: &mut AnyConnection, run: &ExperimentRunRow) -> anyhow::Result<()> {
        sqlx::query(concat!("INSERT INTO experiment_runs (", columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"))
            .bind(&run.experiment_id)
            .bind(run.experiment_version)
            .bind(&run.system_id)
            .bind(&run.state)
            .bind(run.treatment_ppm)
            .bind(&run.assignment_key)
            .bind(run.start_index)
            .bind(&run.started_by)
            .bind(&run.started_at)
            .bind(&run.ended_at)
            .bind(&run.end_reason)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("recording the run of experiment {}@{}", run.experiment_id, run.experiment_version))?;
        Ok(())
    }

    /// The running experiment of `system_id`, if any.
    pub async fn running_experiment_on(tx: &mut AnyConnection, system_id: &str) -> anyhow::Result<Option<ExperimentRunRow>> {
        let row = sqlx::query(concat!("SELECT ", columns!(), " FROM experiment_runs WHERE system_id = $1 AND state = $2"))
            .bind(system_id)
            .bind(RUNNING)
            .fetch_optional(&mut *tx)
            .await
            .context("reading the running experiment of a system")?;
        row.as_ref().map(from_row).transpose().context("decoding an experiment run")
    }

    /// The newest run of experiment `id` (any version).
    pub async fn latest_experiment_run_with(tx: &mut AnyConnection, id: &str) -> anyhow::Result<Option<ExperimentRunRow>> {
        let row = sqlx::query(concat!("SELECT ", columns!(), " FROM experiment_runs WHERE experiment_id = $1 ORDER BY start_index DESC LIMIT 1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .context("reading an experiment run")?;
        row.as_ref().map(from_row).transpose().context("decoding an experiment run")
    }

    pub async fn latest_experiment_run(&self, id: &str) -> anyhow::Result<Option<ExperimentRunRow>> {
        let mut conn = self.pool().acquire().await.context("acquiring a connection")?;
        Store::latest_experiment_run_with(&mut conn, id).await
    }

    /// Every run, newest first.
    pub async fn experiment_runs(&self) -> anyhow::Result<Vec<ExperimentRunRow>> {
        let rows = sqlx::query(concat!("SELECT ", columns!(), " FROM experiment_runs ORDER BY start_index DESC"))
            .fetch_all(self.pool())
            .await
            .context("listing experiment runs")?;
        rows.iter().map(from_row).collect::<Result<_, _>>().context("decoding experiment runs")
    }

    /// Raises the share of a running experiment; false when it is no longer running.
    pub async fn set_experiment_share(tx: &mut AnyConnection, id: &str, version: i64, treatment_ppm: i64) -> anyhow::Result<bool> {
        let done = sqlx::query("UPDATE experiment_runs SET treatment_ppm = $1 WHERE experiment_id = $2 AND experiment_version = $3 AND state = $4")
            .bind(treatment_ppm)
            .bind(id)
            .bind(version)
            .bind(RUNNING)
            .execute(&mut *tx)
            .await
            .context("changing an experiment's share")?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends a running experiment (`stopped` or `promoted`); false when it was not running, so
    /// that of two replicas stopping it at once only one records it.
    pub async fn end_experiment_run(tx: &mut AnyConnection, id: &str, version: i64, state: &str, now: &str, reason: &str) -> anyhow::Result<bool> {
        let done = sqlx::query(
            "UPDATE experiment_runs SET state = $1, ended_at = $2, end_reason = $3 WHERE experiment_id = $4 AND experiment_version = $5 AND state = $6",
        )
        .bind(state)
        .bind(now)
        .bind(reason)
        .bind(id)
        .bind(version)
        .bind(RUNNING)
        .execute(&mut *tx)
        .await
        .context("ending an experiment run")?;
        Ok(done.rows_affected() == 1)
    }
}
