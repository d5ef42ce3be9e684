//! `tiergate calibrate`: sweeps the first tier's confidence threshold over a labelled workload
//! and recommends the cheapest one that meets a target accuracy.
//!
//! Every item is answered once by the first tier alone and once by the last tier alone (each
//! a single-tier variant of the system that accepts every answer), sequentially, with the
//! card's own decoding. For a threshold t the system would keep the first tier's answer when
//! its mean token log-probability is at least t and escalate otherwise, so its accuracy and
//! escalation rate at t follow from those two runs without running the workload again. With
//! greedy decoding the answers and signals are deterministic, so applying the recommended
//! threshold reproduces the reported escalation rate on the same workload.

use serde::Serialize;
use serde_json::Value;

use super::{Observation, ScratchGateway, WorkloadItem, single_tier_variant, system_card};
use crate::config::Settings;

/// One point of the sweep (risk–coverage: coverage = 1 − escalation rate).
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    /// `min_mean_logprob` for the first tier: answers with a mean token log-probability at or
    /// above it are accepted there.
    pub threshold: f64,
    pub escalation_rate: f64,
    /// Share of requests answered by the first tier.
    pub coverage: f64,
    /// Accuracy of the first tier's accepted answers (selective accuracy); `None` if none.
    pub accepted_accuracy: Option<f64>,
    /// Accuracy over the whole workload with escalated items answered by the last tier.
    pub accuracy: f64,
    /// Mean model time per request (first tier always, plus the last tier when escalated).
    pub model_ms_per_request: f64,
    /// Mean cost per request from the model cards' prices, on the same basis.
    pub cost_per_request: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CalibrationReport {
    pub kind: &'static str,
    pub system: String,
    /// The system card version the run used (`id@version` in the scratch registry, seeded from
    /// the card directories) and its digest.
    pub system_digest: String,
    pub workload: String,
    pub workload_sha256: String,
    pub items: usize,
    pub target_accuracy: f64,
    pub signal: &'static str,
    pub first_tier: String,
    pub last_tier: String,
    /// Accuracy of each tier alone on the workload.
    pub first_tier_accuracy: f64,
    pub last_tier_accuracy: f64,
    /// How well each tier's own signal ranks its right answers above its wrong ones: the
    /// probability that a random right answer scores higher than a random wrong one (AUROC;
    /// 0.5 is chance). `None` when the tier's answers are all right or all wrong.
    pub first_tier_auroc: Option<f64>,
    pub last_tier_auroc: Option<f64>,
    pub sweep: Vec<SweepPoint>,
    /// The cheapest threshold meeting the target (lowest escalation rate); `None` when no
    /// threshold does, not even escalating everything.
    pub recommended: Option<SweepPoint>,
    /// The policy data that applies the recommendation (see the README): merge it into a new
    /// version of the system's policy bundle and cite this report's digest.
    pub policy_data: Option<Value>,
    /// With `--fit-confidence`: each tier's confidence model, the P(correct) sweep and, with a
    /// transfer workload, how the thresholds carry over to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<super::confidence::ConfidenceReport>,
}

/// What `--fit-confidence` asks of a calibration run.
#[derive(Debug, Clone, Default)]
pub struct ConfidenceOptions<'a> {
    pub fit: bool,
    /// Another labelled workload (name, sha256, items) to measure the thresholds' transfer on.
    pub transfer: Option<(&'a str, &'a str, &'a [WorkloadItem])>,
}

