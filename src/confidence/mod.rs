//! Confidence models: a tier's signals turned into P(correct), the estimated probability that
//! its answer is right; the governed artifact, its checks, and (in `fit`) how one is fitted.
//!
//! A mean token log-probability threshold does not carry from one workload to another, and
//! means nothing to the people who approve it. A confidence model maps an attempt's signals to
//! a probability, fitted on labelled answers of that tier's model and judged on answers it was
//! not fitted on; a policy thresholds on that probability. The model is a registry artifact
//! (`kind: confidence-model`, schema `model-cards/schema/confidence-model.schema.json`) with the
//! usual four-eyes approval; a system card cites a version per tier.

pub mod fit;
pub mod labels;
pub mod monitor;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{inference::Signals, registry::ArtifactRef};

/// Fewer labelled answers than this cannot support a fit: with five folds each held-out fold
/// would hold under ten answers, and a logistic fit on a handful of features needs about ten
/// answers of the rarer class per feature (Peduzzi et al., 1996) to be stable.
pub const MIN_LABELLED_ITEMS: usize = 50;
/// Each class (right, wrong) needs at least this many answers: AUROC and calibration measured on
/// fewer say little.
pub const MIN_PER_CLASS: usize = 10;
/// A model whose held-out AUROC is below this ranks right answers above wrong ones barely
/// better than chance (0.5); approving it would only look like governance.
pub const AUROC_FLOOR: f64 = 0.6;

/// One signal a confidence model can use, as named in its document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    MeanLogprob,
    MinLogprob,
    LowProbShare,
    MeanMargin,
    MinMargin,
    MeanEntropy,
    /// ln(1 + completion tokens).
    LogCompletionTokens,
    /// 1 when generation stopped at `max_tokens`, else 0.
    FinishedByLength,
    /// Only produced when the system card sets `escalation.self_check`; 0.5 when the reply
    /// was neither yes nor no.
    SelfCheckYes,
}

impl Feature {
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::MeanLogprob => "mean_logprob",
            Feature::MinLogprob => "min_logprob",
            Feature::LowProbShare => "low_prob_share",
            Feature::MeanMargin => "mean_margin",
            Feature::MinMargin => "min_margin",
            Feature::MeanEntropy => "mean_entropy",
            Feature::LogCompletionTokens => "log_completion_tokens",
            Feature::FinishedByLength => "finished_by_length",
            Feature::SelfCheckYes => "self_check_yes",
        }
    }

    /// The feature's value for one attempt; `None` when the tier did not produce it.
    pub fn value(self, signals: &Signals) -> Option<f64> {
        let value = match self {
            Feature::MeanLogprob => Some(signals.mean_logprob),
            Feature::MinLogprob => Some(signals.min_logprob),
            Feature::LowProbShare => Some(signals.low_prob_share),
            Feature::MeanMargin => signals.mean_margin,
            Feature::MinMargin => signals.min_margin,
            Feature::MeanEntropy => signals.mean_entropy,
            Feature::LogCompletionTokens => Some((1.0 + signals.completion_tokens as f64).ln()),
            Feature::FinishedByLength => Some(if signals.finish_reason == "length" { 1.0 } else { 0.0 }),
            // A self-check whose reply began with neither yes nor no says nothing either way:
            // 0.5, rather than leaving the answer without a P(correct) (which fails closed).
            // Only systems that ask for the self-check may cite a model using it.
            Feature::SelfCheckYes => Some(signals.self_check_yes.unwrap_or(0.5)),
        };
        // An empty answer's logprobs are reported as -1e9: clamp so that one such answer
        // cannot dominate a linear model's standardisation.
        value.filter(|v| v.is_finite()).map(|v| v.max(-50.0))
    }

    /// Whether a tier produces this feature: every one but the self-check, which only a
    /// system with `escalation.self_check` asks for.
    pub fn produced(self, self_check: bool) -> bool {
        self != Feature::SelfCheckYes || self_check
    }
}

