//! Guardrails: each replica judges every running experiment on the ledger, on a schedule, and
//! stops one whose treatment breaches a limit (all traffic back to control, a governance entry
//! naming the guardrail and its numbers), or whose control is no longer the active version.
//! The ledger is shared, so replicas agree; the stop is conditional on the run still running,
//! so two replicas stopping it at once record it once.

use std::{sync::Weak, time::Duration};

use serde_json::json;

use super::report;
use crate::{
    registry::{Actor, Registry},
    routing::Router,
    store::{EXPERIMENT_RUNNING, Store},
};

/// Who stops an experiment for a breached guardrail, in the ledger.
pub const GUARDRAIL_ACTOR: &str = "tiergate-experiment-guardrails";

pub async fn watch(router: Weak<Router>, registry: Registry, store: Store, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(router) = router.upgrade() else { return };
        if let Err(error) = check_once(&router, &registry, &store).await {
            tracing::warn!(error = format!("{error:#}"), "judging experiment guardrails failed; retrying at the next tick");
        }
    }
}

/// Judges every running experiment once; returns how many it stopped.
pub async fn check_once(router: &Router, registry: &Registry, store: &Store) -> anyhow::Result<usize> {
    let mut stopped = 0;
    for run in store.experiment_runs().await?.into_iter().filter(|run| run.state == EXPERIMENT_RUNNING) {
        let Some(experiment) = router.experiment(&run.system_id) else { continue };
        if experiment.reference.id != run.experiment_id || experiment.reference.version != run.experiment_version {
            continue;
        }
        let report = report::compute(router.ledger(), &run, &experiment.digest, &experiment.document).await?;
        let control = &experiment.document.control;
        let serving = router.serving(&run.system_id);
        // Another version was activated (not by promotion): the comparison has no control left.
        let (reason, why) = if let Some(serving) = serving.filter(|serving| serving != control) {
            let reason = format!("the control {control} is no longer active ({serving} is)");
            (reason.clone(), json!({"by": "control_changed", "reason": reason, "report_digest": report.digest()}))
        } else {
            let breaches = report.breaches();
            if breaches.is_empty() {
                continue;
            }
            let names: Vec<String> = breaches.iter().map(|b| format!("{} (observed {:?}, limit {})", b.guardrail, b.observed, b.limit)).collect();
            let why = json!({"by": "guardrail", "breaches": breaches, "report_digest": report.digest(), "treatment_requests": report.treatment_arm.requests});
            (format!("guardrail breached: {}", names.join(", ")), why)
        };
        tracing::warn!(experiment = %experiment.reference, reason, "stopping experiment");
        let actor = Actor {
            id: GUARDRAIL_ACTOR.to_owned(),
            key_id: String::new(),
            roles: Vec::new(),
            request_id: format!("guardrail-{}", uuid::Uuid::now_v7()),
        };
        let record = registry.stop_experiment(router.ledger(), &run, &actor, &crate::api::now(), &reason, why).await?;
        router.set_experiment(&run.system_id, None);
        stopped += usize::from(record.is_some());
    }
    Ok(stopped)
}
