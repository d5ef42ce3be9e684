//! The tier pipeline: route gate → tier → accept gate → (escalate …) → one ledger entry. No HTTP, no SQL.

pub mod drift;
mod entry;
mod guard;
mod loader;
mod system;

pub use drift::{DriftMonitor, DriftSettings};
pub use guard::{CircuitState, GuardLimits, Refusal};
pub use loader::{LoaderSettings, SystemLoader};
pub use system::{SystemRoute, TierRoute};

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, PoisonError, RwLock},
    time::Instant,
};

use serde::Serialize;
use serde_json::{Value, json};
use tracing::Instrument;

use crate::{
    confidence::monitor::{CalibrationMonitor, CalibrationSettings, CalibrationState},
    experiment::{Assignment, ExperimentRoute},
    inference::{DecodingProfile, PromptTooLong, Signals, Turn},
    ledger::Ledger,
    metrics::Metrics,
    policy::{CompiledBundle, Gate, GateDecision},
    registry::ArtifactRef,
};

/// Facts about the caller and the request that policies may use.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestFacts {
    /// The subject of the API key that made the request.
    pub caller: String,
    /// The key's public id (never its secret).
    pub key_id: String,
    pub role: String,
    /// The systems the key may call (`*` = all).
    pub scopes: Vec<String>,
    pub use_case: Option<String>,
    pub stakes: Option<String>,
    pub data_class: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// A validated chat request addressed to a system.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub system_id: String,
    pub turns: Vec<Turn>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    /// Alternatives to report per generated token (OpenAI's `top_logprobs`); 0 for none.
    pub top_logprobs: u8,
    pub facts: RequestFacts,
}

impl ChatRequest {
    /// Characters over all messages: a policy input and a drift signal.
    pub fn prompt_chars(&self) -> usize {
        self.turns.iter().map(|t| t.content.chars().count()).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Served,
    Denied,
    HeldForReview,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Served => "served",
            Outcome::Denied => "denied",
            Outcome::HeldForReview => "held_for_review",
        }
    }
}

/// One tier's attempt, as reported to the caller.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptSummary {
    pub tier: usize,
    pub tier_name: String,
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signals: Option<Signals>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A machine-readable kind of `error`, when it has one (`context_length_exceeded`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    pub decision: String,
    pub reasons: Vec<String>,
    pub latency_ms: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// From the model card's prices and the real token counts; `None` when the card has none.
    pub cost: Option<f64>,
}

/// The answer served (only when the outcome is `Served`).
#[derive(Debug, Clone)]
pub struct ServedAnswer {
    pub tier: usize,
    pub tier_name: String,
    pub text: String,
    pub finish_reason: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The chosen tokens with their log-probabilities and, when asked, their alternatives
    /// (token text may be empty when unknown).
    pub tokens: Vec<TokenChoice>,
}

/// One generated token: its text, log-probability and the most likely alternatives, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenChoice {
    pub token: String,
    pub logprob: f32,
    pub alternatives: Vec<(String, f32)>,
}

/// Everything the caller learns about how the request was handled.
#[derive(Debug, Clone)]
pub struct Routed {
    pub outcome: Outcome,
    pub answer: Option<ServedAnswer>,
    /// The answer held for human review (outcome `HeldForReview`): returned flagged, and queued.
    pub held_answer: Option<ServedAnswer>,
    pub escalated: bool,
    pub reasons: Vec<String>,
    pub attempts: Vec<AttemptSummary>,
    pub ledger_index: u64,
    pub system: String,
    pub policy: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("no active system card {0:?}")]
    UnknownSystem(String),
    /// The active version could not be loaded (its weights, model or policy were refused).
    #[error("system {system} cannot be served: {reason}")]
    SystemUnavailable { system: String, reason: String },
    #[error("{0}")]
    InvalidRequest(String),
    /// The ledger could not record the request: nothing is served (fail closed).
    #[error("the ledger cannot record requests right now")]
    LedgerUnavailable(#[source] anyhow::Error),
    /// The starting tier's queue is full: back off and retry (nothing ran, nothing recorded).
    #[error("tier {tier} of {system} is at capacity: {refusal}")]
    Overloaded { system: String, tier: usize, refusal: Refusal },
}