/// How the probability is computed from the signals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Predictor {
    /// P = 1 / (1 + e^-(intercept + Σ coefficient · (value − mean) / scale)).
    Logistic { intercept: f64, features: Vec<LogisticTerm> },
    /// P = the isotonic (non-decreasing) step fit of one feature, interpolated linearly
    /// between the points and held flat beyond them.
    Isotonic { feature: Feature, points: Vec<[f64; 2]> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticTerm {
    pub name: Feature,
    pub mean: f64,
    pub scale: f64,
    pub coefficient: f64,
}

impl Predictor {
    pub fn features(&self) -> Vec<Feature> {
        match self {
            Predictor::Logistic { features, .. } => features.iter().map(|t| t.name).collect(),
            Predictor::Isotonic { feature, .. } => vec![*feature],
        }
    }

    /// P(correct) from feature values in the order of [`Predictor::features`].
    pub fn predict_values(&self, values: &[f64]) -> f64 {
        match self {
            Predictor::Logistic { intercept, features } => {
                let z = intercept + features.iter().zip(values).map(|(t, v)| t.coefficient * (v - t.mean) / t.scale).sum::<f64>();
                sigmoid(z)
            }
            Predictor::Isotonic { points, .. } => interpolate(points, values.first().copied().unwrap_or(f64::NEG_INFINITY)),
        }
    }

    /// P(correct) for an attempt; `None` when a feature it needs is missing.
    pub fn predict(&self, signals: &Signals) -> Option<f64> {
        let values: Option<Vec<f64>> = self.features().into_iter().map(|f| f.value(signals)).collect();
        values.map(|v| self.predict_values(&v))
    }
}

pub(crate) fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 { 1.0 / (1.0 + (-z).exp()) } else { z.exp() / (1.0 + z.exp()) }
}

fn interpolate(points: &[[f64; 2]], x: f64) -> f64 {
    let (Some(first), Some(last)) = (points.first(), points.last()) else { return 0.5 };
    if x <= first[0] {
        return first[1];
    }
    if x >= last[0] {
        return last[1];
    }
    let right = points.partition_point(|p| p[0] <= x);
    let (a, b) = (points[right - 1], points[right]);
    if b[0] > a[0] { a[1] + (b[1] - a[1]) * (x - a[0]) / (b[0] - a[0]) } else { b[1] }
}

/// The parts of a confidence-model document the gateway acts on (the fit report is evidence).
#[derive(Debug, Clone, Deserialize)]
pub struct ConfidenceModelDocument {
    pub id: String,
    /// The model card version whose answers it was fitted on.
    pub tier_model: ArtifactRef,
    pub predictor: Predictor,
}

/// A confidence model version loaded for serving.
#[derive(Debug, Clone)]
pub struct LoadedConfidenceModel {
    pub reference: ArtifactRef,
    pub digest: String,
    pub tier_model: ArtifactRef,
    pub predictor: Predictor,
}

/// The id `tiergate calibrate` and a ledger refit give a tier's model unless told otherwise:
/// `<system>-<tier name>`, the name made a slug.
pub fn default_id(system: &str, tier_name: &str) -> String {
    let slug: String = tier_name.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    format!("{system}-{slug}")
}

impl LoadedConfidenceModel {
    /// How an attempt cites the model (accept gate input, ledger entry).
    pub fn citation(&self) -> Value {
        serde_json::json!({"id": self.reference.id, "version": self.reference.version, "digest": self.digest})
    }

    pub fn from_document(reference: ArtifactRef, digest: String, document: &Value) -> anyhow::Result<LoadedConfidenceModel> {
        let parsed: ConfidenceModelDocument =
            serde_json::from_value(document.clone()).map_err(|e| anyhow::anyhow!("confidence model {reference}: {e}"))?;
        Ok(LoadedConfidenceModel { reference, digest, tier_model: parsed.tier_model, predictor: parsed.predictor })
    }
}

