//! Live A/B experiments and canaries of system versions: the governed document, sticky
//! assignment of units to arms, and the report and guardrails computed from the ledger.

pub mod guard;
pub mod report;
pub mod stats;

use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{registry::ArtifactRef, routing::SystemRoute};

/// The experiment document (schema `model-cards/schema/experiment.schema.json`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ExperimentDocument {
    pub id: String,
    pub purpose: String,
    pub system: String,
    pub control: ArtifactRef,
    pub treatment: ArtifactRef,
    pub treatment_percent: f64,
    pub assignment_unit: Unit,
    pub primary_metric: Metric,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    pub mixture_sd: Option<f64>,
    pub guardrails: Guardrails,
}

fn default_alpha() -> f64 {
    0.05
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    User,
    Caller,
    Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    FeedbackAccuracy,
    CostPerRequest,
    EscalationRate,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::FeedbackAccuracy => "feedback_accuracy",
            Metric::CostPerRequest => "cost_per_request",
            Metric::EscalationRate => "escalation_rate",
        }
    }

    /// Whether a larger value is the better one.
    pub fn higher_is_better(self) -> bool {
        self == Metric::FeedbackAccuracy
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
pub struct Guardrails {
    pub min_samples: u64,
    pub p95_latency_ms: Option<f64>,
    pub max_denial_rate: Option<f64>,
    pub max_error_rate: Option<f64>,
    pub min_feedback_accuracy: Option<f64>,
}

/// Checks what the schema cannot: both arms are versions of `system`, and differ.
pub fn check_document(document: &Value) -> Result<ExperimentDocument, String> {
    let experiment: ExperimentDocument = serde_json::from_value(document.clone()).map_err(|e| format!("experiment: {e}"))?;
    for (field, arm) in [("control", &experiment.control), ("treatment", &experiment.treatment)] {
        if arm.id != experiment.system {
            return Err(format!("/{field}: {arm} is not a version of system {:?}", experiment.system));
        }
    }
    if experiment.control == experiment.treatment {
        return Err(format!("/treatment: {} is the control itself; an experiment compares two versions", experiment.treatment));
    }
    Ok(experiment)
}

/// Shares are kept in parts per million: a percentage with four decimals, compared exactly.
pub fn percent_to_ppm(percent: f64) -> u32 {
    (percent * 10_000.0).round().clamp(0.0, 1_000_000.0) as u32
}

pub fn ppm_to_percent(ppm: u32) -> f64 {
    f64::from(ppm) / 10_000.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    Control,
    Treatment,
}

impl Arm {
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Control => "control",
            Arm::Treatment => "treatment",
        }
    }
}

/// A unit's position in [0, 1 000 000): HMAC-SHA256 under the run's secret key of the
/// experiment id and the unit. Keyed, so that nobody outside can choose a unit to land in an
/// arm; positions are fixed for the run, so raising the share only adds units to the
/// treatment, and every replica (and a restarted one) assigns alike.
pub fn bucket(key: &[u8], experiment_id: &str, unit: &str) -> u32 {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(experiment_id.as_bytes());
    mac.update(&[0]);
    mac.update(unit.as_bytes());
    let tag = mac.finalize().into_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&tag[..8]);
    (u64::from_be_bytes(first) % 1_000_000) as u32
}

/// The arm of a unit at share `treatment_ppm`.
pub fn assign(key: &[u8], experiment_id: &str, unit: &str, treatment_ppm: u32) -> Arm {
    if bucket(key, experiment_id, unit) < treatment_ppm { Arm::Treatment } else { Arm::Control }
}

/// A running experiment as the router serves it: the treatment loaded, the share and key of
/// the run.
#[derive(Debug)]
pub struct ExperimentRoute {
    pub reference: ArtifactRef,
    pub digest: String,
    pub document: ExperimentDocument,
    pub treatment: Arc<SystemRoute>,
    pub treatment_ppm: u32,
    pub key: Vec<u8>,
}

/// Where one request of a running experiment went, and why.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The arm the unit hashes to.
    pub assigned: Arm,
    /// The arm that served it: `assigned`, unless the request is excluded.
    pub arm: Arm,
    /// Why the request is served by control and left out of the comparison, if it is.
    pub excluded: Option<String>,
}

