//! Evidence from a labelled workload: `tiergate compare` (small-first against large-first) and
//! `tiergate calibrate` (the confidence threshold that meets a target accuracy).
//!
//! Both run the real gateway in-process, on a scratch database of their own (the deployment's
//! registry and ledger are never touched), and send every workload item through the HTTP API
//! exactly as an application would. A system's variants (only its last tier, only its first
//! tier) are derived from its card in the card directories and seeded next to it.

pub mod calibrate;
pub(crate) mod chart;
pub mod compare;
pub mod confidence;
mod workload;

use std::{path::PathBuf, time::Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};

pub use workload::{WorkloadItem, load_workload};

use crate::{
    config::Settings,
    registry::{CardKind, read_cards},
    startup::Application,
};

/// What one request came to, as the calling application saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Observation {
    pub item: String,
    pub status: u16,
    /// `served`, `held_for_review`, or the error code of a refusal.
    pub outcome: String,
    pub tier_served: Option<usize>,
    pub escalated: bool,
    /// End to end, measured by the client.
    pub latency_ms: f64,
    pub model_ms: f64,
    pub cost: f64,
    pub answer: Option<String>,
    /// Whether the answer matches the item's expectation (`None`: no answer or no label).
    pub correct: Option<bool>,
    /// The first attempt's mean token log-probability (the confidence signal).
    pub first_mean_logprob: Option<f64>,
    /// Every signal of the first attempt (what a confidence model is fitted on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_signals: Option<crate::inference::Signals>,
}

/// A gateway started for one evidence run: scratch data directory and database, the card
/// directories of `settings` plus the derived variants, and an `app` key.
pub struct ScratchGateway {
    address: String,
    client: reqwest::Client,
    token: String,
    data_dir: PathBuf,
}

impl ScratchGateway {
    /// Starts the gateway with `variants` (card documents) seeded beside the configured cards.
    pub async fn start(settings: &Settings, variants: &[Value]) -> anyhow::Result<ScratchGateway> {
        let data_dir = std::env::temp_dir().join(format!("tiergate-evidence-{}", uuid::Uuid::new_v4()));
        let variant_dir = data_dir.join("variants");
        std::fs::create_dir_all(&variant_dir).with_context(|| format!("creating {}", variant_dir.display()))?;
        for variant in variants {
            let id = variant.get("id").and_then(Value::as_str).context("variant card has no id")?;
            // JSON is YAML: the card loader reads it as any other card file.
            std::fs::write(variant_dir.join(format!("{id}.json")), serde_json::to_vec_pretty(variant)?)?;
        }
        let admin_key = crate::access::new_token()?;
        let mut cards_dirs = settings.cards_dirs.clone();
        cards_dirs.push(variant_dir);
        let scratch = Settings {
            bind: "127.0.0.1:0".into(),
            data_dir: data_dir.clone(),
            database_url: None,
            cards_dirs,
            bootstrap_admin_key: Some(admin_key.clone()),
            rate_limit_per_minute: None,
            checkpoint_interval_s: 0,
            registry_sync_interval_ms: 0,
            // A scratch ledger is not the deployment's log: its checkpoints are not witnessed.
            witnesses: Vec::new(),
            ..settings.clone()
        };
        let app = Application::build(scratch).await.context("starting the scratch gateway")?;
        let address = format!("http://{}", app.address());
        tokio::spawn(app.run_until_stopped());
        let client = reqwest::Client::new();
        let issued: Value = client
            .post(format!("{address}/v1/keys"))
            .bearer_auth(&admin_key)
            .json(&json!({"subject": "tiergate-evidence", "roles": ["app", "auditor"]}))
            .send()
            .await
            .context("issuing the run's app key")?
            .json()
            .await?;
        let token = issued["token"].as_str().context("no token in the key answer")?.to_owned();
        Ok(ScratchGateway { address, client, token, data_dir })
    }

    /// Sends one workload item to `system` and records what came back.
    pub async fn ask(&self, system: &str, item: &WorkloadItem) -> anyhow::Result<Observation> {
        let started = Instant::now();
        let response = self
            .client
            .post(format!("{}/v1/chat/completions", self.address))
            .bearer_auth(&self.token)
            .json(&json!({"model": system, "messages": item.messages()}))
            .send()
            .await
            .with_context(|| format!("item {}", item.id))?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.with_context(|| format!("item {}: the answer is not JSON", item.id))?;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let meta = &body["tiergate"];
        let answer = body.pointer("/choices/0/message/content").and_then(Value::as_str).map(str::to_owned);
        let outcome = meta["outcome"].as_str().or_else(|| body.pointer("/error/code").and_then(Value::as_str)).unwrap_or("unknown").to_owned();
        // Only a served answer counts: a held one has not been released to the user as final.
        let served = status == 200 && outcome == "served";
        Ok(Observation {
            item: item.id.clone(),
            status,
            tier_served: meta["tier_served"].as_u64().map(|t| t as usize).filter(|_| served),
            escalated: meta["escalated"].as_bool().unwrap_or(false),
            latency_ms,
            model_ms: meta["model_ms"].as_f64().unwrap_or(0.0),
            cost: meta["cost"].as_f64().unwrap_or(0.0),
            correct: answer.as_deref().filter(|_| served).and_then(|a| item.is_correct(a)),
            first_mean_logprob: meta.pointer("/attempts/0/mean_logprob").and_then(Value::as_f64),
            first_signals: meta.pointer("/attempts/0/signals").and_then(|s| serde_json::from_value(s.clone()).ok()),
            answer,
            outcome,
        })
    }

