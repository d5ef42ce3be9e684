//! Sending published checkpoints to witnesses (c2sp.org/tlog-witness, the client side) and
//! keeping their cosignatures. Runs on its own task: a witness that is down or slow delays
//! cosignatures and shows in `/readyz` and the metrics, never holds up a request.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use anyhow::Context;
use base64::{Engine as _, prelude::BASE64_STANDARD};
use serde::Serialize;
use tlog_tiles::{Hash, prove_tree};

use super::{Ledger, WitnessKey, cosignature_lines, with_stored_hashes};
use crate::{
    config::WitnessSetting,
    metrics::Metrics,
    store::{StoredCheckpoint, StoredCosignature},
};

/// The most of a witness's answer that is read; a cosignature line is about 120 bytes.
const MAX_RESPONSE_BYTES: usize = 16 * 1024;

/// The witnesses of one ledger and what the gateway knows of each.
#[derive(Debug)]
pub struct Witnessing {
    witnesses: Vec<RemoteWitness>,
    quorum: usize,
    timeout: Duration,
    retry: Duration,
    max_uncosigned: Duration,
    client: reqwest::Client,
    /// Woken when a checkpoint is published, so it is sent at once rather than at the next retry.
    wake: tokio::sync::Notify,
    metrics: Option<Arc<Metrics>>,
}

#[derive(Debug)]
struct RemoteWitness {
    url: String,
    key: WitnessKey,
    /// The size the witness last said it holds (from a cosignature or a 409).
    known_size: Mutex<Option<u64>>,
    last_error: Mutex<Option<String>>,
}

/// What one add-checkpoint request came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Cosigned,
    /// The witness holds a newer checkpoint than this one (another replica sent it).
    Ahead,
    Refused(String),
    Malformed(String),
    Unreachable(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Cosigned => "cosigned",
            Outcome::Ahead => "ahead",
            Outcome::Refused(_) => "refused",
            Outcome::Malformed(_) => "malformed",
            Outcome::Unreachable(_) => "unreachable",
        }
    }
}

/// What `/readyz` says about witnessing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WitnessHealth {
    /// Cosignatures a checkpoint needs to count as witnessed.
    pub quorum: usize,
    /// The newest published checkpoint with the quorum's cosignatures.
    pub witnessed_tree_size: Option<u64>,
    /// Seconds since the oldest published checkpoint the quorum has not cosigned (0 when the
    /// newest is witnessed).
    pub uncosigned_seconds: f64,
    /// `max_uncosigned_s`.
    pub limit_seconds: u64,
    /// False once checkpoints went uncosigned for longer than the limit (serving goes on).
    pub within_limit: bool,
    pub witnesses: BTreeMap<String, RemoteWitnessHealth>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RemoteWitnessHealth {
    pub url: String,
    /// The size the witness last reported holding.
    pub cosigned_tree_size: Option<u64>,
    /// Why the last request did not end in a cosignature, if it did not.
    pub last_error: Option<String>,
}