/// Runs the two single-tier variants of `system` over `items` and sweeps the threshold.
pub async fn calibrate(
    settings: &Settings,
    system: &str,
    workload: &str,
    workload_sha256: &str,
    items: &[WorkloadItem],
    target_accuracy: f64,
    options: &ConfidenceOptions<'_>,
) -> anyhow::Result<CalibrationReport> {
    anyhow::ensure!((0.0..=1.0).contains(&target_accuracy), "--target-accuracy must be between 0 and 1, not {target_accuracy}");
    anyhow::ensure!(items.iter().all(WorkloadItem::is_labelled), "calibration needs a labelled workload: every item needs expected or expected_any");
    let card = system_card(settings, system)?;
    let tiers = card["tiers"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(tiers >= 2, "system {system} has {tiers} tier(s): there is no escalation to calibrate");
    let first = single_tier_variant(&card, 0, "first-tier", true)?;
    let last = single_tier_variant(&card, tiers - 1, "last-tier", true)?;
    let (first_id, last_id) = (first["id"].as_str().unwrap_or_default().to_owned(), last["id"].as_str().unwrap_or_default().to_owned());
    let gateway = ScratchGateway::start(settings, &[first, last]).await?;
    // One at a time: batching changes floating-point sums, and the signal must be repeatable.
    let (small, _) = gateway.run(&first_id, items, 1).await?;
    let (large, _) = gateway.run(&last_id, items, 1).await?;
    let system_digest = gateway.system_digest(system).await?;
    let sweep = sweep(&small, &large);
    let recommended = recommend(&sweep, target_accuracy);
    let policy_data = recommended.as_ref().map(|point| policy_data(&card, system, point.threshold));
    let confidence = if options.fit {
        let mut report = super::confidence::fit_tiers(&card, system, (workload, workload_sha256), &small, &large, target_accuracy)?;
        if let Some((name, sha256, transfer_items)) = options.transfer.filter(|_| report.tiers.first().is_some_and(|t| t.tier == 0)) {
            anyhow::ensure!(transfer_items.iter().all(WorkloadItem::is_labelled), "the transfer workload must be labelled");
            let (other, _) = gateway.run(&first_id, transfer_items, 1).await?;
            report.transfer = Some(super::confidence::transfer_report(&report, &small, (name, sha256, transfer_items), &other)?);
        }
        Some(report)
    } else {
        None
    };
    Ok(CalibrationReport {
        confidence,
        kind: "calibration-report",
        system: system.to_owned(),
        system_digest,
        workload: workload.to_owned(),
        workload_sha256: workload_sha256.to_owned(),
        items: items.len(),
        target_accuracy,
        signal: "mean token log-probability of the first tier's answer",
        first_tier: tier_model(&card, 0),
        last_tier: tier_model(&card, tiers - 1),
        first_tier_accuracy: accuracy_of(&small),
        last_tier_accuracy: accuracy_of(&large),
        first_tier_auroc: auroc(&small),
        last_tier_auroc: auroc(&large),
        sweep,
        recommended,
        policy_data,
    })
}

fn tier_model(card: &Value, tier: usize) -> String {
    format!("{} ({})", card["tiers"][tier]["name"].as_str().unwrap_or_default(), card["tiers"][tier]["model"].as_str().unwrap_or_default())
}

fn accuracy_of(observations: &[Observation]) -> f64 {
    observations.iter().filter(|o| o.correct == Some(true)).count() as f64 / observations.len().max(1) as f64
}

/// AUROC of the mean token log-probability as a predictor of a correct answer (the
/// Mann-Whitney statistic, ties counting half), over the answers that have both.
pub fn auroc(observations: &[Observation]) -> Option<f64> {
    let scored: Vec<(f64, bool)> = observations.iter().filter_map(|o| Some((o.first_mean_logprob.filter(|s| s.is_finite())?, o.correct?))).collect();
    let right: Vec<f64> = scored.iter().filter(|(_, c)| *c).map(|(s, _)| *s).collect();
    let wrong: Vec<f64> = scored.iter().filter(|(_, c)| !*c).map(|(s, _)| *s).collect();
    if right.is_empty() || wrong.is_empty() {
        return None;
    }
    let wins: f64 = right
        .iter()
        .flat_map(|r| {
            wrong.iter().map(move |w| {
                if r > w {
                    1.0
                } else if r == w {
                    0.5
                } else {
                    0.0
                }
            })
        })
        .sum();
    Some(wins / (right.len() * wrong.len()) as f64)
}

/// Every threshold that changes the outcome: one below all signals (escalate nothing), one
/// between each pair of neighbouring distinct signals (midway, so that rounding cannot move
/// an item across it), and one above all (escalate everything).
pub fn sweep(small: &[Observation], large: &[Observation]) -> Vec<SweepPoint> {
    let scores: Vec<Option<f64>> = small.iter().map(|o| o.first_mean_logprob).collect();
    let finite: Vec<f64> = scores.iter().flatten().copied().filter(|s| s.is_finite()).collect();
    let lowest = finite.iter().copied().reduce(f64::min).unwrap_or(0.0);
    let highest = finite.iter().copied().reduce(f64::max).unwrap_or(0.0);
    sweep_scores(small, large, &scores, (round(lowest - 0.5), round(highest.max(-0.5) + 1.0)))
}

/// The sweep over any per-item score of the first tier's answers (`None`: never accepted),
/// with `edges` as the thresholds that accept everything and nothing.
pub fn sweep_scores(small: &[Observation], large: &[Observation], scores: &[Option<f64>], edges: (f64, f64)) -> Vec<SweepPoint> {
    let n = small.len().max(1) as f64;
    let signal = |i: usize| scores.get(i).copied().flatten().unwrap_or(f64::NEG_INFINITY);
    let mut signals: Vec<f64> = (0..small.len()).map(signal).filter(|s| s.is_finite()).collect();
    signals.sort_by(f64::total_cmp);
    signals.dedup();
    let mut thresholds = Vec::new();
    if !signals.is_empty() {
        thresholds.push(edges.0);
        thresholds.extend(signals.windows(2).map(|pair| (pair[0] + pair[1]) / 2.0));
        thresholds.push(edges.1);
    }
    thresholds
        .into_iter()
        .map(|threshold| {
            let (mut correct, mut accepted, mut accepted_correct, mut model_ms, mut cost) = (0usize, 0usize, 0usize, 0.0, 0.0);
            for (i, (s, l)) in small.iter().zip(large).enumerate() {
                model_ms += s.model_ms;
                cost += s.cost;
                if signal(i) >= threshold {
                    accepted += 1;
                    accepted_correct += usize::from(s.correct == Some(true));
                    correct += usize::from(s.correct == Some(true));
                } else {
                    model_ms += l.model_ms;
                    cost += l.cost;
                    correct += usize::from(l.correct == Some(true));
                }
            }
            SweepPoint {
                threshold,
                escalation_rate: (small.len() - accepted) as f64 / n,
                coverage: accepted as f64 / n,
                accepted_accuracy: (accepted > 0).then(|| accepted_correct as f64 / accepted as f64),
                accuracy: correct as f64 / n,
                model_ms_per_request: model_ms / n,
                cost_per_request: cost / n,
            }
        })
        .collect()
}

fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The cheapest point meeting the target: the lowest escalation rate, then the higher accuracy.
pub fn recommend(sweep: &[SweepPoint], target_accuracy: f64) -> Option<SweepPoint> {
    sweep
        .iter()
        .filter(|point| point.accuracy >= target_accuracy)
        .min_by(|a, b| a.escalation_rate.total_cmp(&b.escalation_rate).then(b.accuracy.total_cmp(&a.accuracy)))
        .cloned()
}

/// Policy data that sets the first tier's threshold for this system (read by the shipped
/// policy from `data.systems[<id>].thresholds`), keeping the card's other tiers' thresholds.
fn policy_data(card: &Value, system: &str, threshold: f64) -> Value {
    let tiers = card["tiers"].as_array().map_or(0, Vec::len);
    let common = card.pointer("/escalation/min_mean_logprob").and_then(Value::as_f64);
    let by_tier: Vec<Value> = (0..tiers)
        .map(|tier| {
            if tier == 0 {
                return serde_json::json!(threshold);
            }
            card.pointer(&format!("/escalation/min_mean_logprob_by_tier/{tier}")).cloned().or(common.map(Value::from)).unwrap_or(Value::Null)
        })
        .collect();
    serde_json::json!({"systems": {system: {"thresholds": {"min_mean_logprob_by_tier": by_tier}}}})
}

/// The report as Markdown: the recommendation and the risk–coverage table.
pub fn markdown(report: &CalibrationReport) -> String {
    let mut out = format!(
        "## Calibration of `{}` on `{}` ({} items)\n\nSignal: {}. First tier {}: accuracy {:.1}% alone, signal AUROC {}; last tier {}: {:.1}% alone, signal AUROC {}. Target accuracy {:.1}%.\n\n",
        report.system,
        report.workload,
        report.items,
        report.signal,
        report.first_tier,
        report.first_tier_accuracy * 100.0,
        report.first_tier_auroc.map_or_else(|| "–".into(), |a| format!("{a:.3}")),
        report.last_tier,
        report.last_tier_accuracy * 100.0,
        report.last_tier_auroc.map_or_else(|| "–".into(), |a| format!("{a:.3}")),
        report.target_accuracy * 100.0
    );
    match &report.recommended {
        Some(point) => out.push_str(&format!(
            "**Recommended threshold: {}** (escalation rate {:.1}%, accuracy {:.1}%).\n\n",
            point.threshold,
            point.escalation_rate * 100.0,
            point.accuracy * 100.0
        )),
        None => out.push_str("**No threshold meets the target**, not even escalating every request.\n\n"),
    }
    out.push_str("| threshold | escalation rate | coverage | accuracy of accepted first-tier answers | accuracy | model ms / request | cost / request |\n|---|---|---|---|---|---|---|\n");
    for point in &report.sweep {
        out.push_str(&format!(
            "| {} | {:.1}% | {:.1}% | {} | {:.1}% | {:.0} | {:.6} |\n",
            point.threshold,
            point.escalation_rate * 100.0,
            point.coverage * 100.0,
            point.accepted_accuracy.map_or_else(|| "–".into(), |a| format!("{:.1}%", a * 100.0)),
            point.accuracy * 100.0,
            point.model_ms_per_request,
            point.cost_per_request
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(signal: f64, correct: bool) -> Observation {
        Observation {
            item: String::new(),
            status: 200,
            outcome: "served".into(),
            tier_served: Some(0),
            escalated: false,
            latency_ms: 10.0,
            model_ms: 10.0,
            cost: 0.0,
            answer: Some(String::new()),
            correct: Some(correct),
            first_mean_logprob: Some(signal),
            first_signals: None,
        }
    }

    #[test]
    fn the_sweep_trades_escalation_for_accuracy_and_the_cheapest_point_meeting_the_target_wins() {
        // Confident answers are right, unsure ones wrong; the last tier gets everything right.
        let small = [observation(-0.1, true), observation(-0.2, true), observation(-1.5, false), observation(-2.0, false)];
        let large: Vec<Observation> = small.iter().map(|o| Observation { model_ms: 40.0, correct: Some(true), ..o.clone() }).collect();

        let points = sweep(&small, &large);

        let rates: Vec<f64> = points.iter().map(|p| p.escalation_rate).collect();
        assert_eq!(rates, [0.0, 0.25, 0.5, 0.75, 1.0]);
        let accuracies: Vec<f64> = points.iter().map(|p| p.accuracy).collect();
        assert_eq!(accuracies, [0.5, 0.75, 1.0, 1.0, 1.0]);
        assert_eq!(points[2].model_ms_per_request, 30.0, "10 ms always, plus 40 ms for half");
        let best = recommend(&points, 0.9).unwrap();
        assert_eq!(best.escalation_rate, 0.5);
        assert!((-1.5..-0.2).contains(&best.threshold), "between the last accepted and the first escalated: {}", best.threshold);
        assert!(recommend(&points, 1.01).is_none());
    }

    #[test]
    fn auroc_is_the_share_of_right_wrong_pairs_the_signal_orders_correctly() {
        let separated = [observation(-0.1, true), observation(-0.2, true), observation(-1.5, false)];
        let mixed = [observation(-0.1, true), observation(-0.5, false), observation(-0.9, true), observation(-0.9, false)];

        assert_eq!(auroc(&separated), Some(1.0));
        // Right -0.1 beats both wrong answers; right -0.9 loses to -0.5 and ties -0.9: (2 + 0.5) / 4.
        assert_eq!(auroc(&mixed), Some(0.625));
        assert_eq!(auroc(&separated[..2]), None, "no wrong answer to rank against");
    }
}
