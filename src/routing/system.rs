//! A system card version resolved for serving: its tiers with loaded runtimes and its compiled policy.

use std::{sync::Arc, time::Duration};

use serde_json::Value;

use super::{ChatRequest, RoutingError};
use crate::{
    inference::{DecodingProfile, TierRuntime},
    policy::CompiledBundle,
    registry::{ArtifactRef, Cost},
};

#[derive(Debug)]
pub struct SystemRoute {
    pub reference: ArtifactRef,
    pub digest: String,
    pub tiers: Vec<TierRoute>,
    pub policy: Arc<CompiledBundle>,
    /// Ask each tier's model whether its answer is correct (`escalation.self_check`).
    pub self_check: bool,
    /// The card's escalation thresholds, handed to the policy as `input.thresholds`.
    pub thresholds: Value,
}

#[derive(Debug)]
pub struct TierRoute {
    pub index: usize,
    pub name: String,
    pub model: ArtifactRef,
    pub model_digest: String,
    /// The model card's pinned source weights.
    pub weights_sha256: String,
    /// The file that runs: the source weights, or the file derived from them.
    pub loaded_weights_sha256: String,
    pub runtime: TierRuntime,
    pub decoding: DecodingProfile,
    /// Queue and circuit breaker of this tier.
    pub guard: super::guard::TierGuard,
    /// An attempt running longer fails (the system card's SLA, `slas.p95_latency_ms`).
    pub time_budget: Option<Duration>,
    /// The model card's limit on generated tokens per request.
    pub max_tokens_limit: Option<u32>,
    pub cost: Option<Cost>,
    /// Turns this tier's signals into P(correct), when the system card cites one.
    pub confidence: Option<Arc<crate::confidence::LoadedConfidenceModel>>,
}

impl TierRoute {
    /// Cost of one attempt from the model card's prices and the real token counts.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> Option<f64> {
        self.cost.as_ref().map(|c| (prompt_tokens as f64 * c.per_1k_input_tokens + completion_tokens as f64 * c.per_1k_output_tokens) / 1000.0)
    }
}

impl SystemRoute {
    /// Rejects requests this system can never serve, before any model runs.
    pub fn check_request(&self, request: &ChatRequest) -> Result<(), RoutingError> {
        if let Some(max_tokens) = request.max_tokens
            && let Some(limit) = self.tiers.iter().filter_map(|t| t.max_tokens_limit).min()
            && max_tokens > limit
        {
            return Err(RoutingError::InvalidRequest(format!("max_tokens: {max_tokens} exceeds this system's limit of {limit}")));
        }
        Ok(())
    }
}