impl Witnessing {
    /// Checks the settings: every key parses, names are distinct, the quorum can be met.
    pub fn new(
        settings: &[WitnessSetting],
        quorum: Option<usize>,
        timeout: Duration,
        retry: Duration,
        max_uncosigned: Duration,
    ) -> anyhow::Result<Witnessing> {
        let mut witnesses = Vec::new();
        for (number, setting) in settings.iter().enumerate() {
            let key = WitnessKey::parse(&setting.key).with_context(|| format!("witnesses[{number}].key"))?;
            anyhow::ensure!(
                setting.url.starts_with("http://") || setting.url.starts_with("https://"),
                "witnesses[{number}].url {:?} is not an http(s) URL",
                setting.url
            );
            anyhow::ensure!(
                !witnesses.iter().any(|w: &RemoteWitness| w.key.name == key.name),
                "witnesses[{number}]: witness {} is listed twice",
                key.name
            );
            witnesses.push(RemoteWitness {
                url: setting.url.trim_end_matches('/').to_owned(),
                key,
                known_size: Mutex::new(None),
                last_error: Mutex::new(None),
            });
        }
        let quorum = quorum.unwrap_or(witnesses.len());
        anyhow::ensure!(
            quorum >= 1 && quorum <= witnesses.len(),
            "witness_quorum {quorum} must be between 1 and the number of witnesses ({})",
            witnesses.len()
        );
        let client = reqwest::Client::builder().connect_timeout(timeout).build().context("building the witness client")?;
        Ok(Witnessing { witnesses, quorum, timeout, retry, max_uncosigned, client, wake: tokio::sync::Notify::new(), metrics: None })
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Witnessing {
        metrics.ledger_uncosigned_limit_seconds.set(self.max_uncosigned.as_secs_f64());
        self.metrics = Some(metrics);
        self
    }

    pub fn quorum(&self) -> usize {
        self.quorum
    }

    pub fn names(&self) -> Vec<String> {
        self.witnesses.iter().map(|w| w.key.name.clone()).collect()
    }

    /// Asks for cosignatures now (a checkpoint was just published).
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sends the newest published checkpoint to every witness that has not cosigned it, at once
    /// when one is published and every `retry` otherwise, for as long as the ledger is in use.
    pub async fn run(self: Arc<Self>, ledger: Weak<Ledger>) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.retry) => {}
            }
            let Some(ledger) = ledger.upgrade() else { return };
            if let Err(error) = self.cosign_newest(&ledger).await {
                tracing::warn!(error = ?error, "asking witnesses to cosign the newest checkpoint failed");
            }
            if let Err(error) = self.health(&ledger).await {
                tracing::warn!(error = ?error, "reading the witnessed state of the ledger failed");
            }
        }
    }

    /// One round: the newest published checkpoint to each witness that has not cosigned it.
    pub async fn cosign_newest(&self, ledger: &Ledger) -> anyhow::Result<()> {
        if ledger.contradiction().is_some() {
            return Ok(());
        }
        let Some(newest) = ledger.store.ledger_checkpoints(1).await?.into_iter().next() else { return Ok(()) };
        let have: HashSet<String> =
            ledger.store.ledger_cosignatures_between(newest.tree_size, newest.tree_size).await?.into_iter().map(|c| c.witness).collect();
        let pending = self.witnesses.iter().filter(|w| !have.contains(&w.key.name));
        let newest = &newest;
        let outcomes = futures::future::join_all(pending.map(|witness| async move {
            let outcome = self.ask(ledger, witness, newest).await.unwrap_or_else(|error| Outcome::Refused(format!("{error:#}")));
            (witness, outcome)
        }))
        .await;
        for (witness, outcome) in outcomes {
            if let Some(metrics) = &self.metrics {
                metrics.witness_requests.with_label_values(&[witness.key.name.as_str(), outcome.label()]).inc();
            }
            let problem = match &outcome {
                Outcome::Cosigned | Outcome::Ahead => None,
                Outcome::Refused(why) | Outcome::Malformed(why) | Outcome::Unreachable(why) => Some(why.clone()),
            };
            match &problem {
                Some(why) => {
                    tracing::warn!(witness = %witness.key.name, url = %witness.url, tree_size = newest.tree_size, outcome = outcome.label(), problem = %why, "the witness did not cosign the checkpoint")
                }
                None => tracing::debug!(witness = %witness.key.name, tree_size = newest.tree_size, outcome = outcome.label(), "witness answered"),
            }
            *witness.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = problem;
        }
        Ok(())
    }

    /// One add-checkpoint exchange (two more if the witness says it holds another size).
    async fn ask(&self, ledger: &Ledger, witness: &RemoteWitness, checkpoint: &StoredCheckpoint) -> anyhow::Result<Outcome> {
        let size = checkpoint.tree_size as u64;
        let known = *witness.known_size.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut old = match known {
            Some(known) => known,
            None => ledger.store.ledger_witness_newest_size(&witness.key.name).await?.map_or(0, |s| s as u64),
        };
        for _ in 0..3 {
            if old > size {
                self.set_known(witness, old);
                return Ok(Outcome::Ahead);
            }
            let proof = if old == 0 || old == size { Vec::new() } else { ledger.tree_proof(old, size).await? };
            let lines: String = proof.iter().map(|hash| format!("{}\n", BASE64_STANDARD.encode(hash.0))).collect();
            let body = format!("old {old}\n{lines}\n{}", checkpoint.note);
            let sent = self.client.post(format!("{}/add-checkpoint", witness.url)).timeout(self.timeout).body(body).send().await;
            let response = match sent {
                Ok(response) => response,
                Err(error) => return Ok(Outcome::Unreachable(format!("{}: {error}", witness.url))),
            };
            let status = response.status().as_u16();
            let content_type = response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            let text = match read_limited(response).await {
                Ok(text) => text,
                Err(error) => return Ok(Outcome::Malformed(format!("{error:#}"))),
            };
            match status {
                200 => return self.accept(ledger, witness, checkpoint, &text).await,
                409 if content_type.starts_with("text/x.tlog.size") => match text.strip_suffix('\n').and_then(|n| n.parse::<u64>().ok()) {
                    Some(held) => {
                        self.set_known(witness, held);
                        old = held;
                    }
                    None => return Ok(Outcome::Malformed(format!("a 409 whose body {:?} is not a tree size", truncate(&text)))),
                },
                _ => return Ok(Outcome::Refused(format!("HTTP {status}: {}", truncate(text.trim())))),
            }
        }
        Ok(Outcome::Refused("the witness kept answering that it holds another size".into()))
    }

    /// Checks a 200 answer (signature lines, one a valid cosignature by this witness's key of
    /// this checkpoint) and keeps that cosignature.
    async fn accept(&self, ledger: &Ledger, witness: &RemoteWitness, checkpoint: &StoredCheckpoint, text: &str) -> anyhow::Result<Outcome> {
        if text.is_empty() || !text.ends_with('\n') || !text.lines().all(|line| line.starts_with("\u{2014} ")) {
            return Ok(Outcome::Malformed(format!("the answer {:?} is not note signature lines", truncate(text))));
        }
        let cosigned = format!("{}{text}", checkpoint.note);
        let lines = match cosignature_lines(&cosigned, std::slice::from_ref(&witness.key)) {
            Ok(lines) => lines,
            Err(error) => return Ok(Outcome::Malformed(format!("{error:#}"))),
        };
        let Some((_, time, line)) = lines.into_iter().next() else {
            return Ok(Outcome::Malformed(format!("no cosignature by {} in the answer", witness.key.name)));
        };
        let cosignature = StoredCosignature {
            tree_size: checkpoint.tree_size,
            witness: witness.key.name.clone(),
            cosigned_at: i64::try_from(time).unwrap_or(i64::MAX),
            signature: line,
        };
        ledger.store.ledger_insert_cosignature(&cosignature, &crate::api::now()).await?;
        self.set_known(witness, checkpoint.tree_size as u64);
        Ok(Outcome::Cosigned)
    }

    fn set_known(&self, witness: &RemoteWitness, size: u64) {
        *witness.known_size.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(size);
        if let Some(metrics) = &self.metrics {
            metrics.witness_cosigned_size.with_label_values(&[witness.key.name.as_str()]).set(i64::try_from(size).unwrap_or(i64::MAX));
        }
    }

    /// The witnessed state, also set in the metrics.
    pub async fn health(&self, ledger: &Ledger) -> anyhow::Result<WitnessHealth> {
        let witnessed = ledger.store.ledger_newest_witnessed(&self.names(), self.quorum).await?;
        let witnessed_size = witnessed.as_ref().map(|c| c.tree_size);
        let uncosigned_seconds = match ledger.store.ledger_first_checkpoint_after(witnessed_size.unwrap_or(0)).await? {
            Some(published) => chrono::DateTime::parse_from_rfc3339(&published)
                .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0),
            None => 0.0,
        };
        if let Some(metrics) = &self.metrics {
            metrics.ledger_uncosigned_seconds.set(uncosigned_seconds);
        }
        let witnesses = self
            .witnesses
            .iter()
            .map(|w| {
                let status = RemoteWitnessHealth {
                    url: w.url.clone(),
                    cosigned_tree_size: *w.known_size.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
                    last_error: w.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
                };
                (w.key.name.clone(), status)
            })
            .collect();
        Ok(WitnessHealth {
            quorum: self.quorum,
            witnessed_tree_size: witnessed_size.map(|s| s as u64),
            uncosigned_seconds,
            limit_seconds: self.max_uncosigned.as_secs(),
            within_limit: uncosigned_seconds <= self.max_uncosigned.as_secs_f64(),
            witnesses,
        })
    }
}

async fn read_limited(mut response: reqwest::Response) -> anyhow::Result<String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.context("reading the witness's answer")? {
        body.extend_from_slice(&chunk);
        anyhow::ensure!(body.len() <= MAX_RESPONSE_BYTES, "the witness's answer is longer than {MAX_RESPONSE_BYTES} bytes");
    }
    String::from_utf8(body).context("the witness's answer is not UTF-8")
}

fn truncate(text: &str) -> String {
    text.chars().take(200).collect()
}

impl Ledger {
    /// RFC 6962 consistency proof from the tree of `old` entries to the tree of `size`.
    async fn tree_proof(&self, old: u64, size: u64) -> anyhow::Result<Vec<Hash>> {
        let mut conn = self.store.pool().acquire().await.context("acquiring connection")?;
        with_stored_hashes(&mut conn, |reader| prove_tree(size, old, reader)).await
    }
}