    /// `id@version sha256:<digest>` of the active version of system card `id`.
    pub async fn system_digest(&self, id: &str) -> anyhow::Result<String> {
        let versions: Value =
            self.client.get(format!("{}/v1/registry/system-cards/{id}/versions", self.address)).bearer_auth(&self.token).send().await?.json().await?;
        let active_version = versions["active_version"].as_i64().with_context(|| format!("system card {id} has no active version"))?;
        let list = versions["versions"].as_array().context("no version list")?;
        let active = list.iter().find(|v| v["version"] == active_version).context("the active version is not listed")?;
        Ok(format!("{id}@{} {}", active["version"], active["digest"].as_str().unwrap_or_default()))
    }

    /// Sends every item, `concurrency` at a time, after one warm-up request; returns the
    /// observations in workload order and the wall time of the timed run.
    pub async fn run(&self, system: &str, items: &[WorkloadItem], concurrency: usize) -> anyhow::Result<(Vec<Observation>, f64)> {
        use futures::StreamExt;
        if let Some(first) = items.first() {
            self.ask(system, first).await.context("warm-up request")?;
        }
        let started = Instant::now();
        let observations: Vec<anyhow::Result<Observation>> =
            futures::stream::iter(items.iter().map(|item| self.ask(system, item))).buffered(concurrency.max(1)).collect().await;
        let seconds = started.elapsed().as_secs_f64();
        Ok((observations.into_iter().collect::<anyhow::Result<_>>()?, seconds))
    }
}

impl Drop for ScratchGateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The system card `id` as written in the card directories.
pub fn system_card(settings: &Settings, id: &str) -> anyhow::Result<Value> {
    let found = read_cards(&settings.cards_dirs)?.into_iter().find(|(_, _, card)| card.kind == CardKind::System && card.id == id);
    if let Some((_, _, card)) = found {
        return Ok(card.document);
    }
    let dirs: Vec<String> = settings.cards_dirs.iter().map(|d| d.display().to_string()).collect();
    anyhow::bail!("no system card {id:?} in the card directories ({})", dirs.join(", "))
}

/// A variant of a system card that keeps only tier `keep` (its decoding, model and its own
/// per-tier threshold), under the id `<id>-<suffix>`, with the same policy. `accept_all`
/// sets a threshold every answer meets, so that variant records the tier's raw answers.
pub fn single_tier_variant(card: &Value, keep: usize, suffix: &str, accept_all: bool) -> anyhow::Result<Value> {
    let mut variant = card.clone();
    let id = card["id"].as_str().context("card has no id")?;
    let tiers = card["tiers"].as_array().context("card has no tiers")?;
    let tier = tiers.get(keep).with_context(|| format!("card {id} has no tier {keep}"))?.clone();
    variant["id"] = json!(format!("{id}-{suffix}"));
    variant["purpose"] = json!(format!(
        "{} (variant with only tier {keep} {:?}, made by tiergate for an evidence run)",
        card["purpose"].as_str().unwrap_or(id),
        tier["name"].as_str().unwrap_or_default()
    ));
    variant["tiers"] = json!([tier]);
    if accept_all {
        // Every answer accepted, but with the same signals: a system that asks for the
        // self-check keeps asking, so that its P(yes) can be measured and fitted on.
        variant["escalation"] = json!({"min_mean_logprob": -1.0e9});
        if let Some(self_check) = card.pointer("/escalation/self_check") {
            variant["escalation"]["self_check"] = self_check.clone();
        }
    } else {
        // Per-tier thresholds follow their tier, which is tier 0 of the variant.
        for key in ["min_mean_logprob_by_tier", "min_p_correct_by_tier"] {
            let Some(by_tier) = card.pointer(&format!("/escalation/{key}")).and_then(Value::as_array) else { continue };
            match by_tier.get(keep) {
                Some(threshold) => variant["escalation"][key] = json!([threshold]),
                None => {
                    variant["escalation"].as_object_mut().map(|e| e.remove(key));
                }
            }
        }
    }
    Ok(variant)
}

/// Nearest-rank percentile of sorted values.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 95.0), 95.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn a_single_tier_variant_keeps_that_tier_and_its_own_threshold() {
        let card = json!({
            "kind": "system-card", "id": "s", "purpose": "p", "policy": "tiergate-default@1",
            "tiers": [{"name": "small", "model": "m@1"}, {"name": "large", "model": "m@1"}],
            "escalation": {"min_mean_logprob": -1.0, "min_mean_logprob_by_tier": [-0.35, -0.8], "min_p_correct_by_tier": [0.2, null]}
        });
        let large = single_tier_variant(&card, 1, "large-first", false).unwrap();
        assert_eq!(large["id"], "s-large-first");
        assert_eq!(large["tiers"], json!([{"name": "large", "model": "m@1"}]));
        assert_eq!(large["escalation"], json!({"min_mean_logprob": -1.0, "min_mean_logprob_by_tier": [-0.8], "min_p_correct_by_tier": [null]}));
        let raw = single_tier_variant(&card, 0, "first-tier", true).unwrap();
        assert_eq!(raw["escalation"], json!({"min_mean_logprob": -1.0e9}));
        let mut checked = card.clone();
        checked["escalation"]["self_check"] = json!(true);
        let raw = single_tier_variant(&checked, 0, "first-tier", true).unwrap();
        assert_eq!(raw["escalation"], json!({"min_mean_logprob": -1.0e9, "self_check": true}), "the self-check is still asked");
        assert!(single_tier_variant(&card, 2, "x", false).is_err());
    }
}
