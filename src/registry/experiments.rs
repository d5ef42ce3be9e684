//! The lifecycle of an experiment run (start → widen → stop or promote), each step a governance
//! entry in the ledger written in the same transaction as the change.

use serde_json::{Value, json};

use super::{
    ACTIVE, APPROVED, ArtifactKind, ArtifactRef, GovernanceRecord, LifecycleError, RETIRED, Registry,
    lifecycle::{Actor, four_eyes, governance_entry, load, record},
};
use crate::{
    experiment::{ExperimentDocument, check_document, percent_to_ppm, ppm_to_percent},
    ledger::Ledger,
    store::{EXPERIMENT_RUNNING, ExperimentRunRow, Store},
};

/// A started run: its governance record and its row.
#[derive(Debug, Clone)]
pub struct StartedExperiment {
    pub record: GovernanceRecord,
    pub run: ExperimentRunRow,
}

/// The experiment a promotion ends, and the report it cites.
#[derive(Debug, Clone)]
pub struct Promotion<'a> {
    pub run: &'a ExperimentRunRow,
    pub report_digest: &'a str,
}

impl Promotion<'_> {
    /// Ends the run as promoted (inside the activation's transaction) and returns the evidence
    /// the activation entry cites.
    pub(super) async fn end_run(&self, conn: &mut sqlx::AnyConnection, now: &str) -> Result<Value, LifecycleError> {
        let run = self.run;
        let reason = format!("promoted on report {}", self.report_digest);
        let reference = ArtifactRef { id: run.experiment_id.clone(), version: run.experiment_version };
        if !end_run(conn, &reference, "promoted", now, &reason).await? {
            return Err(LifecycleError::Conflict(format!("experiment {reference} is no longer running")));
        }
        Ok(json!({"experiment": {"id": reference.id, "version": reference.version}, "report_digest": self.report_digest}))
    }
}

impl Registry {
    /// What an experiment document gets wrong beyond its schema: arms that are not two
    /// versions of its system, or that do not exist or are not approved. Nothing is stored.
    pub(super) async fn experiment_problems(&self, document: &Value) -> Result<ExperimentDocument, LifecycleError> {
        let experiment = check_document(document).map_err(LifecycleError::Unprocessable)?;
        let mut problems = Vec::new();
        for (field, arm) in [("control", &experiment.control), ("treatment", &experiment.treatment)] {
            match self.get(ArtifactKind::SystemCard, arm).await? {
                None => problems.push(format!("/{field}: system_card {arm} does not exist in the registry")),
                Some(version) if version.status == APPROVED || version.status == ACTIVE => {}
                Some(version) => {
                    problems.push(format!("/{field}: system_card {arm} is {}; an experiment compares approved versions", version.status))
                }
            }
        }
        if problems.is_empty() { Ok(experiment) } else { Err(LifecycleError::Unprocessable(problems.join("; "))) }
    }