/// Routes requests through the active systems. Built at start-up and shared; activation and
/// rollback swap a system's route in place, and requests already running keep the route they
/// started with.
#[derive(Debug)]
pub struct Router {
    systems: RwLock<HashMap<String, Arc<SystemRoute>>>,
    /// Active versions that could not be loaded, with why, by system id: refused with that
    /// reason instead of "unknown", and not retried until a restart or another activation.
    refused: RwLock<HashMap<String, (ArtifactRef, String)>>,
    /// Candidate bundles evaluated beside a system's own policy, recorded, never acted on.
    shadows: RwLock<HashMap<String, Arc<CompiledBundle>>>,
    /// The running experiment of each system that has one.
    experiments: RwLock<HashMap<String, Arc<ExperimentRoute>>>,
    ledger: Arc<Ledger>,
    store_text: bool,
    metrics: Arc<Metrics>,
    drift: std::sync::Mutex<DriftMonitor>,
    calibration: std::sync::Mutex<CalibrationMonitor>,
}

impl Router {
    pub fn new(systems: Vec<SystemRoute>, ledger: Arc<Ledger>, store_text: bool, metrics: Arc<Metrics>, drift: DriftSettings) -> Router {
        let systems = systems.into_iter().map(|s| (s.reference.id.clone(), Arc::new(s))).collect();
        Router {
            systems: RwLock::new(systems),
            refused: RwLock::new(HashMap::new()),
            shadows: RwLock::new(HashMap::new()),
            experiments: RwLock::new(HashMap::new()),
            ledger,
            store_text,
            metrics,
            drift: std::sync::Mutex::new(DriftMonitor::new(drift)),
            calibration: std::sync::Mutex::new(CalibrationMonitor::new(CalibrationSettings::default())),
        }
    }

    /// Judges tiers' P(correct) against labelled answers with these settings.
    pub fn with_calibration(self, settings: CalibrationSettings) -> Router {
        Router { calibration: std::sync::Mutex::new(CalibrationMonitor::new(settings)), ..self }
    }

    /// Calibration of every tier with a confidence model that has labelled answers, by
    /// `system/tier`, on this replica.
    pub fn calibration_report(&self) -> BTreeMap<String, CalibrationState> {
        self.calibration.lock().unwrap_or_else(PoisonError::into_inner).report()
    }

    /// A served answer was labelled right or wrong (feedback, or a review verdict on a held
    /// one): compares its P(correct) with the outcome, publishes the tier's calibration, and
    /// records a crossing of the threshold as a governance entry (`calibration_alert` or
    /// `calibration_recovered`) naming the confidence model version.
    pub fn observe_label(&self, entry: &Value, correct: bool) {
        let Some(system) = entry.pointer("/system/id").and_then(Value::as_str) else { return };
        let Some(attempt) = crate::confidence::labels::judged_attempt(entry) else { return };
        let (Some(p), Some(model), Some(tier)) = (
            attempt.pointer("/signals/p_correct").and_then(Value::as_f64),
            attempt.get("confidence_model").filter(|m| !m.is_null()),
            attempt.get("tier").and_then(Value::as_u64),
        ) else {
            return;
        };
        let model_ref = format!("{}@{}", model["id"].as_str().unwrap_or_default(), model["version"]);
        let tier = tier as usize;
        let (state, event) = self.calibration.lock().unwrap_or_else(PoisonError::into_inner).observe(system, tier, &model_ref, p, correct);
        let tier_label = tier.to_string();
        if let Some(ece) = state.ece {
            self.metrics.confidence_ece.with_label_values(&[system, &tier_label, &model_ref]).set(ece);
        }
        for bin in &state.bins {
            let bin_label = format!("{:.1}", bin.from);
            for (quantity, value) in [("predicted", &bin.mean_predicted), ("observed", &bin.observed_accuracy)] {
                if let Some(value) = value {
                    self.metrics.confidence_bin.with_label_values(&[system, &tier_label, &bin_label, quantity]).set(*value);
                }
            }
        }
        if let Some(event) = event {
            tracing::warn!(system, tier, confidence_model = %model_ref, ece = event.ece, state = event.state, "calibration threshold crossed");
            let name = format!("calibration_{}", event.state);
            let draft = crate::ledger::EntryDraft {
                entry_type: "governance",
                request_id: format!("calibration-{}", uuid::Uuid::now_v7()),
                system_id: Some(system.to_owned()),
                outcome: name.clone(),
                body: json!({
                    "event": name,
                    "artifact": {"kind": "confidence_model", "id": model["id"], "version": model["version"], "digest": model["digest"]},
                    "system": entry.get("system"),
                    "actor": {"id": "tiergate-calibration-monitor", "replica": self.ledger.replica()},
                    "calibration": event,
                }),
            };
            let ledger = self.ledger.clone();
            tokio::spawn(async move {
                if let Err(error) = ledger.append(draft).await {
                    tracing::error!(error = ?error, "recording a calibration event in the ledger failed");
                }
            });
        }
    }