impl ExperimentRoute {
    /// The unit of a request, and its arm. A request with no unit (no `user` field where the
    /// unit is the user) stays on control, outside the comparison.
    pub fn assign(&self, caller: &str, user: Option<&str>, request_id: &str) -> Assignment {
        let unit = match self.document.assignment_unit {
            Unit::User => user,
            Unit::Caller => Some(caller),
            Unit::Request => Some(request_id),
        };
        match unit {
            None => Assignment { assigned: Arm::Control, arm: Arm::Control, excluded: Some("the request names no user".into()) },
            Some(unit) => {
                let arm = assign(&self.key, &self.reference.id, unit, self.treatment_ppm);
                Assignment { assigned: arm, arm, excluded: None }
            }
        }
    }

    /// What the policy sees as `input.experiment`.
    pub fn policy_input(&self, assignment: &Assignment) -> Value {
        json!({
            "id": self.reference.id,
            "version": self.reference.version,
            "arm": assignment.assigned.as_str(),
            "treatment_percent": ppm_to_percent(self.treatment_ppm),
            "unit": self.document.assignment_unit,
        })
    }

    /// What the ledger records of the request's part in the experiment.
    pub fn ledger_record(&self, assignment: &Assignment) -> Value {
        json!({
            "id": self.reference.id,
            "version": self.reference.version,
            "digest": self.digest,
            "arm": assignment.arm.as_str(),
            "assigned_arm": assignment.assigned.as_str(),
            "excluded": assignment.excluded,
            "treatment_percent": ppm_to_percent(self.treatment_ppm),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_splits_units_as_configured_and_raising_the_share_only_adds_units() {
        let key = b"a fixed test key of thirty-two b";
        for percent in [1.0, 5.0, 20.0, 50.0] {
            let ppm = percent_to_ppm(percent);
            let treated = (0..100_000).filter(|i| assign(key, "exp", &format!("user-{i}"), ppm) == Arm::Treatment).count();
            let share = treated as f64 / 1000.0;
            // Binomial standard deviation at 50% over 100k units is 0.16 points.
            assert!((share - percent).abs() < 0.6, "{percent}%: got {share}%");
        }
        for i in 0..20_000 {
            let unit = format!("user-{i}");
            if assign(key, "exp", &unit, percent_to_ppm(5.0)) == Arm::Treatment {
                assert_eq!(assign(key, "exp", &unit, percent_to_ppm(20.0)), Arm::Treatment, "{unit} left the treatment when the share rose");
            }
        }
    }

    #[test]
    fn assignment_depends_on_the_key_and_the_experiment() {
        let ppm = percent_to_ppm(50.0);
        let arms = |key: &[u8], id: &str| (0..2000).map(|i| assign(key, id, &format!("u{i}"), ppm)).collect::<Vec<_>>();
        let base = arms(b"key one", "exp");
        assert_eq!(base, arms(b"key one", "exp"), "deterministic");
        let differing = |other: Vec<Arm>| base.iter().zip(&other).filter(|(a, b)| a != b).count();
        // Independent assignments differ on about half the units.
        assert!((800..1200).contains(&differing(arms(b"key two", "exp"))));
        assert!((800..1200).contains(&differing(arms(b"key one", "other"))));
    }

    #[test]
    fn both_arms_must_be_distinct_versions_of_the_system() {
        let document = |control: &str, treatment: &str| {
            json!({
                "kind": "experiment", "id": "e", "purpose": "p", "system": "sys", "control": control, "treatment": treatment,
                "treatment_percent": 5, "assignment_unit": "user", "primary_metric": "escalation_rate", "guardrails": {"min_samples": 10}
            })
        };
        assert!(check_document(&document("sys@1", "sys@2")).is_ok());
        assert!(check_document(&document("sys@1", "other@2")).unwrap_err().starts_with("/treatment:"));
        assert!(check_document(&document("sys@2", "sys@2")).unwrap_err().contains("is the control itself"));
    }
}