    /// approved → running: the control must be the system's active version, the treatment
    /// approved, and no other experiment running on the system. Someone other than the author
    /// starts it. `key` is the run's secret assignment key.
    pub async fn start_experiment(
        &self,
        ledger: &Ledger,
        reference: &ArtifactRef,
        actor: &Actor,
        now: &str,
        key: &[u8],
    ) -> Result<StartedExperiment, LifecycleError> {
        let kind = ArtifactKind::Experiment;
        let mut tx = ledger.begin().await?;
        let version = load(tx.conn(), kind, reference).await?;
        match version.status.as_str() {
            APPROVED => {}
            ACTIVE => return Err(LifecycleError::Conflict(format!("experiment {reference} is already running"))),
            status => {
                return Err(LifecycleError::Conflict(format!("experiment {reference} is {status}; only an approved experiment can be started")));
            }
        }
        four_eyes("start", kind, reference, &version, actor)?;
        let document: Value = serde_json::from_str(&version.canonical).map_err(anyhow::Error::from)?;
        let experiment = self.experiment_problems(&document).await?;
        let active = Store::artifact_alias_with(&mut *tx.conn(), ArtifactKind::SystemCard.as_str(), &experiment.system, "active").await?;
        if active != Some(experiment.control.version) {
            let serving = active.map_or_else(|| "has no active version".to_owned(), |v| format!("serves version {v}"));
            return Err(LifecycleError::Conflict(format!(
                "/control: system {} {serving}, not the control {}; an experiment starts from the active version",
                experiment.system, experiment.control
            )));
        }
        if let Some(running) = Store::running_experiment_on(tx.conn(), &experiment.system).await? {
            return Err(LifecycleError::Unprocessable(format!(
                "/system: experiment {}@{} is already running on system {}; stop it first",
                running.experiment_id, running.experiment_version, experiment.system
            )));
        }
        let run = ExperimentRunRow {
            experiment_id: reference.id.clone(),
            experiment_version: reference.version,
            system_id: experiment.system.clone(),
            state: EXPERIMENT_RUNNING.to_owned(),
            treatment_ppm: i64::from(percent_to_ppm(experiment.treatment_percent)),
            assignment_key: hex::encode(key),
            start_index: tx.next_index().await? as i64,
            started_by: actor.id.clone(),
            started_at: now.to_owned(),
            ended_at: None,
            end_reason: None,
        };
        Store::insert_experiment_run(tx.conn(), &run).await?;
        Store::set_artifact_status(tx.conn(), kind.as_str(), &reference.id, reference.version, ACTIVE, None).await?;
        let mut entry =
            governance_entry("experiment_started", kind, reference, &version.digest, actor, json!({"from": APPROVED, "to": ACTIVE}), None);
        entry.body["experiment"] = arms(&experiment, run.treatment_ppm);
        entry.system_id = Some(experiment.system.clone());
        let appended = tx.commit(entry).await?;
        Ok(StartedExperiment { record: record("experiment_started", kind, reference, &version.digest, ACTIVE, None, appended.index), run })
    }

    /// Raises the treatment's share of a running experiment. Units already in the treatment
    /// stay there (their positions are fixed); lowering would move people between arms
    /// mid-experiment, so it is refused: stop the experiment instead.
    pub async fn widen_experiment(
        &self,
        ledger: &Ledger,
        id: &str,
        percent: f64,
        actor: &Actor,
    ) -> Result<(GovernanceRecord, ExperimentRunRow), LifecycleError> {
        let kind = ArtifactKind::Experiment;
        let mut tx = ledger.begin().await?;
        let mut run = running(tx.conn(), id).await?;
        let reference = ArtifactRef { id: id.to_owned(), version: run.experiment_version };
        let version = load(tx.conn(), kind, &reference).await?;
        four_eyes("widen", kind, &reference, &version, actor)?;
        let ppm = i64::from(percent_to_ppm(percent));
        if !(percent > 0.0 && percent < 100.0) {
            return Err(LifecycleError::Unprocessable(format!("/treatment_percent: {percent} is outside (0, 100)")));
        }
        if ppm <= run.treatment_ppm {
            return Err(LifecycleError::Unprocessable(format!(
                "/treatment_percent: {percent} does not raise the current share of {}; a share is only raised (stop the experiment to lower it)",
                ppm_to_percent(run.treatment_ppm as u32)
            )));
        }
        Store::set_experiment_share(tx.conn(), id, run.experiment_version, ppm).await?;
        let status = json!({"treatment_percent": {"from": ppm_to_percent(run.treatment_ppm as u32), "to": ppm_to_percent(ppm as u32)}});
        let mut entry = governance_entry("experiment_widened", kind, &reference, &version.digest, actor, status, None);
        entry.system_id = Some(run.system_id.clone());
        let appended = tx.commit(entry).await?;
        run.treatment_ppm = ppm;
        Ok((record("experiment_widened", kind, &reference, &version.digest, ACTIVE, None, appended.index), run))
    }