    /// Drift of every system's confidence and prompt length on this replica.
    pub fn drift_report(&self) -> BTreeMap<String, BTreeMap<&'static str, drift::SignalDrift>> {
        self.drift.lock().unwrap_or_else(std::sync::PoisonError::into_inner).report()
    }

    /// Feeds the drift monitor; a threshold crossing becomes a governance entry in the ledger
    /// (`drift_alert` or `drift_recovered`),
    /// written in the background so that the request does not wait for it.
    fn observe_drift(&self, system: &SystemRoute, attempts: &[AttemptSummary], prompt_chars: usize) {
        let confidence = attempts.first().and_then(|a| a.signals.as_ref()).map(|s| s.mean_logprob);
        let (psis, events) = self.drift.lock().unwrap_or_else(std::sync::PoisonError::into_inner).observe(
            &system.reference.id,
            &system.reference.to_string(),
            confidence,
            prompt_chars as f64,
        );
        for (signal, psi) in psis {
            self.metrics.drift_psi.with_label_values(&[&system.reference.id, signal]).set(psi);
        }
        for event in events {
            tracing::warn!(system = %event.system, signal = event.signal, psi = event.psi, state = event.state, "drift threshold crossed");
            // A governance event like an activation: it names the system card version it is
            // about (by digest, so audit bundles include it) and who raised it.
            let name = format!("drift_{}", event.state);
            let draft = crate::ledger::EntryDraft {
                entry_type: "governance",
                request_id: format!("drift-{}", uuid::Uuid::now_v7()),
                system_id: Some(event.system.clone()),
                outcome: name.clone(),
                body: json!({
                    "event": name,
                    "artifact": {"kind": "system_card", "id": system.reference.id, "version": system.reference.version, "digest": system.digest},
                    "actor": {"id": "tiergate-drift-monitor", "replica": self.ledger.replica()},
                    "drift": event,
                }),
            };
            let ledger = self.ledger.clone();
            tokio::spawn(async move {
                if let Err(error) = ledger.append(draft).await {
                    tracing::error!(error = ?error, "recording a drift event in the ledger failed");
                }
            });
        }
    }

    pub fn system_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.read_systems().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Every system served now, by id.
    pub fn systems(&self) -> Vec<Arc<SystemRoute>> {
        let mut systems: Vec<Arc<SystemRoute>> = self.read_systems().values().cloned().collect();
        systems.sort_by(|a, b| a.reference.id.cmp(&b.reference.id));
        systems
    }

    /// The version each system serves now, by system id.
    pub fn serving(&self, id: &str) -> Option<ArtifactRef> {
        self.read_systems().get(id).map(|s| s.reference.clone())
    }

    /// Serves `route` for its system from the next request on.
    pub fn install(&self, route: SystemRoute) {
        let mut systems = self.systems.write().unwrap_or_else(PoisonError::into_inner);
        tracing::info!(system = %route.reference, "now serving");
        self.refused.write().unwrap_or_else(PoisonError::into_inner).remove(&route.reference.id);
        systems.insert(route.reference.id.clone(), Arc::new(route));
    }

    /// Records that the active `version` of a system could not be loaded, and why.
    pub fn refuse(&self, version: ArtifactRef, reason: String) {
        tracing::error!(system = %version, reason = %reason, "active system cannot be served");
        self.refused.write().unwrap_or_else(PoisonError::into_inner).insert(version.id.clone(), (version, reason));
    }

    /// Whether loading `version` already failed (it is not tried again on every sync).
    pub fn is_refused(&self, version: &ArtifactRef) -> bool {
        self.refused.read().unwrap_or_else(PoisonError::into_inner).get(&version.id).is_some_and(|(refused, _)| refused == version)
    }

    /// Attaches (or, with `None`, detaches) a shadow bundle to a system.
    pub fn set_shadow(&self, system: &str, bundle: Option<Arc<CompiledBundle>>) {
        let mut shadows = self.shadows.write().unwrap_or_else(PoisonError::into_inner);
        match bundle {
            Some(bundle) => shadows.insert(system.to_owned(), bundle),
            None => shadows.remove(system),
        };
    }

    pub fn shadow(&self, system: &str) -> Option<Arc<CompiledBundle>> {
        self.shadows.read().unwrap_or_else(PoisonError::into_inner).get(system).cloned()
    }

    /// Runs `experiment` on its system from the next request on (or, with `None`, ends the
    /// system's experiment: all traffic to the active version).
    pub fn set_experiment(&self, system: &str, experiment: Option<Arc<ExperimentRoute>>) {
        let mut experiments = self.experiments.write().unwrap_or_else(PoisonError::into_inner);
        match experiment {
            Some(experiment) => {
                tracing::info!(system, experiment = %experiment.reference, treatment_percent = crate::experiment::ppm_to_percent(experiment.treatment_ppm), "experiment running");
                experiments.insert(system.to_owned(), experiment)
            }
            None => experiments.remove(system),
        };
    }

    pub fn experiment(&self, system: &str) -> Option<Arc<ExperimentRoute>> {
        self.experiments.read().unwrap_or_else(PoisonError::into_inner).get(system).cloned()
    }

    /// Every running experiment on this replica, by system id.
    pub fn experiments(&self) -> Vec<(String, Arc<ExperimentRoute>)> {
        let experiments = self.experiments.read().unwrap_or_else(PoisonError::into_inner);
        experiments.iter().map(|(system, experiment)| (system.clone(), experiment.clone())).collect()
    }

    fn read_systems(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<SystemRoute>>> {
        // A panic while holding the lock cannot leave the map half-changed (insert is one step).
        self.systems.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn observe(&self, system: &str, outcome: Outcome, answer: Option<&ServedAnswer>, attempts: &[AttemptSummary], started: Instant) {
        let m = &self.metrics;
        let tier_served = answer.map_or_else(|| "none".to_owned(), |a| a.tier.to_string());
        m.requests.with_label_values(&[system, outcome.as_str(), &tier_served]).inc();
        if attempts.len() > 1 {
            m.escalated.with_label_values(&[system]).inc();
        } else if outcome == Outcome::Served {
            m.contained.with_label_values(&[system]).inc();
        }
        m.request_seconds.with_label_values(&[system]).observe(started.elapsed().as_secs_f64());
        for attempt in attempts {
            let tier = attempt.tier.to_string();
            m.tier_seconds.with_label_values(&[system, &tier]).observe(attempt.latency_ms / 1000.0);
            m.tokens.with_label_values(&[system, &tier, "prompt"]).inc_by(attempt.prompt_tokens);
            m.tokens.with_label_values(&[system, &tier, "completion"]).inc_by(attempt.completion_tokens);
            m.cost.with_label_values(&[system, &tier]).inc_by(attempt.cost.unwrap_or_default());
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The circuit state and queue length of every tier, by `system/tier`.
    pub fn tier_health(&self) -> BTreeMap<String, (CircuitState, usize)> {
        let systems = self.read_systems();
        systems
            .values()
            .flat_map(|s| s.tiers.iter().map(move |t| (format!("{}/{}", s.reference.id, t.index), (t.guard.circuit(), t.guard.queued()))))
            .collect()
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    #[tracing::instrument(name = "route_request", skip_all, fields(request_id = %request_id, system = %request.system_id, outcome, tier_served, escalated))]
    pub async fn handle(&self, request_id: &str, request: ChatRequest) -> Result<Routed, RoutingError> {
        // A halted ledger could not record the answer: refuse before any model runs.
        if let Some(contradiction) = self.ledger.contradiction() {
            return Err(RoutingError::LedgerUnavailable(crate::ledger::LedgerHalted(contradiction).into()));
        }
        let mut system = self.read_systems().get(&request.system_id).cloned().ok_or_else(|| {
            match self.refused.read().unwrap_or_else(PoisonError::into_inner).get(&request.system_id) {
                Some((version, reason)) => RoutingError::SystemUnavailable { system: version.to_string(), reason: reason.clone() },
                None => RoutingError::UnknownSystem(request.system_id.clone()),
            }
        })?;
        // A running experiment applies while its control is what the system serves.
        let experiment = self.experiment(&request.system_id).filter(|e| e.document.control == system.reference);
        let mut assignment =
            experiment.as_ref().map(|e| e.assign(&request.facts.caller, request.facts.metadata.get("user").map(String::as_str), request_id));
        let started = Instant::now();
        let (mut base_input, mut route) = self.route_gate(&system, &request, experiment.as_deref().zip(assignment.as_ref()))?;
        if let (Some(experiment), Some(assignment)) = (&experiment, assignment.as_mut()) {
            // The control's policy may keep a request on control (`"experiment": "control"`); it
            // decides so for either arm alike, so the kept requests leave both arms' comparison.
            if route.experiment.as_deref() == Some("control") && assignment.excluded.is_none() {
                assignment.excluded = Some("kept on control by the policy's route decision".into());
                assignment.arm = crate::experiment::Arm::Control;
            }
            if assignment.arm == crate::experiment::Arm::Treatment {
                system = experiment.treatment.clone();
                (base_input, route) = self.route_gate(&system, &request, Some((experiment, assignment)))?;
            }
        }
        let tier_count = system.tiers.len();
        let mut record = entry::EntryBuilder::new(&system, &request, base_input.clone(), route.clone(), self.store_text);
        if let (Some(experiment), Some(assignment)) = (&experiment, &assignment) {
            record.set_experiment(experiment.ledger_record(assignment));
        }
        let shadow = self.shadow(&system.reference.id);
        let shadow_route = shadow.as_ref().map(|s| s.evaluate(Gate::Route, &base_input, tier_count));
        let mut shadow_accepts = Vec::new();

        let mut attempts = Vec::new();
        let mut outcome = Outcome::Denied;
        let mut answer = None;
        let mut held_answer = None;
        let mut reasons = route.reasons.clone();
        if let (true, Some(start)) = (route.action == "serve", route.tier) {
            for tier in &system.tiers[start..] {
                let admission = match tier.guard.admit().await {
                    // Backpressure: when the first tier cannot take the request, nothing has run
                    // yet; the caller is told to retry rather than queued without bound.
                    Err(refusal @ Refusal::QueueFull(_)) if attempts.is_empty() => {
                        return Err(RoutingError::Overloaded { system: system.reference.to_string(), tier: tier.index, refusal });
                    }
                    other => other,
                };
                let attempt_span = tracing::info_span!(
                    "tier.attempt",
                    tier = tier.index,
                    tier_name = %tier.name,
                    model = %tier.model,
                    error = tracing::field::Empty,
                    decision = tracing::field::Empty,
                );
                let (attempt, accept) = self.attempt(&system, tier, &request, &base_input, admission).instrument(attempt_span.clone()).await;
                attempt_span.record("decision", accept.action.as_str());
                if let Some(error) = &attempt.error {
                    attempt_span.record("error", error.as_str());
                }
                self.metrics.policy_seconds.with_label_values(&["accept"]).observe(accept.eval_us as f64 / 1e6);
                record.push_attempt(tier, &attempt, &accept);
                if let Some(shadow) = &shadow {
                    shadow_accepts.push(shadow.evaluate(Gate::Accept, &attempt.accept_input, tier_count));
                }
                reasons = accept.reasons.clone();
                attempts.push(AttemptSummary {
                    tier: tier.index,
                    tier_name: tier.name.clone(),
                    model: tier.model.to_string(),
                    signals: attempt.signals.clone(),
                    error: attempt.error.clone(),
                    error_code: attempt.error_code,
                    decision: accept.action.clone(),
                    reasons: accept.reasons.clone(),
                    latency_ms: attempt.latency_ms,
                    prompt_tokens: attempt.generation.as_ref().map_or(0, |g| g.prompt_tokens),
                    completion_tokens: attempt.generation.as_ref().map_or(0, |g| g.completion_tokens),
                    cost: attempt.generation.as_ref().and_then(|g| tier.cost(g.prompt_tokens, g.completion_tokens)),
                });
                match accept.action.as_str() {
                    "accept" => {
                        outcome = Outcome::Served;
                        answer = attempt.served(tier, request.top_logprobs);
                        break;
                    }
                    "escalate" if tier.index + 1 < tier_count => continue,
                    "escalate" => {
                        // The policy asked for a tier that does not exist: treat as review, never as accept.
                        reasons.push("policy escalated from the last tier: held for human review".into());
                        outcome = Outcome::HeldForReview;
                        held_answer = attempt.served(tier, request.top_logprobs);
                        break;
                    }
                    "review" => {
                        outcome = Outcome::HeldForReview;
                        held_answer = attempt.served(tier, request.top_logprobs);
                        break;
                    }
                    _ => {
                        outcome = Outcome::Denied;
                        break;
                    }
                }
            }
        }
        let escalated = attempts.len() > 1;
        self.observe(&system.reference.id, outcome, answer.as_ref(), &attempts, started);
        if let (Some(experiment), Some(assignment)) = (&experiment, &assignment) {
            let arm = if assignment.excluded.is_some() { "excluded" } else { assignment.arm.as_str() };
            self.metrics.experiment_requests.with_label_values(&[&experiment.reference.id, arm, outcome.as_str()]).inc();
        }
        self.observe_drift(&system, &attempts, request.prompt_chars());
        if let (Some(shadow), Some(shadow_route)) = (&shadow, shadow_route) {
            record.set_shadow(shadow, shadow_route, shadow_accepts);
        }
        let draft = record.finish(request_id, outcome, answer.as_ref(), escalated, started.elapsed().as_secs_f64() * 1000.0);
        let commit_span = tracing::info_span!("ledger.commit", ledger_index = tracing::field::Empty);
        let appended = self.ledger.append(draft).instrument(commit_span.clone()).await.map_err(RoutingError::LedgerUnavailable)?;
        commit_span.record("ledger_index", appended.index);

        let span = tracing::Span::current();
        span.record("outcome", outcome.as_str());
        span.record("escalated", escalated);
        if let Some(answer) = &answer {
            span.record("tier_served", answer.tier);
        }
        Ok(Routed {
            outcome,
            answer,
            held_answer,
            escalated,
            reasons,
            attempts,
            ledger_index: appended.index,
            system: system.reference.to_string(),
            policy: system.policy.reference.to_string(),
        })
    }

    /// The route gate's input for `system` and its decision (with `input.experiment` when the
    /// request is part of a running experiment).
    fn route_gate(
        &self,
        system: &SystemRoute,
        request: &ChatRequest,
        experiment: Option<(&ExperimentRoute, &Assignment)>,
    ) -> Result<(Value, GateDecision), RoutingError> {
        system.check_request(request)?;
        let mut base_input = json!({
            "request": request_facts_input(request),
            "system": {
                "id": system.reference.id,
                "version": system.reference.version,
                "tier_count": system.tiers.len(),
                "tiers": system.tiers.iter().map(|t| json!({"name": t.name, "model": t.model.to_string()})).collect::<Vec<_>>(),
            },
            "thresholds": system.thresholds,
        });
        if let Some((experiment, assignment)) = experiment {
            base_input["experiment"] = experiment.policy_input(assignment);
        }
        let route_span = tracing::info_span!("policy.route", gate = "route", decision = tracing::field::Empty, start_tier = tracing::field::Empty);
        let route = route_span.in_scope(|| system.policy.evaluate(Gate::Route, &base_input, system.tiers.len()));
        route_span.record("decision", route.action.as_str());
        if let Some(tier) = route.tier {
            route_span.record("start_tier", tier);
        }
        self.metrics.policy_seconds.with_label_values(&["route"]).observe(route.eval_us as f64 / 1e6);
        Ok((base_input, route))
    }

    async fn attempt(
        &self,
        system: &SystemRoute,
        tier: &TierRoute,
        request: &ChatRequest,
        base_input: &Value,
        admission: Result<tokio::sync::SemaphorePermit<'_>, Refusal>,
    ) -> (Attempt, GateDecision) {
        let decoding = DecodingProfile {
            max_tokens: request.max_tokens.map_or(tier.decoding.max_tokens, |m| m.min(tier.decoding.max_tokens)),
            temperature: request.temperature.unwrap_or(tier.decoding.temperature),
            system_prompt: tier.decoding.system_prompt.clone(),
            prompt_format: tier.decoding.prompt_format.clone(),
            // The margin and entropy signals need alternatives; the caller gets only as many
            // as it asked for (`Attempt::served`).
            top_logprobs: request.top_logprobs.max(crate::inference::SIGNAL_ALTERNATIVES),
        };
        let started = Instant::now();
        let result = match admission {
            // Not run (circuit open, or a later tier's queue full): the policy decides what next.
            Err(refusal) => Err(anyhow::anyhow!("tier {} was not run: {refusal}", tier.index)),
            Ok(_slot) => {
                // The self-check is part of the attempt: under the same slot and time budget.
                let generation = async {
                    let mut generation = tier.runtime.generate(&request.turns, &decoding).await?;
                    if system.self_check {
                        generation.self_check_yes = match tier.runtime.self_check(&request.turns, &generation.text, &decoding).await {
                            Ok(probability) => Some(probability),
                            Err(error) => {
                                tracing::warn!(tier = tier.index, error = %format!("{error:#}"), "self-check gave no signal");
                                None
                            }
                        };
                    }
                    anyhow::Ok(generation)
                };
                let result = match tier.time_budget {
                    Some(budget) => tokio::time::timeout(budget, generation)
                        .await
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("tier {} exceeded its time budget of {} ms", tier.index, budget.as_millis()))),
                    None => generation.await,
                };
                // A prompt too long for the model is the request's fault, not the tier's.
                tier.guard.record(result.as_ref().map_or_else(|error| PromptTooLong::in_error(error).is_some(), |_| true));
                result
            }
        };
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let attempt = match result {
            Ok(generation) => Attempt {
                signals: Some(signals_with_confidence(&generation, tier)),
                error: None,
                error_code: None,
                latency_ms,
                decoding,
                generation: Some(generation),
                accept_input: Value::Null,
            },
            Err(error) => {
                tracing::warn!(tier = tier.index, error = %format!("{error:#}"), "tier failed");
                Attempt {
                    signals: None,
                    error: Some(format!("{error:#}")),
                    error_code: PromptTooLong::in_error(&error).map(|_| "context_length_exceeded"),
                    latency_ms,
                    decoding,
                    generation: None,
                    accept_input: Value::Null,
                }
            }
        };
        let (prompt_tokens, completion_tokens) = attempt.generation.as_ref().map_or((0, 0), |g| (g.prompt_tokens, g.completion_tokens));
        let mut input = base_input.clone();
        input["attempt"] = json!({
            "tier": tier.index,
            "tier_name": tier.name,
            "tiers_left": system.tiers.len() - tier.index - 1,
            "error": attempt.error,
            "error_code": attempt.error_code,
            "latency_ms": attempt.latency_ms,
            "signals": attempt.signals,
            "confidence_model": tier.confidence.as_ref().map(|m| m.citation()),
            "cost": tier.cost(prompt_tokens, completion_tokens),
            // What the next tier would cost for as many tokens as this attempt used, from its
            // model card's prices: the price of escalating, for a policy weighing it against
            // the expected cost of a wrong answer.
            "next_tier_cost_estimate": system.tiers.get(tier.index + 1).and_then(|next| next.cost(prompt_tokens, completion_tokens)),
        });
        let accept_span = tracing::info_span!("policy.accept", gate = "accept", tier = tier.index, decision = tracing::field::Empty);
        let decision = accept_span.in_scope(|| system.policy.evaluate(Gate::Accept, &input, system.tiers.len()));
        accept_span.record("decision", decision.action.as_str());
        (Attempt { accept_input: input, ..attempt }, decision)
    }
}

/// What one tier did, before the accept gate.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub signals: Option<Signals>,
    pub error: Option<String>,
    pub error_code: Option<&'static str>,
    pub latency_ms: f64,
    pub decoding: DecodingProfile,
    pub generation: Option<crate::inference::Generation>,
    /// The accept gate's full input, kept in the ledger so a policy can be replayed on it.
    pub accept_input: Value,
}

impl Attempt {
    /// The answer as the caller gets it, with `top_logprobs` alternatives per token.
    fn served(&self, tier: &TierRoute, top_logprobs: u8) -> Option<ServedAnswer> {
        self.generation.as_ref().map(|g| ServedAnswer {
            tier: tier.index,
            tier_name: tier.name.clone(),
            text: g.text.clone(),
            finish_reason: g.finish_reason.clone(),
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion_tokens,
            tokens: g
                .token_logprobs
                .iter()
                .enumerate()
                .map(|(i, logprob)| TokenChoice {
                    token: g.token_texts.get(i).cloned().unwrap_or_default(),
                    logprob: *logprob,
                    alternatives: g
                        .token_alternatives
                        .get(i)
                        .map(|a| a.iter().take(usize::from(top_logprobs)).cloned().collect())
                        .unwrap_or_default(),
                })
                .collect(),
        })
    }
}

/// The attempt's signals, with P(correct) from the tier's confidence model when it has one.
fn signals_with_confidence(generation: &crate::inference::Generation, tier: &TierRoute) -> Signals {
    let mut signals = Signals::from_generation(generation);
    signals.p_correct = tier.confidence.as_ref().and_then(|model| model.predictor.predict(&signals)).map(|p| (p * 1e6).round() / 1e6);
    signals
}

fn request_facts_input(request: &ChatRequest) -> Value {
    json!({
        "caller": request.facts.caller,
        "key_id": request.facts.key_id,
        "role": request.facts.role,
        "scopes": request.facts.scopes,
        "use_case": request.facts.use_case.clone().unwrap_or_else(|| "general".into()),
        "stakes": request.facts.stakes.clone().unwrap_or_else(|| "normal".into()),
        "data_class": request.facts.data_class,
        "metadata": request.facts.metadata,
        "prompt_chars": request.prompt_chars(),
        "message_count": request.turns.len(),
    })
}