/// Checks a schema-valid confidence-model document beyond what JSON Schema can say; each
/// problem names its JSON path.
pub fn check_document(document: &Value) -> Result<(), String> {
    let mut problems = Vec::new();
    match document.pointer("/predictor/method").and_then(Value::as_str) {
        Some("logistic") => {
            let terms = document.pointer("/predictor/features").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            let mut seen = std::collections::HashSet::new();
            for (i, term) in terms.iter().enumerate() {
                let name = term.get("name").and_then(Value::as_str).unwrap_or_default();
                if !seen.insert(name) {
                    problems.push(format!("/predictor/features/{i}/name: {name:?} appears twice"));
                }
                if !term.get("scale").and_then(Value::as_f64).is_some_and(|s| s > 0.0) {
                    problems.push(format!("/predictor/features/{i}/scale: must be greater than 0"));
                }
            }
        }
        Some("isotonic") => {
            let points = document.pointer("/predictor/points").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            let pairs: Vec<(f64, f64)> = points.iter().filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?))).collect();
            for (i, pair) in pairs.windows(2).enumerate() {
                if pair[1].0 < pair[0].0 {
                    problems.push(format!("/predictor/points/{}: x values must not decrease", i + 1));
                }
                if pair[1].1 < pair[0].1 {
                    problems.push(format!("/predictor/points/{}: probabilities must not decrease (isotonic)", i + 1));
                }
            }
        }
        _ => {}
    }
    let count = |pointer: &str| document.pointer(pointer).and_then(Value::as_u64).unwrap_or(0) as usize;
    let (items, right, wrong) = (count("/fit/items"), count("/fit/right"), count("/fit/wrong"));
    if items < MIN_LABELLED_ITEMS {
        problems.push(format!(
            "/fit/items: fitted on {items} labelled answers; at least {MIN_LABELLED_ITEMS} are needed (five held-out folds of ten or more)"
        ));
    }
    if right + wrong != items {
        problems.push(format!("/fit/items: {items} is not right ({right}) + wrong ({wrong})"));
    }
    if right < MIN_PER_CLASS || wrong < MIN_PER_CLASS {
        problems.push(format!("/fit: {right} right and {wrong} wrong answers; each needs at least {MIN_PER_CLASS}"));
    }
    if let Some(auroc) = document.pointer("/fit/held_out/auroc").and_then(Value::as_f64)
        && auroc < AUROC_FLOOR
    {
        problems.push(format!(
            "/fit/held_out/auroc: {auroc:.3} is below the floor {AUROC_FLOOR}: the signals barely separate right answers from wrong ones"
        ));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// Why a tier cannot use a confidence model: it was fitted on another model's answers, or it
/// needs a feature the tier does not produce. `pointer` is the system card's path to it.
pub fn tier_mismatch(pointer: &str, model: &ConfidenceModelDocument, tier_model: &ArtifactRef, self_check: bool) -> Option<String> {
    if &model.tier_model != tier_model {
        return Some(format!(
            "{pointer}: confidence model {} was fitted on answers of {}, but this tier runs {tier_model}",
            model.id, model.tier_model
        ));
    }
    let missing: Vec<&str> = model.predictor.features().into_iter().filter(|f| !f.produced(self_check)).map(Feature::as_str).collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{pointer}: confidence model {} uses {}, which this system does not produce (set escalation.self_check: true)",
            model.id,
            missing.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals(mean_logprob: f64) -> Signals {
        Signals {
            mean_logprob,
            min_logprob: mean_logprob * 2.0,
            low_prob_share: 0.0,
            completion_tokens: 4,
            finish_reason: "stop".into(),
            self_check_yes: None,
            mean_margin: Some(1.0),
            min_margin: Some(0.5),
            mean_entropy: Some(0.3),
            p_correct: None,
        }
    }

    #[test]
    fn a_logistic_model_standardises_each_feature_before_weighing_it() {
        let model = Predictor::Logistic {
            intercept: 0.5,
            features: vec![
                LogisticTerm { name: Feature::MeanLogprob, mean: -1.0, scale: 0.5, coefficient: 2.0 },
                LogisticTerm { name: Feature::MeanMargin, mean: 1.0, scale: 1.0, coefficient: -3.0 },
            ],
        };
        // z = 0.5 + 2 * (-0.5 + 1) / 0.5 + (-3) * 0 = 2.5
        assert!((model.predict(&signals(-0.5)).unwrap() - 1.0 / (1.0 + (-2.5f64).exp())).abs() < 1e-12);
        let without_margin = Signals { mean_margin: None, ..signals(-0.5) };
        assert_eq!(model.predict(&without_margin), None, "a missing feature gives no probability");
    }

    #[test]
    fn an_isotonic_model_interpolates_between_its_points_and_is_flat_beyond_them() {
        let model = Predictor::Isotonic { feature: Feature::MeanLogprob, points: vec![[-2.0, 0.1], [-1.0, 0.3], [0.0, 0.9]] };
        assert_eq!(model.predict(&signals(-3.0)), Some(0.1));
        assert!((model.predict(&signals(-1.5)).unwrap() - 0.2).abs() < 1e-12);
        assert!((model.predict(&signals(-0.5)).unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(model.predict(&signals(1.0)), Some(0.9));
    }

    fn document(items: u64, right: u64, auroc: f64) -> Value {
        serde_json::json!({
            "kind": "confidence-model", "id": "m", "tier_model": "x@1",
            "predictor": {"method": "logistic", "intercept": 0.0, "features": [{"name": "mean_logprob", "mean": 0.0, "scale": 1.0, "coefficient": 1.0}]},
            "fit": {"items": items, "right": right, "wrong": items - right, "held_out": {"auroc": auroc}}
        })
    }

    #[test]
    fn too_few_answers_and_a_weak_held_out_auroc_are_refused_with_their_paths() {
        assert_eq!(check_document(&document(120, 40, 0.8)), Ok(()));
        let few = check_document(&document(30, 15, 0.8)).unwrap_err();
        assert!(few.contains("/fit/items: fitted on 30 labelled answers; at least 50"), "{few}");
        let one_sided = check_document(&document(100, 95, 0.8)).unwrap_err();
        assert!(one_sided.contains("95 right and 5 wrong"), "{one_sided}");
        let weak = check_document(&document(120, 40, 0.55)).unwrap_err();
        assert!(weak.contains("/fit/held_out/auroc: 0.550 is below the floor 0.6"), "{weak}");
    }

    #[test]
    fn a_tier_refuses_a_model_fitted_on_another_model_or_needing_the_self_check() {
        let model = |features: Vec<LogisticTerm>| ConfidenceModelDocument {
            id: "m".into(),
            tier_model: ArtifactRef::parse("small@1").unwrap(),
            predictor: Predictor::Logistic { intercept: 0.0, features },
        };
        let term = |name| LogisticTerm { name, mean: 0.0, scale: 1.0, coefficient: 1.0 };
        let plain = model(vec![term(Feature::MeanLogprob)]);
        let small = ArtifactRef::parse("small@1").unwrap();
        assert_eq!(tier_mismatch("/tiers/0/confidence_model", &plain, &small, false), None);
        let other = tier_mismatch("/tiers/0/confidence_model", &plain, &ArtifactRef::parse("large@1").unwrap(), false).unwrap();
        assert!(other.contains("fitted on answers of small@1, but this tier runs large@1"), "{other}");
        let checked = model(vec![term(Feature::MeanLogprob), term(Feature::SelfCheckYes)]);
        let needs = tier_mismatch("/tiers/1/confidence_model", &checked, &small, false).unwrap();
        assert!(needs.starts_with("/tiers/1/confidence_model: confidence model m uses self_check_yes"), "{needs}");
        assert_eq!(tier_mismatch("/tiers/1/confidence_model", &checked, &small, true), None);
    }
}
