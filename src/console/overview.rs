//! The overview's figures for one system over a window, computed from its ledger entries (so
//! every replica shows the same numbers), and its timeline as server-rendered SVG.

use std::{collections::BTreeMap, fmt::Write};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::evidence::{chart::escape, percentile};

/// Latency percentiles (nearest rank), milliseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Percentiles {
    fn of(values: &mut [f64]) -> Option<Percentiles> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        Some(Percentiles { p50: percentile(values, 50.0), p95: percentile(values, 95.0), p99: percentile(values, 99.0) })
    }
}

#[derive(Debug, Clone, Default)]
pub struct TierFigures {
    pub tier: u64,
    pub name: String,
    pub attempts: u64,
    /// Attempts whose answer the policy kept on this tier.
    pub accepted: u64,
    pub latency: Option<Percentiles>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: f64,
}

/// Accuracy from feedback and review verdicts: correct out of judged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accuracy {
    pub correct: u64,
    pub judged: u64,
}

impl Accuracy {
    fn add(&mut self, correct: bool) {
        self.judged += 1;
        self.correct += u64::from(correct);
    }

    pub fn text(&self) -> String {
        if self.judged == 0 {
            "no feedback yet".into()
        } else {
            format!("{} ({} of {})", percent(self.correct, self.judged), self.correct, self.judged)
        }
    }
}

#[derive(Debug, Clone)]
pub struct GovernanceEvent {
    pub index: u64,
    pub time: String,
    pub event: String,
    pub detail: String,
}

#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub requests: u64,
    pub served: u64,
    pub held: u64,
    pub denied: u64,
    /// Any other outcome (failed, unavailable …).
    pub other: u64,
    pub escalated: u64,
    /// Served answers that came from the first tier.
    pub served_by_first_tier: u64,
    pub end_to_end: Option<Percentiles>,
    pub tiers: Vec<TierFigures>,
    /// Feedback on answers the first tier kept, and on escalated ones.
    pub kept_accuracy: Accuracy,
    pub escalated_accuracy: Accuracy,
    /// Reviewers' verdicts on held answers (approved = correct).
    pub review_accuracy: Accuracy,
    pub events: Vec<GovernanceEvent>,
}

impl Figures {
    pub fn escalation_rate(&self) -> String {
        percent(self.escalated, self.requests)
    }

    /// Share of served answers the first tier kept.
    pub fn containment(&self) -> String {
        percent(self.served_by_first_tier, self.served)
    }

    pub fn total_cost(&self) -> f64 {
        self.tiers.iter().map(|t| t.cost).sum()
    }
}

pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 { "–".into() } else { format!("{:.1}%", 100.0 * part as f64 / whole as f64) }
}

