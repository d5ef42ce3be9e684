//! Resolves system card versions into servable routes: loaded runtimes and compiled policies,
//! each loaded once and shared by every tier and system that uses it.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use serde_json::Value;
use tokio::sync::Mutex;

use super::{
    SystemRoute, TierRoute,
    guard::{GuardLimits, TierGuard},
};
use crate::{
    confidence::LoadedConfidenceModel,
    inference::{DecodingProfile, LoadedPromptFormat, MistralRuntime, RemoteRuntime, TierRuntime, ensure_runnable_weights},
    policy::{BundleSource, CompiledBundle},
    registry::{ArtifactKind, ArtifactRef, ArtifactVersion, ModelCard, Registry, Runtime, SystemCard},
};

/// Where weights come from, how policies are evaluated, and each tier's limits; from the settings.
#[derive(Debug, Clone)]
pub struct LoaderSettings {
    pub model_cache_dir: PathBuf,
    pub python: String,
    pub policy_eval_timeout: Duration,
    pub guard: GuardLimits,
    /// Time limit of a call to a remote tier when the system card sets no SLA.
    pub remote_timeout: Duration,
}

#[derive(Debug)]
pub struct SystemLoader {
    registry: Registry,
    settings: LoaderSettings,
    /// Loaded models by weights sha256, compiled policies by version. A lock, not a map of
    /// futures: loads are rare (start-up, activation) and must not load one model twice.
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    runtimes: HashMap<String, MistralRuntime>,
    policies: HashMap<ArtifactRef, Arc<CompiledBundle>>,
}

impl SystemLoader {
    pub fn new(registry: Registry, settings: LoaderSettings) -> SystemLoader {
        SystemLoader { registry, settings, cache: Mutex::new(Cache::default()) }
    }

    /// Every active system card: those ready to serve, and those that cannot be loaded (a
    /// model's weights refused, say) with the reason; one system's failure does not keep the
    /// others from serving.
    pub async fn load_active(&self) -> anyhow::Result<(Vec<SystemRoute>, Vec<(ArtifactRef, String)>)> {
        let (mut systems, mut refused) = (Vec::new(), Vec::new());
        for version in self.registry.active(ArtifactKind::SystemCard).await? {
            match self.load(&version).await {
                Ok(system) => systems.push(system),
                Err(error) => refused.push((version.reference.clone(), format!("{error:#}"))),
            }
        }
        Ok((systems, refused))
    }

    /// One system card version with its tiers' runtimes loaded and its policy compiled.
    pub async fn load(&self, version: &ArtifactVersion) -> anyhow::Result<SystemRoute> {
        let card: SystemCard = serde_json::from_value(version.document.clone()).with_context(|| format!("system card {}", version.reference))?;
        let mut cache = self.cache.lock().await;
        let policy = self.compiled_policy(&mut cache, &card.policy).await?;
        let time_budget = version.document.pointer("/slas/p95_latency_ms").and_then(Value::as_u64).map(Duration::from_millis);
        let mut tiers = Vec::new();
        for (index, tier) in card.tiers.iter().enumerate() {
            let model_version = self.registry.require(ArtifactKind::ModelCard, &tier.model).await?;
            let model: ModelCard = serde_json::from_value(model_version.document.clone()).with_context(|| format!("model card {}", tier.model))?;
            let runtime = match &model.runtime {
                // Keyed by the file that runs: models sharing it share one loaded instance.
                Runtime::MistralrsGguf => match cache.runtimes.get(model.weights.loaded_sha256()) {
                    Some(runtime) => TierRuntime::Local(runtime.clone()),
                    None => {
                        let runtime = self.load_gguf(&model).await.with_context(|| format!("system {}: tier {index} ({})", card.id, tier.model))?;
                        cache.runtimes.insert(model.weights.loaded_sha256().to_owned(), runtime.clone());
                        TierRuntime::Local(runtime)
                    }
                },
                Runtime::OpenaiCompatible { base_url, model: remote_model, api_key_env } => {
                    let timeout = time_budget.unwrap_or(self.settings.remote_timeout);
                    TierRuntime::Remote(
                        RemoteRuntime::new(base_url, remote_model, api_key_env.as_deref(), timeout)
                            .with_context(|| format!("system {}: tier {index} ({})", card.id, tier.model))?,
                    )
                }
            };
            let confidence = match &tier.confidence_model {
                None => None,
                Some(reference) => {
                    let stored = self.registry.require(ArtifactKind::ConfidenceModel, reference).await?;
                    // Activation checks this too; a shipped card seeded at start-up is not
                    // activated through it, and a draft must never score real answers.
                    anyhow::ensure!(
                        stored.status == crate::registry::APPROVED || stored.status == crate::registry::ACTIVE,
                        "system {}: tier {index}: confidence model {reference} is {}, not approved",
                        card.id,
                        stored.status
                    );
                    let model = LoadedConfidenceModel::from_document(reference.clone(), stored.digest.clone(), &stored.document)?;
                    anyhow::ensure!(
                        model.tier_model == tier.model,
                        "system {}: tier {index}: confidence model {reference} was fitted on {}, not {}",
                        card.id,
                        model.tier_model,
                        tier.model
                    );
                    Some(Arc::new(model))
                }
            };
            tiers.push(TierRoute {
                index,
                confidence,
                name: tier.name.clone(),
                model: tier.model.clone(),
                model_digest: model_version.digest.clone(),
                weights_sha256: model.weights.sha256.clone(),
                loaded_weights_sha256: model.weights.loaded_sha256().to_owned(),
                runtime,
                decoding: DecodingProfile {
                    max_tokens: tier.decoding.max_tokens,
                    temperature: tier.decoding.temperature,
                    system_prompt: tier.decoding.system_prompt.clone(),
                    prompt_format: tier.decoding.prompt_format.clone().map(|f| Arc::new(LoadedPromptFormat::new(f))),
                    top_logprobs: 0,
                },
                max_tokens_limit: model_version.document.get("max_tokens_limit").and_then(Value::as_u64).map(|v| v as u32),
                cost: model.cost.clone(),
                guard: TierGuard::new(self.settings.guard),
                time_budget,
            });
        }
        tracing::info!(system = %version.reference, tiers = tiers.len(), policy = %card.policy, "system ready");
        Ok(SystemRoute {
            reference: version.reference.clone(),
            digest: version.digest.clone(),
            tiers,
            policy,
            self_check: card.escalation.get("self_check").and_then(Value::as_bool).unwrap_or(false),
            thresholds: serde_json::to_value(&card.escalation).context("encoding thresholds")?,
        })
    }

