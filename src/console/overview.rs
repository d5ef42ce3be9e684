//! The overview's figures for one system over a window, from the ledger's per-minute and
//! per-hour rollups (so every replica shows the same numbers, and a window of any size reads a
//! bounded number of rows), and its timeline as server-rendered SVG.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use crate::{
    evidence::chart::escape,
    ledger::rollup::{Histogram, Rollup, Tally},
};

/// Latency percentiles (nearest rank, read from the rollups' histograms: within 1%), milliseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram) -> Option<Percentiles> {
        Some(Percentiles { p50: histogram.percentile(50.0)?, p95: histogram.percentile(95.0)?, p99: histogram.percentile(99.0)? })
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

impl From<Tally> for Accuracy {
    fn from(tally: Tally) -> Accuracy {
        Accuracy { correct: tally.correct, judged: tally.judged }
    }
}

impl Accuracy {
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
    pub time: DateTime<Utc>,
    pub event: String,
    pub detail: String,
}

impl GovernanceEvent {
    /// The event a governance entry records, or `None` for another kind of entry.
    pub fn of(index: u64, entry: &serde_json::Value) -> Option<GovernanceEvent> {
        use serde_json::Value;
        if entry.get("type").and_then(Value::as_str) != Some("governance") {
            return None;
        }
        let time = DateTime::parse_from_rfc3339(entry.get("time").and_then(Value::as_str)?).ok()?.with_timezone(&Utc);
        Some(GovernanceEvent {
            index,
            time,
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
        })
    }

