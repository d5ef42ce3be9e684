//! `tiergate compare`: the same workload small-first (the system as configured) and
//! large-first (every request straight to the last tier, same policy), measured side by side.

use serde::Serialize;

use super::{Observation, ScratchGateway, WorkloadItem, mean, percentile, single_tier_variant, system_card};
use crate::config::Settings;

#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Accuracy over the served answers whose item carries an expectation.
#[derive(Debug, Clone, Serialize)]
pub struct Accuracy {
    pub overall: Option<f64>,
    pub scored: usize,
    /// Answers served by the first tier.
    pub served_small: Option<f64>,
    pub served_small_scored: usize,
    /// Answers served after at least one escalation.
    pub escalated: Option<f64>,
    pub escalated_scored: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeSummary {
    pub mode: String,
    /// The system card that ran (`id`; the large-first variant has its own).
    pub system: String,
    pub requests: usize,
    pub served: usize,
    pub held_for_review: usize,
    pub refused: usize,
    pub escalation_rate: f64,
    /// Share of requests served by the first tier.
    pub containment_rate: f64,
    pub latency_ms: LatencySummary,
    pub throughput_rps: f64,
    pub cost_per_request: f64,
    pub model_ms_per_request: f64,
    pub accuracy: Accuracy,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub system: String,
    pub workload: String,
    pub items: usize,
    pub concurrency: usize,
    pub small_first: ModeSummary,
    pub large_first: ModeSummary,
    /// Per-request observations, small-first then large-first, for anyone re-analysing.
    pub observations: Observations,
}

#[derive(Debug, Clone, Serialize)]
pub struct Observations {
    pub small_first: Vec<Observation>,
    pub large_first: Vec<Observation>,
}

/// Runs `items` through `system` small-first and large-first.
pub async fn compare(settings: &Settings, system: &str, workload: &str, items: &[WorkloadItem], concurrency: usize) -> anyhow::Result<CompareReport> {
    let card = system_card(settings, system)?;
    let last = card["tiers"].as_array().map_or(0, Vec::len).saturating_sub(1);
    let large_first = single_tier_variant(&card, last, "large-first", false)?;
    let large_id = large_first["id"].as_str().unwrap_or_default().to_owned();
    let gateway = ScratchGateway::start(settings, &[large_first]).await?;
    let (small, small_s) = gateway.run(system, items, concurrency).await?;
    let (large, large_s) = gateway.run(&large_id, items, concurrency).await?;
    Ok(CompareReport {
        system: system.to_owned(),
        workload: workload.to_owned(),
        items: items.len(),
        concurrency,
        small_first: summarize("small-first", system, &small, small_s, 0),
        large_first: summarize("large-first", &large_id, &large, large_s, last),
        observations: Observations { small_first: small, large_first: large },
    })
}

/// `first_tier` is the system's tier the mode's own tier 0 stands for: containment and
/// "served by the first tier" count only answers from the system's real first tier.
pub fn summarize(mode: &str, system: &str, observations: &[Observation], seconds: f64, first_tier: usize) -> ModeSummary {
    let n = observations.len().max(1) as f64;
    let served: Vec<&Observation> = observations.iter().filter(|o| o.tier_served.is_some()).collect();
    let mut latencies: Vec<f64> = observations.iter().map(|o| o.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let rate = |hits: &[&Observation]| {
        let scored: Vec<bool> = hits.iter().filter_map(|o| o.correct).collect();
        let accuracy = (!scored.is_empty()).then(|| scored.iter().filter(|c| **c).count() as f64 / scored.len() as f64);
        (accuracy, scored.len())
    };
    let small: Vec<&Observation> = served.iter().copied().filter(|o| o.tier_served.map(|t| t + first_tier) == Some(0)).collect();
    let escalated: Vec<&Observation> = served.iter().copied().filter(|o| o.escalated).collect();
    let (overall, scored) = rate(&served);
    let (served_small, served_small_scored) = rate(&small);
    let (escalated_accuracy, escalated_scored) = rate(&escalated);
    ModeSummary {
        mode: mode.to_owned(),
        system: system.to_owned(),
        requests: observations.len(),
        served: served.len(),
        held_for_review: observations.iter().filter(|o| o.outcome == "held_for_review").count(),
        refused: observations.iter().filter(|o| o.status >= 400).count(),
        escalation_rate: observations.iter().filter(|o| o.escalated).count() as f64 / n,
        containment_rate: small.len() as f64 / n,
        latency_ms: LatencySummary {
            mean: mean(latencies.iter().copied()).unwrap_or(0.0),
            p50: percentile(&latencies, 50.0),
            p95: percentile(&latencies, 95.0),
            p99: percentile(&latencies, 99.0),
        },
        throughput_rps: observations.len() as f64 / seconds.max(1e-9),
        cost_per_request: mean(observations.iter().map(|o| o.cost)).unwrap_or(0.0),
        model_ms_per_request: mean(observations.iter().map(|o| o.model_ms)).unwrap_or(0.0),
        accuracy: Accuracy { overall, scored, served_small, served_small_scored, escalated: escalated_accuracy, escalated_scored },
    }
}

fn share(value: Option<f64>, of: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{:.1}% (of {of})", v * 100.0))
}

/// The comparison as a Markdown table.
pub fn markdown(report: &CompareReport) -> String {
    let (s, l) = (&report.small_first, &report.large_first);
    let rows: Vec<(&str, String, String)> = vec![
        ("system card", format!("`{}`", s.system), format!("`{}`", l.system)),
        ("requests", s.requests.to_string(), l.requests.to_string()),
        (
            "served / held for review / refused",
            format!("{} / {} / {}", s.served, s.held_for_review, s.refused),
            format!("{} / {} / {}", l.served, l.held_for_review, l.refused),
        ),
        ("escalation rate", format!("{:.1}%", s.escalation_rate * 100.0), format!("{:.1}%", l.escalation_rate * 100.0)),
        ("containment rate (served by the first tier)", format!("{:.1}%", s.containment_rate * 100.0), format!("{:.1}%", l.containment_rate * 100.0)),
        ("latency mean (ms)", format!("{:.0}", s.latency_ms.mean), format!("{:.0}", l.latency_ms.mean)),
        (
            "latency p50 / p95 / p99 (ms)",
            format!("{:.0} / {:.0} / {:.0}", s.latency_ms.p50, s.latency_ms.p95, s.latency_ms.p99),
            format!("{:.0} / {:.0} / {:.0}", l.latency_ms.p50, l.latency_ms.p95, l.latency_ms.p99),
        ),
        ("throughput (requests/s)", format!("{:.2}", s.throughput_rps), format!("{:.2}", l.throughput_rps)),
        ("cost per request (model card prices)", format!("{:.6}", s.cost_per_request), format!("{:.6}", l.cost_per_request)),
        ("model time per request (ms)", format!("{:.0}", s.model_ms_per_request), format!("{:.0}", l.model_ms_per_request)),
        ("accuracy, served answers", share(s.accuracy.overall, s.accuracy.scored), share(l.accuracy.overall, l.accuracy.scored)),
        (
            "accuracy, served by the first tier",
            share(s.accuracy.served_small, s.accuracy.served_small_scored),
            share(l.accuracy.served_small, l.accuracy.served_small_scored),
        ),
        ("accuracy, escalated", share(s.accuracy.escalated, s.accuracy.escalated_scored), share(l.accuracy.escalated, l.accuracy.escalated_scored)),
    ];
    let mut out = format!(
        "## `{}`: small-first vs large-first\n\nWorkload `{}`, {} requests per mode, {} at a time.\n\n| | small-first | large-first |\n|---|---|---|\n",
        report.system, report.workload, report.items, report.concurrency
    );
    for (label, small, large) in rows {
        out.push_str(&format!("| {label} | {small} | {large} |\n"));
    }
    out
}

/// The chart: latency distributions and cost per request, side by side (SVG).
pub fn chart(report: &CompareReport) -> String {
    super::chart::compare_chart(report)
}
