//! `tiergate calibrate --fit-confidence`: a confidence model per tier from the calibration runs'
//! labelled answers, the P(correct) threshold that meets the target, and how a threshold chosen
//! on this workload transfers to another one.
//!
//! Every figure is held out: P(correct) of an answer comes from a model fitted on the other
//! folds (`crate::confidence::fit`), and the transfer workload is never fitted on at all.

use serde::Serialize;
use serde_json::{Value, json};

use super::{
    Observation, WorkloadItem,
    calibrate::{SweepPoint, recommend, sweep_scores},
};
use crate::{
    confidence::{
        Feature, Predictor,
        fit::{self, DEFAULT_FEATURES, Fitted, Sample, Scores},
    },
    registry::{CardError, CardKind, parse_card},
};

/// Kept-answer accuracy the transfer check chooses its threshold for.
pub const TRANSFER_KEPT_ACCURACY: f64 = 0.8;

/// One tier's fitted model and its held-out figures.
#[derive(Debug, Clone, Serialize)]
pub struct TierConfidence {
    pub tier: usize,
    pub tier_name: String,
    pub model: String,
    /// The confidence-model document, ready to store or ship.
    pub document: Value,
    pub method: &'static str,
    pub held_out: Scores,
    /// Both candidate methods' held-out scores (the lower log loss was chosen).
    pub candidates: Vec<fit::Candidate>,
    /// AUROC of the mean token logprob alone on the same answers, for comparison.
    pub mean_logprob_auroc: Option<f64>,
}