    pub fn time_text(&self) -> String {
        self.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }
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
    /// The figures of a window: its buckets' rollups merged, and its governance events.
    pub fn of(buckets: &[(DateTime<Utc>, Rollup)], events: Vec<GovernanceEvent>) -> Figures {
        let mut total = Rollup::default();
        buckets.iter().for_each(|(_, rollup)| total.merge(rollup));
        Figures {
            requests: total.requests,
            served: total.served,
            held: total.held,
            denied: total.denied,
            other: total.other,
            escalated: total.escalated,
            served_by_first_tier: total.served_by_first_tier,
            end_to_end: Percentiles::of(&total.end_to_end_ms),
            tiers: total
                .tiers
                .into_iter()
                .map(|(tier, rollup)| TierFigures {
                    tier,
                    name: rollup.name,
                    attempts: rollup.attempts,
                    accepted: rollup.accepted,
                    latency: Percentiles::of(&rollup.latency_ms),
                    prompt_tokens: rollup.prompt_tokens,
                    completion_tokens: rollup.completion_tokens,
                    cost: rollup.cost,
                })
                .collect(),
            kept_accuracy: total.kept_feedback.into(),
            escalated_accuracy: total.escalated_feedback.into(),
            review_accuracy: total.reviews.into(),
            events,
        }
    }

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

/// Requests per bucket (escalated ones stacked on top) with governance events as marked lines:
/// the window's timeline, one bar per `span_s`-second bucket from `since` to `until`, as
/// self-contained SVG.
pub fn timeline(buckets: &[(DateTime<Utc>, Rollup)], events: &[GovernanceEvent], since: DateTime<Utc>, until: DateTime<Utc>, span_s: i64) -> String {
    const WIDTH: f64 = 720.0;
    const HEIGHT: f64 = 140.0;
    let span_ms = (until - since).num_milliseconds().max(1) as f64;
    let bars = ((until - since).num_seconds() as f64 / span_s as f64).ceil().max(1.0) as usize;
    let position = |time: DateTime<Utc>| ((time - since).num_milliseconds() as f64 / span_ms).clamp(0.0, 0.999_999);
    let mut kept = vec![0u64; bars];
    let mut escalated = vec![0u64; bars];
    for (start, rollup) in buckets {
        let bar = ((*start - since).num_seconds().max(0) / span_s) as usize;
        if bar < bars {
            kept[bar] += rollup.requests - rollup.escalated;
            escalated[bar] += rollup.escalated;
        }
    }
    let max = (0..bars).map(|b| kept[b] + escalated[b]).max().unwrap_or(0).max(1) as f64;
    let (left, top, bottom) = (40.0, 10.0, HEIGHT - 24.0);
    let bar = (WIDTH - left - 10.0) / bars as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="timeline" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="Requests over the window; escalated requests in orange; governance events as lines">"#
    );
    let _ = write!(svg, r##"<line x1="{left}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="#999"/>"##, WIDTH - 10.0);
    let _ = write!(svg, r##"<text x="{}" y="{}" font-size="10" text-anchor="end">{}</text>"##, left - 4.0, top + 8.0, max as u64);
    let _ = write!(svg, r##"<text x="{}" y="{}" font-size="10" text-anchor="end">0</text>"##, left - 4.0, bottom);
    let gap = if bar > 3.0 { 1.0 } else { 0.0 };
    for b in 0..bars {
        let x = left + b as f64 * bar;
        let kept_height = kept[b] as f64 / max * (bottom - top);
        let escalated_height = escalated[b] as f64 / max * (bottom - top);
        if kept[b] > 0 {
            let _ = write!(
                svg,
                r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{kept_height:.1}" fill="#2b6cb0"><title>{} kept by the first tier</title></rect>"##,
                bottom - kept_height,
                bar - gap,
                kept[b]
            );
        }
        if escalated[b] > 0 {
            let _ = write!(
                svg,
                r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{escalated_height:.1}" fill="#c05621"><title>{} escalated</title></rect>"##,
                bottom - kept_height - escalated_height,
                bar - gap,
                escalated[b]
            );
        }
    }
    for event in events {
        let x = left + position(event.time) * (WIDTH - left - 10.0);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#6b46c1" stroke-dasharray="3 2"><title>{}</title></line>"##,
            escape(&event.event)
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
    use serde_json::{Value, json};

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

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

    fn rollup(entries: &[Value]) -> Rollup {
        let mut rollup = Rollup::default();
        entries.iter().for_each(|e| rollup.add(e));
        rollup
    }

    #[test]
    fn figures_count_outcomes_escalation_and_containment_across_buckets() {
        let first =
            rollup(&[answer(false, 0, &[100.0]), answer(false, 0, &[200.0]), json!({"type": "feedback", "correct": true, "escalated": false})]);
        let second = rollup(&[
            answer(true, 1, &[100.0, 900.0]),
            json!({"type": "inference", "outcome": "denied", "escalated": false, "served_tier": null, "attempts": []}),
            json!({"type": "feedback", "correct": false, "escalated": true}),
            json!({"type": "review", "correct": true}),
        ]);
        let event = GovernanceEvent::of(
            7,
            &json!({"type": "governance", "time": "2026-12-01T00:30:00Z", "event": "activated", "artifact": {"kind": "system_card", "id": "s", "version": 2}}),
        )
        .unwrap();
        let figures = Figures::of(&[(at("2026-12-01T00:00:00Z"), first), (at("2026-12-01T01:00:00Z"), second)], vec![event]);
        assert_eq!((figures.requests, figures.served, figures.denied, figures.escalated), (4, 3, 1, 1));
        assert_eq!(figures.escalation_rate(), "25.0%");
        assert_eq!(figures.containment(), "66.7%");
        assert_eq!(figures.tiers.len(), 2);
        assert_eq!((figures.tiers[0].attempts, figures.tiers[0].accepted, figures.tiers[1].attempts), (3, 2, 1));
        assert_eq!(figures.tiers[0].prompt_tokens, 30);
        assert!((figures.total_cost() - 2.0).abs() < 1e-9);
        let end_to_end = figures.end_to_end.unwrap();
        assert!((end_to_end.p50 / 200.0 - 1.0).abs() <= 0.01 && (end_to_end.p99 / 1000.0 - 1.0).abs() <= 0.01, "{end_to_end:?}");
        assert_eq!((figures.kept_accuracy.correct, figures.kept_accuracy.judged), (1, 1));
        assert_eq!((figures.escalated_accuracy.correct, figures.escalated_accuracy.judged), (0, 1));
        assert_eq!(figures.review_accuracy.judged, 1);
        assert_eq!(figures.events[0].detail, "system_card s@2");
        assert_eq!(GovernanceEvent::of(8, &answer(false, 0, &[1.0])).map(|e| e.index), None);
    }

    #[test]
    fn the_timeline_draws_a_bar_per_bucket_marks_events_and_escapes_their_names() {
        let since = at("2026-12-01T00:00:00Z");
        let until = since + chrono::Duration::hours(1);
        let buckets = vec![(at("2026-12-01T00:10:00Z"), rollup(&[answer(true, 1, &[1.0, 2.0]), answer(false, 0, &[1.0])]))];
        let events = vec![GovernanceEvent { index: 3, time: at("2026-12-01T00:30:00Z"), event: "<drift>".into(), detail: String::new() }];
        let svg = timeline(&buckets, &events, since, until, 60);
        assert!(svg.contains("1 escalated") && svg.contains("1 kept by the first tier"), "{svg}");
        assert!(svg.contains("&lt;drift&gt;") && !svg.contains("<drift>"), "{svg}");
        // The bar of minute 10 of 60 starts a sixth of the way along the axis.
        assert!(svg.contains(r#"<rect x="151.7""#), "{svg}");
    }
}