/// Adds up one system's entries (inference, feedback, review and governance, any order).
pub fn figures(entries: &[Value]) -> Figures {
    let mut figures = Figures::default();
    let mut end_to_end = Vec::new();
    let mut tiers: BTreeMap<u64, (TierFigures, Vec<f64>)> = BTreeMap::new();
    for entry in entries {
        match entry.get("type").and_then(Value::as_str).unwrap_or_default() {
            "inference" => {
                figures.requests += 1;
                match entry.get("outcome").and_then(Value::as_str).unwrap_or_default() {
                    "served" => figures.served += 1,
                    "held_for_review" => figures.held += 1,
                    "denied" => figures.denied += 1,
                    _ => figures.other += 1,
                }
                let escalated = entry.get("escalated").and_then(Value::as_bool).unwrap_or(false);
                figures.escalated += u64::from(escalated);
                let served_tier = entry.get("served_tier").and_then(Value::as_u64);
                if served_tier == Some(0) && entry.get("outcome").and_then(Value::as_str) == Some("served") {
                    figures.served_by_first_tier += 1;
                }
                let attempts = entry.get("attempts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
                let mut total_ms = 0.0;
                for attempt in attempts {
                    let tier = attempt.get("tier").and_then(Value::as_u64).unwrap_or_default();
                    let (figures, latencies) = tiers.entry(tier).or_insert_with(|| {
                        let name = attempt.get("tier_name").and_then(Value::as_str).unwrap_or_default().to_owned();
                        (TierFigures { tier, name, ..Default::default() }, Vec::new())
                    });
                    figures.attempts += 1;
                    if attempt.pointer("/accept/decision/action").and_then(Value::as_str) == Some("accept") {
                        figures.accepted += 1;
                    }
                    let latency = attempt.get("latency_ms").and_then(Value::as_f64).unwrap_or_default();
                    latencies.push(latency);
                    total_ms += latency;
                    figures.prompt_tokens += attempt.pointer("/tokens/prompt").and_then(Value::as_u64).unwrap_or_default();
                    figures.completion_tokens += attempt.pointer("/tokens/completion").and_then(Value::as_u64).unwrap_or_default();
                    figures.cost += attempt.get("cost").and_then(Value::as_f64).unwrap_or_default();
                }
                if !attempts.is_empty() {
                    end_to_end.push(total_ms);
                }
            }
            "feedback" => {
                let correct = entry.get("correct").and_then(Value::as_bool).unwrap_or(false);
                if entry.get("escalated").and_then(Value::as_bool).unwrap_or(false) {
                    figures.escalated_accuracy.add(correct);
                } else {
                    figures.kept_accuracy.add(correct);
                }
            }
            "review" => figures.review_accuracy.add(entry.get("correct").and_then(Value::as_bool).unwrap_or(false)),
            "governance" => figures.events.push(GovernanceEvent {
                index: entry.get("index").and_then(Value::as_u64).unwrap_or_default(),
                time: entry.get("time").and_then(Value::as_str).unwrap_or_default().to_owned(),
                event: entry.get("event").and_then(Value::as_str).unwrap_or("governance").to_owned(),
                detail: entry
                    .get("artifact")
                    .map(|a| {
                        format!(
                            "{} {}@{}",
                            a.get("kind").and_then(Value::as_str).unwrap_or_default(),
                            a.get("id").and_then(Value::as_str).unwrap_or_default(),
                            a.get("version").map(ToString::to_string).unwrap_or_default()
                        )
                    })
                    .unwrap_or_default(),
            }),
            _ => {}
        }
    }
    figures.end_to_end = Percentiles::of(&mut end_to_end);
    figures.tiers = tiers
        .into_values()
        .map(|(mut tier, mut latencies)| {
            tier.latency = Percentiles::of(&mut latencies);
            tier
        })
        .collect();
    figures
}

/// Requests per time bucket (escalated ones stacked on top) with governance events as marked
/// lines: the window's timeline, as self-contained SVG.
pub fn timeline(entries: &[Value], since: DateTime<Utc>, until: DateTime<Utc>) -> String {
    const BUCKETS: usize = 48;
    const WIDTH: f64 = 720.0;
    const HEIGHT: f64 = 140.0;
    let span = (until - since).num_milliseconds().max(1) as f64;
    let position = |time: &str| -> Option<f64> {
        let time = DateTime::parse_from_rfc3339(time).ok()?.with_timezone(&Utc);
        Some(((time - since).num_milliseconds() as f64 / span).clamp(0.0, 0.999_999))
    };
    let mut kept = [0u64; BUCKETS];
    let mut escalated = [0u64; BUCKETS];
    let mut events = Vec::new();
    for entry in entries {
        let Some(at) = entry.get("time").and_then(Value::as_str).and_then(position) else { continue };
        match entry.get("type").and_then(Value::as_str) {
            Some("inference") => {
                let bucket = (at * BUCKETS as f64) as usize;
                if entry.get("escalated").and_then(Value::as_bool).unwrap_or(false) {
                    escalated[bucket] += 1;
                } else {
                    kept[bucket] += 1;
                }
            }
            Some("governance") => events.push((at, entry.get("event").and_then(Value::as_str).unwrap_or("governance").to_owned())),
            _ => {}
        }
    }
    let max = (0..BUCKETS).map(|b| kept[b] + escalated[b]).max().unwrap_or(0).max(1) as f64;
    let (left, top, bottom) = (40.0, 10.0, HEIGHT - 24.0);
    let bar = (WIDTH - left - 10.0) / BUCKETS as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="timeline" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="Requests over the window; escalated requests in orange; governance events as lines">"#
    );
    let _ = write!(svg, r##"<line x1="{left}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="#999"/>"##, WIDTH - 10.0);
    let _ = write!(svg, r##"<text x="{}" y="{}" font-size="10" text-anchor="end">{}</text>"##, left - 4.0, top + 8.0, max as u64);
    let _ = write!(svg, r##"<text x="{}" y="{}" font-size="10" text-anchor="end">0</text>"##, left - 4.0, bottom);
    for b in 0..BUCKETS {
        let x = left + b as f64 * bar;
        let kept_height = kept[b] as f64 / max * (bottom - top);
        let escalated_height = escalated[b] as f64 / max * (bottom - top);
        if kept[b] > 0 {
            let _ = write!(
                svg,
                r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{kept_height:.1}" fill="#2b6cb0"><title>{} kept by the first tier</title></rect>"##,
                bottom - kept_height,
                bar - 1.0,
                kept[b]
            );
        }
        if escalated[b] > 0 {
            let _ = write!(
                svg,
                r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{escalated_height:.1}" fill="#c05621"><title>{} escalated</title></rect>"##,
                bottom - kept_height - escalated_height,
                bar - 1.0,
                escalated[b]
            );
        }
    }
    for (at, event) in events {
        let x = left + at * (WIDTH - left - 10.0);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#6b46c1" stroke-dasharray="3 2"><title>{}</title></line>"##,
            escape(&event)
        );
    }
    let _ = write!(svg, r##"<text x="{left}" y="{}" font-size="10">{}</text>"##, HEIGHT - 6.0, since.format("%Y-%m-%d %H:%M UTC"));
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" font-size="10" text-anchor="end">{}</text>"##,
        WIDTH - 10.0,
        HEIGHT - 6.0,
        until.format("%Y-%m-%d %H:%M UTC")
    );
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn answer(escalated: bool, served_tier: u64, latencies: &[f64]) -> Value {
        let attempts: Vec<Value> = latencies
            .iter()
            .enumerate()
            .map(|(tier, ms)| {
                let action = if tier as u64 == served_tier { "accept" } else { "escalate" };
                json!({"tier": tier, "tier_name": format!("t{tier}"), "latency_ms": ms, "tokens": {"prompt": 10, "completion": 5}, "cost": 0.5, "accept": {"decision": {"action": action}}})
            })
            .collect();
        json!({"type": "inference", "outcome": "served", "escalated": escalated, "served_tier": served_tier, "attempts": attempts})
    }

    #[test]
    fn figures_count_outcomes_escalation_and_containment() {
        let entries = vec![
            answer(false, 0, &[100.0]),
            answer(false, 0, &[200.0]),
            answer(true, 1, &[100.0, 900.0]),
            json!({"type": "inference", "outcome": "denied", "escalated": false, "served_tier": null, "attempts": []}),
            json!({"type": "feedback", "correct": true, "escalated": false}),
            json!({"type": "feedback", "correct": false, "escalated": true}),
            json!({"type": "review", "correct": true}),
            json!({"type": "governance", "index": 7, "time": "t", "event": "activated", "artifact": {"kind": "system_card", "id": "s", "version": 2}}),
        ];
        let figures = figures(&entries);
        assert_eq!((figures.requests, figures.served, figures.denied, figures.escalated), (4, 3, 1, 1));
        assert_eq!(figures.escalation_rate(), "25.0%");
        assert_eq!(figures.containment(), "66.7%");
        assert_eq!(figures.tiers.len(), 2);
        assert_eq!((figures.tiers[0].attempts, figures.tiers[0].accepted, figures.tiers[1].attempts), (3, 2, 1));
        assert_eq!(figures.tiers[0].prompt_tokens, 30);
        assert!((figures.total_cost() - 2.0).abs() < 1e-9);
        assert_eq!(figures.end_to_end, Some(Percentiles { p50: 200.0, p95: 1000.0, p99: 1000.0 }));
        assert_eq!((figures.kept_accuracy.correct, figures.kept_accuracy.judged), (1, 1));
        assert_eq!((figures.escalated_accuracy.correct, figures.escalated_accuracy.judged), (0, 1));
        assert_eq!(figures.review_accuracy.judged, 1);
        assert_eq!(figures.events[0].detail, "system_card s@2");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(Percentiles::of(&mut values), Some(Percentiles { p50: 50.0, p95: 95.0, p99: 99.0 }));
        assert_eq!(Percentiles::of(&mut []), None);
    }

    #[test]
    fn the_timeline_marks_events_and_escapes_their_names() {
        let since = DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let until = since + chrono::Duration::hours(1);
        let entries = vec![
            json!({"type": "inference", "time": "2026-12-01T00:10:00Z", "escalated": true}),
            json!({"type": "governance", "time": "2026-12-01T00:30:00Z", "event": "<drift>"}),
        ];
        let svg = timeline(&entries, since, until);
        assert!(svg.contains("1 escalated"), "{svg}");
        assert!(svg.contains("&lt;drift&gt;") && !svg.contains("<drift>"), "{svg}");
    }
}
