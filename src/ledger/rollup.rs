//! Each system's ledger figures added up per minute and per hour (counts by outcome,
//! escalations, per-tier attempts, tokens, cost and latency histograms, feedback and verdicts),
//! so that an overview of any window reads a bounded number of rows instead of every entry.
//!
//! Rollups are derived data, not part of the hashed record. They are written in the same
//! transaction as the entries they count, so they never disagree with a committed ledger; a
//! ledger that holds entries the rollups have not counted (written before the rollup table
//! existed) is added up by [`catch_up`], which start-up runs and every read runs first.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::AnyConnection;

use crate::store::{LedgerFilter, Store};

/// Bucket widths, seconds: minutes for the last hour, hours for anything longer.
pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 3600;
const SPANS: [i64; 2] = [MINUTE, HOUR];
/// Minute buckets older than this are dropped: nothing reads them.
const MINUTE_BUCKETS_KEPT_S: i64 = 2 * HOUR;

/// Latency histogram buckets grow by 2% each, so a percentile read from the histogram (the
/// bucket's geometric middle) is within 1% of the exact value.
const GROWTH: f64 = 1.02;
/// Bucket of latencies too small to matter (< 1 µs), reported as 0.
const ZERO_BUCKET: i32 = i32::MIN;

/// Counts of values in logarithmic buckets (bucket `i` holds `[GROWTH^i, GROWTH^(i+1))` ms).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Histogram(BTreeMap<i32, u64>);

impl Histogram {
    pub fn add(&mut self, ms: f64) {
        let bucket = if ms.is_finite() && ms >= 0.001 { (ms.ln() / GROWTH.ln()).floor() as i32 } else { ZERO_BUCKET };
        *self.0.entry(bucket).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (bucket, count) in &other.0 {
            *self.0.entry(*bucket).or_default() += count;
        }
    }

    pub fn count(&self) -> u64 {
        self.0.values().sum()
    }

    /// The nearest-rank `p`th percentile (as `evidence::percentile` computes it on the raw
    /// values), to within 1%; `None` when empty.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((p / 100.0) * count as f64).ceil().clamp(1.0, count as f64) as u64;
        let mut seen = 0;
        for (bucket, n) in &self.0 {
            seen += n;
            if seen >= rank {
                return Some(if *bucket == ZERO_BUCKET { 0.0 } else { GROWTH.powf(f64::from(*bucket) + 0.5) });
            }
        }
        None
    }
}

/// Judged answers: how many were right.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub correct: u64,
    pub judged: u64,
}

impl Tally {
    fn add(&mut self, correct: bool) {
        self.judged += 1;
        self.correct += u64::from(correct);
    }

    fn merge(&mut self, other: &Tally) {
        self.judged += other.judged;
        self.correct += other.correct;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TierRollup {
    pub name: String,
    pub attempts: u64,
    /// Attempts whose answer the policy kept on this tier.
    pub accepted: u64,
    pub latency_ms: Histogram,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: f64,
}

/// One system's figures over one bucket (or, merged, over a window).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rollup {
    pub requests: u64,
    pub served: u64,
    pub held: u64,
    pub denied: u64,
    /// Any other outcome (failed, unavailable …).
    pub other: u64,
    pub escalated: u64,
    /// Served answers that came from the first tier.
    pub served_by_first_tier: u64,
    /// Model time of every attempt of a request.
    pub end_to_end_ms: Histogram,
    pub tiers: BTreeMap<u64, TierRollup>,
    /// Feedback on answers the first tier kept, and on escalated ones.
    pub kept_feedback: Tally,
    pub escalated_feedback: Tally,
    /// Reviewers' verdicts on held answers (approved = correct).
    pub reviews: Tally,
}

impl Rollup {
    /// Counts one ledger entry (inference, feedback or review; other types count nothing).
    pub fn add(&mut self, entry: &Value) {
        match entry.get("type").and_then(Value::as_str).unwrap_or_default() {
            "inference" => self.add_inference(entry),
            "feedback" => {
                let correct = entry.get("correct").and_then(Value::as_bool).unwrap_or(false);
                if entry.get("escalated").and_then(Value::as_bool).unwrap_or(false) {
                    self.escalated_feedback.add(correct);
                } else {
                    self.kept_feedback.add(correct);
                }
            }
            "review" => self.reviews.add(entry.get("correct").and_then(Value::as_bool).unwrap_or(false)),
            _ => {}
        }
    }

