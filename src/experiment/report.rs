//! An experiment's report, computed from the ledger alone (so every replica, and an auditor
//! with an export, gets the same numbers): per arm volumes, rates, latency, cost and feedback
//! accuracy with 95% intervals, the sequential verdict on the primary metric, and guardrails.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{
    ExperimentDocument, Metric,
    stats::{self, Estimate, SequentialTest},
};
use crate::{
    canonical::{sha256_digest, to_canonical_bytes},
    confidence::labels::latest_labels,
    ledger::Ledger,
    registry::{ArtifactRef, Registry},
    store::{ExperimentRunRow, LedgerFilter},
};

/// One request of the experiment, as the ledger records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub index: u64,
    pub treatment: bool,
    pub outcome: String,
    pub escalated: bool,
    pub contained: bool,
    pub errored: bool,
    pub latency_ms: f64,
    pub cost: f64,
    /// The latest feedback or review verdict on the answer, if any.
    pub correct: Option<bool>,
}

/// What an inference entry is to one experiment run.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Not a request of this experiment version.
    Outside,
    /// Served by control and left out of the comparison (kept there by the policy, or no unit).
    Excluded,
    Observed(Observation),
}

impl Observation {
    /// The request's part in `experiment`, from its inference entry.
    pub fn from_entry(index: u64, entry: &Value, experiment: &ArtifactRef, labels: &BTreeMap<u64, (u64, bool)>) -> Part {
        let Some(part) = entry.get("experiment") else { return Part::Outside };
        if part.get("id").and_then(Value::as_str) != Some(experiment.id.as_str())
            || part.get("version").and_then(Value::as_i64) != Some(experiment.version)
        {
            return Part::Outside;
        }
        if part.get("excluded").is_some_and(|e| !e.is_null()) {
            return Part::Excluded;
        }
        let attempts = entry.get("attempts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let outcome = entry.get("outcome").and_then(Value::as_str).unwrap_or_default().to_owned();
        Part::Observed(Observation {
            index,
            treatment: part.get("arm").and_then(Value::as_str) == Some("treatment"),
            contained: outcome == "served" && attempts.len() == 1,
            escalated: entry.get("escalated").and_then(Value::as_bool).unwrap_or(false),
            errored: attempts.iter().any(|a| a.get("error").is_some_and(|e| !e.is_null())),
            latency_ms: entry
                .get("latency_ms")
                .and_then(Value::as_f64)
                .unwrap_or_else(|| attempts.iter().filter_map(|a| a.get("latency_ms").and_then(Value::as_f64)).sum()),
            cost: attempts.iter().filter_map(|a| a.get("cost").and_then(Value::as_f64)).sum(),
            correct: labels.get(&index).map(|(_, correct)| *correct),
            outcome,
        })
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ArmReport {
    pub requests: u64,
    /// Requests by outcome (`served`, `denied`, `held_for_review`).
    pub outcomes: BTreeMap<String, u64>,
    /// Served by the first tier tried, without escalation.
    pub containment: Option<Estimate>,
    pub escalation_rate: Option<Estimate>,
    pub denial_rate: Option<Estimate>,
    /// Requests where a tier failed (an error, a time-out, a refused call).
    pub error_rate: Option<Estimate>,
    pub latency_ms_p50: Option<Estimate>,
    pub latency_ms_p95: Option<Estimate>,
    /// Sum of the attempts' costs (model cards' prices), per request.
    pub cost_per_request: Option<Estimate>,
    /// Answers with feedback or a review verdict.
    pub labelled: u64,
    pub feedback_accuracy: Option<Estimate>,
}

impl ArmReport {
    fn of(observations: &[&Observation]) -> ArmReport {
        let n = observations.len() as u64;
        let count = |test: &dyn Fn(&Observation) -> bool| observations.iter().filter(|o| test(o)).count() as u64;
        let mut outcomes = BTreeMap::new();
        for observation in observations {
            *outcomes.entry(observation.outcome.clone()).or_insert(0) += 1;
        }
        let latencies: Vec<f64> = observations.iter().map(|o| o.latency_ms).collect();
        let costs: Vec<f64> = observations.iter().map(|o| o.cost).collect();
        let labels: Vec<bool> = observations.iter().filter_map(|o| o.correct).collect();
        ArmReport {
            requests: n,
            outcomes,
            containment: stats::proportion(count(&|o| o.contained), n),
            escalation_rate: stats::proportion(count(&|o| o.escalated), n),
            denial_rate: stats::proportion(count(&|o| o.outcome == "denied"), n),
            error_rate: stats::proportion(count(&|o| o.errored), n),
            latency_ms_p50: stats::quantile(&latencies, 0.5),
            latency_ms_p95: stats::quantile(&latencies, 0.95),
            cost_per_request: stats::mean(&costs),
            labelled: labels.len() as u64,
            feedback_accuracy: stats::proportion(labels.iter().filter(|c| **c).count() as u64, labels.len() as u64),
        }
    }
}

/// The comparison on the primary metric.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Verdict {
    /// `collecting` (an arm has fewer than `min_samples`), `treatment_better`,
    /// `treatment_worse` or `no_difference_detected` (so far).
    pub decision: String,
    pub metric: Metric,
    pub test: SequentialTest,
}

/// One guardrail on the treatment arm.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GuardrailCheck {
    pub guardrail: String,
    pub limit: f64,
    /// The treatment's value, once it has enough samples to be judged.
    pub observed: Option<f64>,
    pub samples: u64,
    pub breached: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExperimentReport {
    pub experiment: String,
    pub experiment_digest: String,
    pub system: String,
    pub control: String,
    pub treatment: String,
    /// `running`, `stopped` or `promoted`.
    pub state: String,
    pub treatment_percent: f64,
    /// Inference entries with index above this belong to the run (the `experiment_started` entry).
    pub started_at_index: u64,
    /// The ledger size when the report was computed: entries below it were read.
    pub ledger_size: u64,
    pub control_arm: ArmReport,
    pub treatment_arm: ArmReport,
    /// Requests served by control and kept out of the comparison (kept there by the policy,
    /// or without a unit to assign).
    pub excluded: u64,
    pub verdict: Verdict,
    pub guardrails: Vec<GuardrailCheck>,
}

impl ExperimentReport {
    /// `sha256:` of the report's canonical JSON: what a promotion cites.
    pub fn digest(&self) -> String {
        sha256_digest(&to_canonical_bytes(&serde_json::to_value(self).unwrap_or_default()))
    }

    pub fn breaches(&self) -> Vec<&GuardrailCheck> {
        self.guardrails.iter().filter(|g| g.breached).collect()
    }
}

/// Entries read per query while paging through the ledger.
const PAGE: i64 = 1000;

/// The report of `run` as the ledger stands now, with the experiment document it judges.
pub async fn of_run(registry: &Registry, ledger: &Ledger, run: &ExperimentRunRow) -> anyhow::Result<(ExperimentDocument, ExperimentReport)> {
    let (document, digest) = registry.experiment_of(run).await?;
    let report = compute(ledger, run, &digest, &document).await?;
    Ok((document, report))
}

/// Computes the report of `run` from the ledger as it is now.
pub async fn compute(ledger: &Ledger, run: &ExperimentRunRow, digest: &str, experiment: &ExperimentDocument) -> anyhow::Result<ExperimentReport> {
    let reference = ArtifactRef { id: run.experiment_id.clone(), version: run.experiment_version };
    let (ledger_size, _) = ledger.tree_head().await?;
    let labels = latest_labels(ledger, &run.system_id, Some(&run.started_at)).await?.by_answer;
    let mut observations = Vec::new();
    let mut excluded = 0;
    let mut from_index = Some(run.start_index + 1);
    loop {
        let filter = LedgerFilter {
            entry_type: Some("inference".into()),
            system_id: Some(run.system_id.clone()),
            from_index,
            to_index: Some(ledger_size as i64),
            limit: PAGE,
            ..Default::default()
        };
        let page = ledger.query(&filter).await?;
        for record in &page {
            match Observation::from_entry(record.index, &record.entry, &reference, &labels) {
                Part::Observed(observation) => observations.push(observation),
                Part::Excluded => excluded += 1,
                Part::Outside => {}
            }
        }
        match page.last() {
            Some(last) if page.len() as i64 == PAGE => from_index = Some(last.index as i64 + 1),
            _ => break,
        }
    }
    Ok(summarise(run, digest, experiment, &observations, excluded, ledger_size))
}

/// The report over `observations` (in ledger order).
pub fn summarise(
    run: &ExperimentRunRow,
    digest: &str,
    experiment: &ExperimentDocument,
    observations: &[Observation],
    excluded: u64,
    ledger_size: u64,
) -> ExperimentReport {
    let (treated, control): (Vec<&Observation>, Vec<&Observation>) = observations.iter().partition(|o| o.treatment);
    let (control_arm, treatment_arm) = (ArmReport::of(&control), ArmReport::of(&treated));
    let metric = experiment.primary_metric;
    let values: Vec<(bool, f64)> = observations
        .iter()
        .filter_map(|o| match metric {
            Metric::FeedbackAccuracy => o.correct.map(|c| (o.treatment, f64::from(u8::from(c)))),
            Metric::CostPerRequest => Some((o.treatment, o.cost)),
            Metric::EscalationRate => Some((o.treatment, f64::from(u8::from(o.escalated)))),
        })
        .collect();
    let mixture_sd = experiment.mixture_sd.unwrap_or_else(|| match metric {
        Metric::CostPerRequest => {
            let control_costs: Vec<f64> = values.iter().filter(|(t, _)| !t).map(|(_, v)| *v).collect();
            let mean = stats::mean_variance(&control_costs).map_or(0.0, |(m, _)| m);
            if mean > 0.0 { 0.25 * mean } else { 1e-6 }
        }
        _ => 0.05,
    });
    let test = stats::msprt(&values, experiment.alpha, mixture_sd);
    let samples = |treatment: bool| values.iter().filter(|(t, _)| *t == treatment).count() as u64;
    let min_samples = experiment.guardrails.min_samples;
    let decision = if samples(true) < min_samples || samples(false) < min_samples {
        "collecting"
    } else if test.p_value <= experiment.alpha {
        let higher = test.difference.unwrap_or_default() > 0.0;
        if higher == metric.higher_is_better() { "treatment_better" } else { "treatment_worse" }
    } else {
        "no_difference_detected"
    };
    ExperimentReport {
        experiment: format!("{}@{}", run.experiment_id, run.experiment_version),
        experiment_digest: digest.to_owned(),
        system: run.system_id.clone(),
        control: experiment.control.to_string(),
        treatment: experiment.treatment.to_string(),
        state: run.state.clone(),
        treatment_percent: super::ppm_to_percent(run.treatment_ppm as u32),
        started_at_index: run.start_index as u64,
        ledger_size,
        guardrails: guardrails(experiment, &treatment_arm),
        control_arm,
        treatment_arm,
        excluded,
        verdict: Verdict { decision: decision.to_owned(), metric, test },
    }
}

/// Each configured guardrail judged on the treatment arm, once it has `min_samples` requests
/// (labelled answers, for feedback accuracy).
fn guardrails(experiment: &ExperimentDocument, treatment: &ArmReport) -> Vec<GuardrailCheck> {
    let limits = &experiment.guardrails;
    let enough = treatment.requests >= limits.min_samples;
    let mut checks = Vec::new();
    let mut check = |name: &str, limit: Option<f64>, observed: Option<f64>, samples: u64, judged: bool, too_high: bool| {
        if let Some(limit) = limit {
            let observed = observed.filter(|_| judged);
            let breached = observed.is_some_and(|value| if too_high { value > limit } else { value < limit });
            checks.push(GuardrailCheck { guardrail: name.to_owned(), limit, observed, samples, breached });
        }
    };
    let value = |estimate: Option<Estimate>| estimate.map(|e| e.value);
    check("p95_latency_ms", limits.p95_latency_ms, value(treatment.latency_ms_p95), treatment.requests, enough, true);
    check("max_denial_rate", limits.max_denial_rate, value(treatment.denial_rate), treatment.requests, enough, true);
    check("max_error_rate", limits.max_error_rate, value(treatment.error_rate), treatment.requests, enough, true);
    check(
        "min_feedback_accuracy",
        limits.min_feedback_accuracy,
        value(treatment.feedback_accuracy),
        treatment.labelled,
        treatment.labelled >= limits.min_samples,
        false,
    );
    checks
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::experiment::{Guardrails, Unit};

    fn experiment(metric: Metric, guardrails: Guardrails) -> ExperimentDocument {
        ExperimentDocument {
            id: "e".into(),
            purpose: "p".into(),
            system: "s".into(),
            control: ArtifactRef { id: "s".into(), version: 1 },
            treatment: ArtifactRef { id: "s".into(), version: 2 },
            treatment_percent: 50.0,
            assignment_unit: Unit::Request,
            primary_metric: metric,
            alpha: 0.05,
            mixture_sd: None,
            guardrails,
        }
    }

    fn run() -> ExperimentRunRow {
        ExperimentRunRow {
            experiment_id: "e".into(),
            experiment_version: 1,
            system_id: "s".into(),
            state: "running".into(),
            treatment_ppm: 500_000,
            assignment_key: String::new(),
            start_index: 0,
            started_by: "bob".into(),
            started_at: String::new(),
            ended_at: None,
            end_reason: None,
        }
    }

    fn observation(index: u64, treatment: bool, escalated: bool, errored: bool) -> Observation {
        Observation {
            index,
            treatment,
            outcome: if errored { "denied".into() } else { "served".into() },
            escalated,
            contained: !escalated && !errored,
            errored,
            latency_ms: 100.0 + index as f64,
            cost: if escalated { 2.0 } else { 1.0 },
            correct: None,
        }
    }

    #[test]
    fn only_entries_of_this_experiment_that_were_not_excluded_are_observed() {
        let reference = ArtifactRef { id: "e".into(), version: 1 };
        let entry = |id: &str, arm: &str, excluded: Value| {
            json!({"experiment": {"id": id, "version": 1, "arm": arm, "excluded": excluded}, "outcome": "served", "escalated": false,
                   "attempts": [{"tier": 0, "cost": 0.5, "latency_ms": 12.0, "error": null}]})
        };
        let labels = BTreeMap::from([(3, (9, true))]);
        let Part::Observed(seen) = Observation::from_entry(3, &entry("e", "treatment", Value::Null), &reference, &labels) else {
            panic!("an entry of the experiment is observed")
        };
        assert!(seen.treatment && seen.contained && !seen.errored && seen.correct == Some(true));
        assert_eq!((seen.cost, seen.latency_ms), (0.5, 12.0));
        assert_eq!(Observation::from_entry(4, &entry("other", "treatment", Value::Null), &reference, &labels), Part::Outside);
        let other_version = ArtifactRef { id: "e".into(), version: 2 };
        assert_eq!(Observation::from_entry(5, &entry("e", "control", json!("kept on control")), &other_version, &labels), Part::Outside);
        assert_eq!(Observation::from_entry(5, &entry("e", "control", json!("kept on control")), &reference, &labels), Part::Excluded);
    }

    #[test]
    fn a_breached_guardrail_is_judged_only_after_min_samples() {
        let limits = Guardrails { min_samples: 10, max_error_rate: Some(0.2), ..Guardrails::default() };
        let failing: Vec<Observation> = (0..8).map(|i| observation(i, true, false, true)).collect();
        let early = summarise(&run(), "d", &experiment(Metric::EscalationRate, limits.clone()), &failing, 0, 9);
        assert_eq!(early.guardrails[0].observed, None);
        assert!(early.breaches().is_empty());
        let failing: Vec<Observation> = (0..12).map(|i| observation(i, true, false, true)).collect();
        let late = summarise(&run(), "d", &experiment(Metric::EscalationRate, limits), &failing, 0, 13);
        assert_eq!(late.breaches().len(), 1);
        assert_eq!(late.breaches()[0].observed, Some(1.0));
    }

    #[test]
    fn the_verdict_follows_the_metric_direction() {
        // Treatment escalates every request, control none: worse on escalation rate.
        let observations: Vec<Observation> = (0..400).map(|i| observation(i, i % 2 == 0, i % 2 == 0, false)).collect();
        let report = summarise(
            &run(),
            "d",
            &experiment(Metric::EscalationRate, Guardrails { min_samples: 20, ..Guardrails::default() }),
            &observations,
            0,
            401,
        );
        assert_eq!(report.verdict.decision, "treatment_worse");
        assert_eq!(report.treatment_arm.escalation_rate.unwrap().value, 1.0);
        assert_eq!(report.control_arm.containment.unwrap().value, 1.0);
        let few = summarise(
            &run(),
            "d",
            &experiment(Metric::EscalationRate, Guardrails { min_samples: 500, ..Guardrails::default() }),
            &observations,
            0,
            401,
        );
        assert_eq!(few.verdict.decision, "collecting");
    }
}