    /// running → stopped: all traffic back to control. `why` is what the entry records: who
    /// stopped it and their reason, or the guardrail breached with its numbers. `None` when the
    /// run had already ended (another replica stopped it first).
    pub async fn stop_experiment(
        &self,
        ledger: &Ledger,
        run: &ExperimentRunRow,
        actor: &Actor,
        now: &str,
        reason: &str,
        why: Value,
    ) -> Result<Option<GovernanceRecord>, LifecycleError> {
        let kind = ArtifactKind::Experiment;
        let reference = ArtifactRef { id: run.experiment_id.clone(), version: run.experiment_version };
        let mut tx = ledger.begin().await?;
        let version = load(tx.conn(), kind, &reference).await?;
        if !end_run(tx.conn(), &reference, "stopped", now, reason).await? {
            return Ok(None);
        }
        let mut entry =
            governance_entry("experiment_stopped", kind, &reference, &version.digest, actor, json!({"from": ACTIVE, "to": RETIRED}), None);
        entry.body["stop"] = why;
        entry.system_id = Some(run.system_id.clone());
        let appended = tx.commit(entry).await?;
        Ok(Some(record("experiment_stopped", kind, &reference, &version.digest, RETIRED, None, appended.index)))
    }

    /// Promotes a running experiment: the usual activation of its treatment (approved, by
    /// someone other than its author), citing the report's digest, and the run ends with it.
    pub async fn promote_experiment(
        &self,
        ledger: &Ledger,
        run: &ExperimentRunRow,
        treatment: &ArtifactRef,
        report_digest: &str,
        actor: &Actor,
        now: &str,
    ) -> Result<GovernanceRecord, LifecycleError> {
        let promotion = super::experiments::Promotion { run, report_digest };
        self.move_active(ledger, ArtifactKind::SystemCard, treatment, actor, now, "activated", Some(promotion)).await
    }

    /// The document and digest of the experiment version `run` runs.
    pub async fn experiment_of(&self, run: &ExperimentRunRow) -> anyhow::Result<(ExperimentDocument, String)> {
        let reference = ArtifactRef { id: run.experiment_id.clone(), version: run.experiment_version };
        let stored = self.require(ArtifactKind::Experiment, &reference).await?;
        let document = check_document(&stored.document).map_err(|e| anyhow::anyhow!("stored experiment {reference}: {e}"))?;
        Ok((document, stored.digest))
    }

    /// The running run of experiment `id`, or why there is none.
    pub async fn running_experiment(&self, id: &str) -> Result<ExperimentRunRow, LifecycleError> {
        let mut conn = self.store.pool().acquire().await.map_err(anyhow::Error::from)?;
        running(&mut conn, id).await
    }
}

/// Ends the run of `reference` as `state` (`stopped` or `promoted`) and retires the version;
/// false, and nothing changed, when it was no longer running.
async fn end_run(conn: &mut sqlx::AnyConnection, reference: &ArtifactRef, state: &str, now: &str, reason: &str) -> anyhow::Result<bool> {
    if !Store::end_experiment_run(conn, &reference.id, reference.version, state, now, reason).await? {
        return Ok(false);
    }
    Store::set_artifact_status(conn, ArtifactKind::Experiment.as_str(), &reference.id, reference.version, RETIRED, None).await?;
    Ok(true)
}

async fn running(conn: &mut sqlx::AnyConnection, id: &str) -> Result<ExperimentRunRow, LifecycleError> {
    match Store::latest_experiment_run_with(conn, id).await? {
        None => Err(LifecycleError::NotFound(format!("experiment {id:?} has never been started"))),
        Some(run) if run.state != EXPERIMENT_RUNNING => {
            Err(LifecycleError::Conflict(format!("experiment {id}@{} is {}, not running", run.experiment_version, run.state)))
        }
        Some(run) => Ok(run),
    }
}

fn arms(experiment: &ExperimentDocument, treatment_ppm: i64) -> Value {
    json!({
        "system": experiment.system,
        "control": experiment.control.to_string(),
        "treatment": experiment.treatment.to_string(),
        "treatment_percent": ppm_to_percent(treatment_ppm as u32),
        "assignment_unit": experiment.assignment_unit,
        "primary_metric": experiment.primary_metric,
    })
}