    /// A running experiment ready to serve: its document, its treatment loaded, the run's
    /// share and key.
    pub async fn load_experiment(&self, run: &crate::store::ExperimentRunRow) -> anyhow::Result<crate::experiment::ExperimentRoute> {
        let reference = ArtifactRef { id: run.experiment_id.clone(), version: run.experiment_version };
        let (document, digest) = self.registry.experiment_of(run).await?;
        let treatment = self.registry.require(ArtifactKind::SystemCard, &document.treatment).await?;
        let treatment = self.load(&treatment).await.with_context(|| format!("experiment {reference}: treatment {}", document.treatment))?;
        Ok(crate::experiment::ExperimentRoute {
            reference,
            digest,
            document,
            treatment: Arc::new(treatment),
            treatment_ppm: u32::try_from(run.treatment_ppm).context("treatment share")?,
            key: hex::decode(&run.assignment_key).context("experiment assignment key")?,
        })
    }

    /// A policy bundle version, compiled once with the serving time limit and shared.
    pub async fn policy(&self, reference: &ArtifactRef) -> anyhow::Result<Arc<CompiledBundle>> {
        let mut cache = self.cache.lock().await;
        self.compiled_policy(&mut cache, reference).await
    }

    async fn compiled_policy(&self, cache: &mut Cache, reference: &ArtifactRef) -> anyhow::Result<Arc<CompiledBundle>> {
        if let Some(policy) = cache.policies.get(reference) {
            return Ok(policy.clone());
        }
        let bundle = self.registry.require(ArtifactKind::PolicyBundle, reference).await?;
        let source = BundleSource::from_document(&bundle.document)?;
        let compiled = Arc::new(CompiledBundle::compile(&source, reference.clone(), bundle.digest.clone(), self.settings.policy_eval_timeout)?);
        cache.policies.insert(reference.clone(), compiled.clone());
        Ok(compiled)
    }

    async fn load_gguf(&self, model: &ModelCard) -> anyhow::Result<MistralRuntime> {
        let weights = model.weights.clone();
        let cache_dir = self.settings.model_cache_dir.clone();
        let python = self.settings.python.clone();
        // pip, deriving and hashing ~100 MB block: keep them off the async executor.
        let path =
            tokio::task::spawn_blocking(move || ensure_runnable_weights(&weights, &cache_dir, &python)).await.context("weights task panicked")??;
        tracing::info!(model = %model.id, path = %path.display(), "weights verified; loading model");
        MistralRuntime::load(&path).await
    }
}
