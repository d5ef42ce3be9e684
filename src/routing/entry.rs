//! Builds the ledger entry of one request: versions and digests, both gates' inputs and decisions, every attempt.

use serde_json::{Value, json};

use super::{Attempt, ChatRequest, Outcome, ServedAnswer, SystemRoute, TierRoute};
use crate::{
    canonical::{sha256_hex, to_canonical_bytes},
    inference::chat_messages,
    ledger::EntryDraft,
    policy::{CompiledBundle, GateDecision},
};

pub(super) struct EntryBuilder {
    body: serde_json::Map<String, Value>,
    attempts: Vec<Value>,
    system_id: String,
    store_text: bool,
}

impl EntryBuilder {
    pub fn new(system: &SystemRoute, request: &ChatRequest, route_input: Value, route: GateDecision, store_text: bool) -> Self {
        let messages = Value::Array(chat_messages(&request.turns));
        let mut request_part = json!({
            "prompt_sha256": sha256_hex(&to_canonical_bytes(&messages)),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        });
        if store_text {
            request_part["messages"] = messages;
        }
        let mut body = serde_json::Map::new();
        body.insert("caller".into(), json!({"id": request.facts.caller, "key_id": request.facts.key_id, "role": request.facts.role}));
        body.insert("system".into(), json!({"id": system.reference.id, "version": system.reference.version, "digest": system.digest}));
        body.insert(
            "policy".into(),
            json!({
                "id": system.policy.reference.id,
                "version": system.policy.reference.version,
                "digest": system.policy.digest,
            }),
        );
        body.insert("request".into(), request_part);
        body.insert("route".into(), json!({"input": route_input, "decision": route}));
        EntryBuilder { body, attempts: Vec::new(), system_id: system.reference.id.clone(), store_text }
    }

    pub fn push_attempt(&mut self, tier: &TierRoute, attempt: &Attempt, accept: &GateDecision) {
        let (prompt_tokens, completion_tokens) = attempt.generation.as_ref().map_or((0, 0), |g| (g.prompt_tokens, g.completion_tokens));
        self.attempts.push(json!({
            "tier": tier.index,
            "tier_name": tier.name,
            "model": {
                "id": tier.model.id,
                "version": tier.model.version,
                "digest": tier.model_digest,
                "weights_sha256": tier.weights_sha256,
                "loaded_weights_sha256": tier.loaded_weights_sha256,
            },
            "decoding": attempt.decoding,
            "signals": attempt.signals,
            "confidence_model": tier.confidence.as_ref().map(|m| m.citation()),
            "tokens": {"prompt": prompt_tokens, "completion": completion_tokens},
            "latency_ms": (attempt.latency_ms * 1000.0).round() / 1000.0,
            "cost": tier.cost(prompt_tokens, completion_tokens),
            "error": attempt.error,
            "answer_sha256": attempt.generation.as_ref().map(|g| sha256_hex(g.text.as_bytes())),
            "accept": {"input": attempt.accept_input, "decision": accept},
        }));
    }

    /// The shadow bundle's decisions on this request (route, and accept per attempt, in order):
    /// recorded for comparison, never acted on.
    pub fn set_shadow(&mut self, shadow: &CompiledBundle, route: GateDecision, accepts: Vec<GateDecision>) {
        self.body.insert(
            "shadow".into(),
            json!({
                "policy": {"id": shadow.reference.id, "version": shadow.reference.version, "digest": shadow.digest},
                "route": route,
                "accepts": accepts,
            }),
        );
    }

    /// The request's part in a running experiment: its arm, and whether it counts.
    pub fn set_experiment(&mut self, experiment: Value) {
        self.body.insert("experiment".into(), experiment);
    }

    /// `latency_ms`: from the route gate to the answer, before the ledger commit.
    pub fn finish(mut self, request_id: &str, outcome: Outcome, answer: Option<&ServedAnswer>, escalated: bool, latency_ms: f64) -> EntryDraft {
        self.body.insert("attempts".into(), Value::Array(self.attempts));
        self.body.insert("latency_ms".into(), json!((latency_ms * 1000.0).round() / 1000.0));
        self.body.insert("outcome".into(), json!(outcome.as_str()));
        self.body.insert("escalated".into(), json!(escalated));
        self.body.insert("served_tier".into(), json!(answer.map(|a| a.tier)));
        self.body.insert("answer_sha256".into(), json!(answer.map(|a| sha256_hex(a.text.as_bytes()))));
        if self.store_text {
            self.body.insert("answer".into(), json!(answer.map(|a| a.text.clone())));
        }
        EntryDraft {
            entry_type: "inference",
            request_id: request_id.to_owned(),
            system_id: Some(self.system_id),
            outcome: outcome.as_str().to_owned(),
            body: Value::Object(self.body),
        }
    }
}