/// A threshold chosen on one workload for a kept-answer accuracy, applied to another.
#[derive(Debug, Clone, Serialize)]
pub struct Transfer {
    pub signal: &'static str,
    pub threshold: f64,
    pub target_kept_accuracy: f64,
    /// On the fitting workload (held-out P for `p_correct`).
    pub kept_share: f64,
    pub kept_accuracy: f64,
    /// On the other workload.
    pub transfer_kept_share: f64,
    pub transfer_kept_accuracy: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TransferReport {
    pub workload: String,
    pub workload_sha256: String,
    pub items: usize,
    /// Accuracy of the first tier alone there.
    pub first_tier_accuracy: f64,
    /// The shipped first-tier model's P(correct) on it (never fitted on it).
    pub p_correct_auroc: Option<f64>,
    pub p_correct_ece: f64,
    pub mean_logprob_auroc: Option<f64>,
    pub p_correct: Option<Transfer>,
    pub mean_logprob: Option<Transfer>,
}

/// A tier no model was fitted for, and why (too few answers of a class, a weak signal).
#[derive(Debug, Clone, Serialize)]
pub struct RefusedTier {
    pub tier: usize,
    pub tier_name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfidenceReport {
    pub tiers: Vec<TierConfidence>,
    pub refused: Vec<RefusedTier>,
    /// The system's sweep over the first tier's held-out P(correct).
    pub sweep: Vec<SweepPoint>,
    pub recommended: Option<SweepPoint>,
    /// Policy data applying the recommendation as `min_p_correct_by_tier`.
    pub policy_data: Option<Value>,
    pub transfer: Option<TransferReport>,
    /// The first tier's held-out P(correct) per observation of its run.
    #[serde(skip)]
    pub first_tier_held_out: Vec<Option<f64>>,
}

/// The labelled answers of one run that carry signals.
pub fn samples(observations: &[Observation]) -> Vec<Sample> {
    observations.iter().filter_map(|o| Some(Sample { signals: o.first_signals.clone()?, correct: o.correct? })).collect()
}

/// Fits the first and last tiers' models from their single-tier runs and sweeps the first
/// tier's held-out P(correct) for the target accuracy.
pub fn fit_tiers(
    card: &Value,
    system: &str,
    (workload, workload_sha256): (&str, &str),
    small: &[Observation],
    large: &[Observation],
    target_accuracy: f64,
) -> anyhow::Result<ConfidenceReport> {
    let tiers = card["tiers"].as_array().map_or(0, Vec::len);
    let self_check = card.pointer("/escalation/self_check").and_then(Value::as_bool).unwrap_or(false);
    let mut features = DEFAULT_FEATURES.to_vec();
    if self_check {
        features.push(Feature::SelfCheckYes);
    }
    let mut fitted_tiers = Vec::new();
    let mut refused = Vec::new();
    let mut first_held_out = None;
    for (tier, observations) in [(0, small), (tiers - 1, large)] {
        let samples = samples(observations);
        let tier_name = card["tiers"][tier]["name"].as_str().unwrap_or_default().to_owned();
        let fitted = match fit::fit(&samples, &features) {
            Ok(fitted) => fitted,
            Err(error) => {
                refused.push(RefusedTier { tier, tier_name, reason: error.to_string() });
                continue;
            }
        };
        let model = card["tiers"][tier]["model"].as_str().unwrap_or_default().to_owned();
        let document = document(system, &tier_name, &model, &fitted, workload, workload_sha256)?;
        let labels: Vec<bool> = samples.iter().map(|s| s.correct).collect();
        let logprobs: Vec<f64> = samples.iter().map(|s| s.signals.mean_logprob).collect();
        if tier == 0 {
            first_held_out = Some(held_out_by_item(observations, &fitted));
        }
        fitted_tiers.push(TierConfidence {
            tier,
            tier_name,
            model,
            document,
            method: fitted.candidates[fitted.chosen].method,
            held_out: fitted.held_out().clone(),
            candidates: fitted.candidates.clone(),
            mean_logprob_auroc: fit::auroc(&logprobs, &labels),
        });
    }
    let scores = first_held_out.unwrap_or_default();
    let sweep = if scores.is_empty() { Vec::new() } else { sweep_scores(small, large, &scores, (0.0, 1.0)) };
    let recommended = recommend(&sweep, target_accuracy);
    let policy_data = recommended.as_ref().map(|point| {
        let mut by_tier = vec![Value::Null; tiers];
        by_tier[0] = json!((point.threshold * 1000.0).round() / 1000.0);
        json!({"systems": {system: {"thresholds": {"min_p_correct_by_tier": by_tier}}}})
    });
    Ok(ConfidenceReport { tiers: fitted_tiers, refused, sweep, recommended, policy_data, transfer: None, first_tier_held_out: scores })
}

/// Held-out P(correct) per observation (`None` for those without signals or label).
fn held_out_by_item(observations: &[Observation], fitted: &Fitted) -> Vec<Option<f64>> {
    let mut predictions = fitted.held_out_predictions.iter();
    observations.iter().map(|o| if o.first_signals.is_some() && o.correct.is_some() { predictions.next().copied() } else { None }).collect()
}

/// The confidence-model document for one tier, checked against its schema and rules.
fn document(system: &str, tier_name: &str, model: &str, fitted: &Fitted, workload: &str, workload_sha256: &str) -> anyhow::Result<Value> {
    let document = fit::document(
        &crate::confidence::default_id(system, tier_name),
        &format!("P(correct) of the {tier_name:?} tier's answers ({model}) in system {system}, from its token signals"),
        model,
        fitted,
        fit::fit_report(fitted, workload, workload_sha256, "tiergate calibrate --fit-confidence"),
    );
    // The same checks a submission gets: what calibrate stores could be submitted as is.
    match parse_card(&serde_json::to_string(&document)?) {
        Ok(card) if card.kind == CardKind::ConfidenceModel => Ok(document),
        Ok(_) => anyhow::bail!("internal: the fitted document is not a confidence model"),
        Err(CardError::Schema(violations)) => {
            anyhow::bail!("the fitted model violates its schema: {}", violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        }
        Err(error) => anyhow::bail!("the fitted model is refused: {error}"),
    }
}

/// A threshold on `scores` chosen for the target kept accuracy on the fitting workload, and
/// what it keeps on the other.
fn transfer(signal: &'static str, fitting: (&[f64], &[bool]), other: (&[f64], &[bool])) -> Option<Transfer> {
    let (threshold, kept_share, kept_accuracy) = fit::threshold_for_kept_accuracy(fitting.0, fitting.1, TRANSFER_KEPT_ACCURACY)?;
    let (transfer_kept_share, transfer_kept_accuracy) = fit::kept_at(other.0, other.1, threshold);
    Some(Transfer {
        signal,
        threshold,
        target_kept_accuracy: TRANSFER_KEPT_ACCURACY,
        kept_share,
        kept_accuracy,
        transfer_kept_share,
        transfer_kept_accuracy,
    })
}

/// Applies the first tier's fitted model, and the thresholds chosen on the fitting workload,
/// to the first tier's answers on another workload.
pub fn transfer_report(
    report: &ConfidenceReport,
    small: &[Observation],
    (workload, workload_sha256, items): (&str, &str, &[WorkloadItem]),
    other: &[Observation],
) -> anyhow::Result<TransferReport> {
    let first = report.tiers.first().filter(|t| t.tier == 0).ok_or_else(|| anyhow::anyhow!("no first-tier confidence model to transfer"))?;
    let predictor: Predictor = serde_json::from_value(first.document["predictor"].clone())?;
    let fitting = samples(small);
    let fitting_labels: Vec<bool> = fitting.iter().map(|s| s.correct).collect();
    // `samples` and the held-out predictions skip the same observations (no signals or label).
    let fitting_p: Vec<f64> = report.first_tier_held_out.iter().flatten().copied().collect();
    let fitting_logprob: Vec<f64> = fitting.iter().map(|s| s.signals.mean_logprob).collect();
    let samples = samples(other);
    let labels: Vec<bool> = samples.iter().map(|s| s.correct).collect();
    let p: Vec<f64> = samples.iter().map(|s| predictor.predict(&s.signals).unwrap_or(0.0)).collect();
    let logprob: Vec<f64> = samples.iter().map(|s| s.signals.mean_logprob).collect();
    let scores = fit::scores(&p, &labels);
    Ok(TransferReport {
        workload: workload.to_owned(),
        workload_sha256: workload_sha256.to_owned(),
        items: items.len(),
        first_tier_accuracy: labels.iter().filter(|l| **l).count() as f64 / other.len().max(1) as f64,
        p_correct_auroc: fit::auroc(&p, &labels),
        p_correct_ece: scores.ece,
        mean_logprob_auroc: fit::auroc(&logprob, &labels),
        p_correct: transfer("p_correct", (&fitting_p, &fitting_labels), (&p, &labels)),
        mean_logprob: transfer("mean_logprob", (&fitting_logprob, &fitting_labels), (&logprob, &labels)),
    })
}

/// The report as Markdown.
pub fn markdown(report: &ConfidenceReport) -> String {
    let mut out = String::from("## Confidence models (P(correct)), figures on held-out answers\n\n");
    out.push_str("| tier | model | method | AUROC | ECE | Brier | selective accuracy, top 20% | mean logprob alone: AUROC |\n|---|---|---|---|---|---|---|---|\n");
    for tier in &report.tiers {
        out.push_str(&format!(
            "| {} {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.1}% | {} |\n",
            tier.tier,
            tier.tier_name,
            tier.model,
            tier.method,
            tier.held_out.auroc,
            tier.held_out.ece,
            tier.held_out.brier,
            tier.held_out.selective_accuracy_at_20pct * 100.0,
            tier.mean_logprob_auroc.map_or_else(|| "–".into(), |a| format!("{a:.3}"))
        ));
    }
    out.push_str("\nCandidates (five-fold held-out):\n\n| tier | method | AUROC | ECE | log loss |\n|---|---|---|---|---|\n");
    for tier in &report.tiers {
        for candidate in &tier.candidates {
            out.push_str(&format!(
                "| {} | {} | {:.3} | {:.3} | {:.4} |\n",
                tier.tier, candidate.method, candidate.held_out.auroc, candidate.held_out.ece, candidate.held_out.log_loss
            ));
        }
    }
    for refused in &report.refused {
        out.push_str(&format!("\nNo model for tier {} {}: {}.\n", refused.tier, refused.tier_name, refused.reason));
    }
    match &report.recommended {
        Some(point) => out.push_str(&format!(
            "\n**Recommended first-tier `min_p_correct`: {:.3}** (escalation rate {:.1}%, accuracy {:.1}%, cost per request {:.6}).\n",
            point.threshold,
            point.escalation_rate * 100.0,
            point.accuracy * 100.0,
            point.cost_per_request
        )),
        None => out.push_str("\n**No P(correct) threshold meets the target.**\n"),
    }
    if let Some(transfer) = &report.transfer {
        out.push_str(&format!(
            "\n### Transfer to `{}` ({} items, first tier {:.1}% accurate; never fitted on)\n\nP(correct) there: AUROC {}, ECE {:.3}; mean logprob alone: AUROC {}.\n\n| signal | threshold chosen for {:.0}% kept accuracy here | kept here | accuracy here | kept there | accuracy there |\n|---|---|---|---|---|---|\n",
            transfer.workload,
            transfer.items,
            transfer.first_tier_accuracy * 100.0,
            transfer.p_correct_auroc.map_or_else(|| "–".into(), |a| format!("{a:.3}")),
            transfer.p_correct_ece,
            transfer.mean_logprob_auroc.map_or_else(|| "–".into(), |a| format!("{a:.3}")),
            TRANSFER_KEPT_ACCURACY * 100.0
        ));
        for t in [&transfer.p_correct, &transfer.mean_logprob].into_iter().flatten() {
            out.push_str(&format!(
                "| {} | {:.3} | {:.1}% | {:.1}% | {:.1}% | {} |\n",
                t.signal,
                t.threshold,
                t.kept_share * 100.0,
                t.kept_accuracy * 100.0,
                t.transfer_kept_share * 100.0,
                t.transfer_kept_accuracy.map_or_else(|| "– (nothing kept)".into(), |a| format!("{:.1}%", a * 100.0))
            ));
        }
    }
    out
}