    fn add_inference(&mut self, entry: &Value) {
        self.requests += 1;
        let outcome = entry.get("outcome").and_then(Value::as_str).unwrap_or_default();
        match outcome {
            "served" => self.served += 1,
            "held_for_review" => self.held += 1,
            "denied" => self.denied += 1,
            _ => self.other += 1,
        }
        self.escalated += u64::from(entry.get("escalated").and_then(Value::as_bool).unwrap_or(false));
        if outcome == "served" && entry.get("served_tier").and_then(Value::as_u64) == Some(0) {
            self.served_by_first_tier += 1;
        }
        let attempts = entry.get("attempts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let mut total_ms = 0.0;
        for attempt in attempts {
            let index = attempt.get("tier").and_then(Value::as_u64).unwrap_or_default();
            let tier = self.tiers.entry(index).or_default();
            if tier.name.is_empty() {
                tier.name = attempt.get("tier_name").and_then(Value::as_str).unwrap_or_default().to_owned();
            }
            tier.attempts += 1;
            if attempt.pointer("/accept/decision/action").and_then(Value::as_str) == Some("accept") {
                tier.accepted += 1;
            }
            let latency = attempt.get("latency_ms").and_then(Value::as_f64).unwrap_or_default();
            tier.latency_ms.add(latency);
            total_ms += latency;
            tier.prompt_tokens += attempt.pointer("/tokens/prompt").and_then(Value::as_u64).unwrap_or_default();
            tier.completion_tokens += attempt.pointer("/tokens/completion").and_then(Value::as_u64).unwrap_or_default();
            tier.cost += attempt.get("cost").and_then(Value::as_f64).unwrap_or_default();
        }
        if !attempts.is_empty() {
            self.end_to_end_ms.add(total_ms);
        }
    }

    pub fn merge(&mut self, other: &Rollup) {
        self.requests += other.requests;
        self.served += other.served;
        self.held += other.held;
        self.denied += other.denied;
        self.other += other.other;
        self.escalated += other.escalated;
        self.served_by_first_tier += other.served_by_first_tier;
        self.end_to_end_ms.merge(&other.end_to_end_ms);
        for (index, theirs) in &other.tiers {
            let tier = self.tiers.entry(*index).or_default();
            if tier.name.is_empty() {
                tier.name.clone_from(&theirs.name);
            }
            tier.attempts += theirs.attempts;
            tier.accepted += theirs.accepted;
            tier.latency_ms.merge(&theirs.latency_ms);
            tier.prompt_tokens += theirs.prompt_tokens;
            tier.completion_tokens += theirs.completion_tokens;
            tier.cost += theirs.cost;
        }
        self.kept_feedback.merge(&other.kept_feedback);
        self.escalated_feedback.merge(&other.escalated_feedback);
        self.reviews.merge(&other.reviews);
    }
}

/// The start of the `span_s`-second bucket that holds `time`.
pub fn bucket_start(time: DateTime<Utc>, span_s: i64) -> DateTime<Utc> {
    let seconds = time.timestamp().div_euclid(span_s) * span_s;
    Utc.timestamp_opt(seconds, 0).single().unwrap_or(time)
}

fn stamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Rollups being added up before they are written: (span, system, bucket start) → figures.
#[derive(Debug, Default)]
pub(crate) struct Pending(BTreeMap<(i64, String, String), Rollup>);

impl Pending {
    /// Counts `entry`, written at `time` for `system_id`.
    pub(crate) fn add(&mut self, system_id: &str, time: DateTime<Utc>, entry: &Value) {
        if !matches!(entry.get("type").and_then(Value::as_str), Some("inference" | "feedback" | "review")) {
            return;
        }
        for span in SPANS {
            let key = (span, system_id.to_owned(), stamp(bucket_start(time, span)));
            self.0.entry(key).or_default().add(entry);
        }
    }

    /// Adds the pending figures to the stored ones; the caller holds the write lock.
    async fn write(self, conn: &mut AnyConnection) -> anyhow::Result<()> {
        for ((span, system, start), rollup) in self.0 {
            let stored = Store::rollup_read(&mut *conn, span, &system, &start).await?;
            let mut total = match &stored {
                Some(text) => serde_json::from_str(text).unwrap_or_else(|error| {
                    // Derived data: a row that no longer parses is counted afresh, not fatal.
                    tracing::warn!(%error, system, start, "a stored rollup did not parse; it restarts from this batch");
                    Rollup::default()
                }),
                None => Rollup::default(),
            };
            total.merge(&rollup);
            Store::rollup_write(&mut *conn, span, &system, &start, &serde_json::to_string(&total)?).await?;
            if stored.is_none() && span == MINUTE {
                // A new minute: drop the ones nothing reads any more (once a minute at most).
                Store::rollup_prune(&mut *conn, MINUTE, &stamp(Utc::now() - chrono::Duration::seconds(MINUTE_BUCKETS_KEPT_S))).await?;
            }
        }
        Ok(())
    }
}

/// Adds a batch of entries `first..first + count` to the rollups, inside the transaction that
/// appends them. When the rollups are behind (entries older than the rollups' table), nothing
/// is added here: [`catch_up`] adds every entry in order.
pub(crate) async fn add_batch(conn: &mut AnyConnection, first: i64, count: i64, pending: Pending) -> anyhow::Result<()> {
    if Store::rollup_next_index(&mut *conn).await? != first {
        return Ok(());
    }
    pending.write(&mut *conn).await?;
    Store::rollup_set_next_index(&mut *conn, first + count).await
}

/// Adds every entry the rollups have not counted yet, 1,000 per transaction. Cheap when they
/// are up to date (two reads).
pub async fn catch_up(store: &Store) -> anyhow::Result<()> {
    loop {
        let (next, size) = {
            let mut conn = store.pool().acquire().await?;
            (Store::rollup_next_index(&mut conn).await?, Store::ledger_size(&mut conn).await?)
        };
        if next >= size {
            return Ok(());
        }
        let rows = store.ledger_query(&LedgerFilter { from_index: Some(next), to_index: Some(size), limit: 1000, ..Default::default() }).await?;
        let mut pending = Pending::default();
        for row in &rows {
            // A row whose stored time does not parse counts nowhere, as it would not in a window.
            if let (Some(system), Ok(time)) = (&row.system_id, DateTime::parse_from_rfc3339(&row.created_at)) {
                let entry: Value = serde_json::from_str(&row.entry)?;
                pending.add(system, time.with_timezone(&Utc), &entry);
            }
        }
        // Rows missing from the table (a damaged ledger, which the integrity check reports)
        // are skipped rather than waited for.
        let upto = rows.last().map_or(size, |row| row.index + 1);
        let mut tx = store.begin_write().await?;
        if Store::rollup_next_index(&mut tx).await? == next {
            pending.write(&mut tx).await?;
            Store::rollup_set_next_index(&mut tx, upto).await?;
        }
        tx.commit().await?;
        tracing::debug!(from = next, to = upto, "ledger entries added to the rollups");
    }
}

/// A system's rollups of `span_s` from the bucket holding `since` on, oldest first, after
/// bringing them up to date.
pub async fn read(store: &Store, system_id: &str, span_s: i64, since: DateTime<Utc>) -> anyhow::Result<Vec<(DateTime<Utc>, Rollup)>> {
    catch_up(store).await?;
    let rows = store.rollups_since(span_s, system_id, &stamp(bucket_start(since, span_s))).await?;
    rows.into_iter()
        .map(|row| {
            let start = DateTime::parse_from_rfc3339(&row.bucket_start)?.with_timezone(&Utc);
            Ok((start, serde_json::from_str(&row.figures)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn histogram_percentiles_are_within_one_percent_of_the_nearest_rank() {
        let values: Vec<f64> = (1..=1000).map(|i| f64::from(i) * 1.7).collect();
        let mut histogram = Histogram::default();
        values.iter().for_each(|v| histogram.add(*v));
        for p in [50.0, 95.0, 99.0, 100.0] {
            let exact = crate::evidence::percentile(&values, p);
            let estimate = histogram.percentile(p).unwrap();
            assert!((estimate / exact - 1.0).abs() <= 0.01, "p{p}: {estimate} vs {exact}");
        }
        assert_eq!(Histogram::default().percentile(50.0), None);
        let mut zero = Histogram::default();
        zero.add(0.0);
        assert_eq!(zero.percentile(99.0), Some(0.0));
    }

    #[test]
    fn merging_bucket_rollups_equals_adding_every_entry_to_one() {
        let entries: Vec<Value> = (0..40)
            .map(|i| {
                let escalated = i % 3 == 0;
                let attempt = |tier: u64, action: &str| json!({"tier": tier, "tier_name": format!("t{tier}"), "latency_ms": 10.0 + f64::from(i), "tokens": {"prompt": 4, "completion": 2}, "cost": 0.25, "accept": {"decision": {"action": action}}});
                let attempts = if escalated { vec![attempt(0, "escalate"), attempt(1, "accept")] } else { vec![attempt(0, "accept")] };
                json!({"type": "inference", "outcome": if i % 5 == 0 { "held_for_review" } else { "served" }, "escalated": escalated, "served_tier": u64::from(escalated), "attempts": attempts})
            })
            .collect();
        let mut whole = Rollup::default();
        entries.iter().for_each(|e| whole.add(e));
        let mut merged = Rollup::default();
        for chunk in entries.chunks(7) {
            let mut part = Rollup::default();
            chunk.iter().for_each(|e| part.add(e));
            // Through the stored form, as the overview reads it.
            let stored: Rollup = serde_json::from_str(&serde_json::to_string(&part).unwrap()).unwrap();
            merged.merge(&stored);
        }
        assert_eq!(merged, whole);
        assert_eq!((whole.requests, whole.escalated, whole.held), (40, 14, 8));
        assert_eq!((whole.tiers[&0].attempts, whole.tiers[&0].accepted, whole.tiers[&1].attempts), (40, 26, 14));
    }

    #[test]
    fn entries_fall_into_the_minute_and_the_hour_that_hold_them() {
        let at = |text: &str| DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc);
        let mut pending = Pending::default();
        pending.add("s", at("2026-12-07T17:05:59.999999Z"), &json!({"type": "inference", "outcome": "served"}));
        pending.add("s", at("2026-12-07T17:06:00.000000Z"), &json!({"type": "feedback", "correct": true}));
        pending.add("s", at("2026-12-07T17:06:01.000000Z"), &json!({"type": "governance"}));
        let keys: Vec<(i64, &str)> = pending.0.keys().map(|(span, _, start)| (*span, start.as_str())).collect();
        assert_eq!(keys, vec![(MINUTE, "2026-12-07T17:05:00Z"), (MINUTE, "2026-12-07T17:06:00Z"), (HOUR, "2026-12-07T17:00:00Z")]);
        let hour = &pending.0[&(HOUR, "s".to_owned(), "2026-12-07T17:00:00Z".to_owned())];
        assert_eq!((hour.requests, hour.kept_feedback.judged), (1, 1));
    }
}
