//! Replay: what a candidate policy would have decided on recorded traffic, from the gate inputs
//! the ledger keeps, compared with what was decided. Also the shadow-mode report.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;

use super::{CompiledBundle, Gate, GateDecision};

/// Per-1k-token prices of each tier of a system card version (`id@version`), for estimating
/// the cost of a tier a request never reached.
pub type TierPrices = HashMap<String, Vec<Option<(f64, f64)>>>;

/// One gate decision on a path.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Step {
    /// `route`, or the tier index the accept gate ran on.
    pub gate: String,
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<usize>,
    pub reasons: Vec<String>,
}

/// Where one request went (or would have gone) through the tiers.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DecisionPath {
    pub steps: Vec<Step>,
    /// `served`, `denied`, `held_for_review`, or `unrecorded` when the path needs a tier that
    /// never ran for this request (its answer, and so its accept decision, is unknown).
    pub outcome: String,
    pub served_tier: Option<usize>,
    /// More than one tier was (or would be) run.
    pub escalated: bool,
    /// From the recorded token counts and the model cards' prices; a tier that never ran is
    /// estimated from the request's recorded prompt and completion tokens.
    pub cost: f64,
    pub cost_estimated: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RequestDifference {
    pub index: u64,
    pub request_id: String,
    /// System card `id@version` that served the request.
    pub system: String,
    pub before: DecisionPath,
    pub after: DecisionPath,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Totals {
    pub escalation_rate: f64,
    /// Share of requests served by the tier the route gate started on (no escalation).
    pub containment_rate: f64,
    pub cost: f64,
    pub outcomes: BTreeMap<String, usize>,
    /// How often each reason was given, over every decision on every path.
    pub reasons: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplayReport {
    /// The candidate bundle `id@version` (or the shadow's).
    pub candidate: String,
    pub requests: usize,
    pub differing: usize,
    /// Requests whose candidate path needs a tier that never ran (see `DecisionPath::outcome`).
    pub unrecorded: usize,
    /// Entries in the range that could not be replayed (no recorded gate input).
    pub skipped: usize,
    pub before: Totals,
    pub after: Totals,
    /// Every request where the candidate decides differently, in ledger order.
    pub differences: Vec<RequestDifference>,
}

/// Replays `entries` (ledger entries, any type; only inference entries count) against
/// `candidate`, evaluating its gates on the recorded inputs.
pub fn replay<'a>(entries: &'a [Value], candidate: &'a CompiledBundle, prices: &TierPrices) -> ReplayReport {
    let label = candidate.reference.to_string();
    compare(entries, &label, prices, |entry| {
        let tier_count = tier_count(entry)?;
        let route = candidate.evaluate(Gate::Route, entry.pointer("/route/input")?, tier_count);
        let accept: AcceptGate<'a> =
            Box::new(move |attempt: &Value| attempt.pointer("/accept/input").map(|input| candidate.evaluate(Gate::Accept, input, tier_count)));
        Some((route, accept))
    })
}

/// The accept gate's decision on one recorded attempt, as a candidate policy would make it.
type AcceptGate<'a> = Box<dyn Fn(&Value) -> Option<GateDecision> + 'a>;

/// The shadow report: the decisions a shadow bundle made on live requests (recorded beside
/// the active policy's, never acted on), compared like a replay.
pub fn shadow_report(entries: &[Value], shadow: &str, prices: &TierPrices) -> ReplayReport {
    let shadowed: Vec<Value> = entries.iter().filter(|e| e.pointer("/shadow/policy").map(reference_of).as_deref() == Some(shadow)).cloned().collect();
    compare(&shadowed, shadow, prices, |entry| {
        let route = decision(entry.pointer("/shadow/route")?)?;
        let accepts: Vec<Option<GateDecision>> =
            entry.pointer("/shadow/accepts").and_then(Value::as_array).map(|a| a.iter().map(decision).collect()).unwrap_or_default();
        let attempts = entry.get("attempts").and_then(Value::as_array).cloned().unwrap_or_default();
        let accept: AcceptGate = Box::new(move |attempt: &Value| {
            let position = attempts.iter().position(|a| a == attempt)?;
            accepts.get(position).cloned().flatten()
        });
        Some((route, accept))
    })
}

type Decider<'a> = (GateDecision, AcceptGate<'a>);

fn compare<'a>(entries: &'a [Value], candidate: &str, prices: &TierPrices, decide: impl Fn(&'a Value) -> Option<Decider<'a>>) -> ReplayReport {
    let mut report = ReplayReport {
        candidate: candidate.to_owned(),
        requests: 0,
        differing: 0,
        unrecorded: 0,
        skipped: 0,
        before: Totals::default(),
        after: Totals::default(),
        differences: Vec::new(),
    };
    let (mut escalated, mut contained) = ([0usize; 2], [0usize; 2]);
    for entry in entries.iter().filter(|e| e.get("type").and_then(Value::as_str) == Some("inference")) {
        let Some((route, accept)) = decide(entry) else {
            report.skipped += 1;
            continue;
        };
        let before = recorded_path(entry);
        let after = candidate_path(entry, route, &*accept, prices);
        report.requests += 1;
        report.unrecorded += usize::from(after.outcome == "unrecorded");
        for (slot, (path, totals)) in [(&before, &mut report.before), (&after, &mut report.after)].into_iter().enumerate() {
            totals.cost += path.cost;
            *totals.outcomes.entry(path.outcome.clone()).or_default() += 1;
            for reason in path.steps.iter().flat_map(|s| &s.reasons) {
                *totals.reasons.entry(reason.clone()).or_default() += 1;
            }
            escalated[slot] += usize::from(path.escalated);
            contained[slot] += usize::from(path.outcome == "served" && !path.escalated);
        }
        if decisions_differ(&before, &after) {
            report.differing += 1;
            report.differences.push(RequestDifference {
                index: entry.get("index").and_then(Value::as_u64).unwrap_or_default(),
                request_id: entry.get("request_id").and_then(Value::as_str).unwrap_or_default().to_owned(),
                system: entry.get("system").map(reference_of).unwrap_or_default(),
                before,
                after,
            });
        }
    }
    let share = |count: usize| if report.requests == 0 { 0.0 } else { count as f64 / report.requests as f64 };
    report.before.escalation_rate = share(escalated[0]);
    report.after.escalation_rate = share(escalated[1]);
    report.before.containment_rate = share(contained[0]);
    report.after.containment_rate = share(contained[1]);
    report
}

fn decisions_differ(before: &DecisionPath, after: &DecisionPath) -> bool {
    let actions = |path: &DecisionPath| path.steps.iter().map(|s| (s.gate.clone(), s.action.clone(), s.tier)).collect::<Vec<_>>();
    actions(before) != actions(after) || before.outcome != after.outcome || before.served_tier != after.served_tier
}

/// The path the request took, from the decisions recorded in its entry.
fn recorded_path(entry: &Value) -> DecisionPath {
    let mut steps = Vec::new();
    if let Some(route) = entry.pointer("/route/decision").and_then(decision) {
        steps.push(step("route".into(), &route));
    }
    let attempts = entry.get("attempts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let mut cost = 0.0;
    for attempt in attempts {
        if let Some(accept) = attempt.pointer("/accept/decision").and_then(decision) {
            steps.push(step(tier_of(attempt).to_string(), &accept));
        }
        cost += attempt.get("cost").and_then(Value::as_f64).unwrap_or_default();
    }
    DecisionPath {
        steps,
        outcome: entry.get("outcome").and_then(Value::as_str).unwrap_or_default().to_owned(),
        served_tier: entry.get("served_tier").and_then(Value::as_u64).map(|t| t as usize),
        escalated: attempts.len() > 1,
        cost,
        cost_estimated: false,
    }
}

/// The path the candidate would take, walking the tiers as the router does, on the attempts
/// that were recorded.
fn candidate_path(entry: &Value, route: GateDecision, accept: &dyn Fn(&Value) -> Option<GateDecision>, prices: &TierPrices) -> DecisionPath {
    let attempts = entry.get("attempts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let tier_count = tier_count(entry).unwrap_or(attempts.len());
    let mut path = DecisionPath {
        steps: vec![step("route".into(), &route)],
        outcome: "denied".into(),
        served_tier: None,
        escalated: false,
        cost: 0.0,
        cost_estimated: false,
    };
    let (true, Some(start)) = (route.action == "serve", route.tier) else {
        return path;
    };
    let mut visited = 0;
    for tier in start..tier_count {
        visited += 1;
        let Some(attempt) = attempts.iter().find(|a| tier_of(a) == tier) else {
            path.outcome = "unrecorded".into();
            path.cost += estimate(entry, attempts, tier, prices);
            path.cost_estimated = true;
            break;
        };
        path.cost += attempt.get("cost").and_then(Value::as_f64).unwrap_or_default();
        let Some(decision) = accept(attempt) else {
            path.outcome = "unrecorded".into();
            break;
        };
        path.steps.push(step(tier.to_string(), &decision));
        match decision.action.as_str() {
            "accept" => {
                path.outcome = "served".into();
                path.served_tier = Some(tier);
                break;
            }
            "escalate" if tier + 1 < tier_count => continue,
            "escalate" | "review" => {
                path.outcome = "held_for_review".into();
                break;
            }
            _ => {
                path.outcome = "denied".into();
                break;
            }
        }
    }
    path.escalated = visited > 1;
    path
}

/// Cost of a tier that never ran: its model card's prices applied to the request's recorded
/// prompt tokens and the completion tokens of the last tier that did run.
fn estimate(entry: &Value, attempts: &[Value], tier: usize, prices: &TierPrices) -> f64 {
    let system = entry.get("system").map(reference_of).unwrap_or_default();
    let Some(Some((input, output))) = prices.get(&system).and_then(|tiers| tiers.get(tier)) else {
        return 0.0;
    };
    let tokens = |which: &str| attempts.last().and_then(|a| a.pointer(&format!("/tokens/{which}"))).and_then(Value::as_f64).unwrap_or_default();
    (tokens("prompt") * input + tokens("completion") * output) / 1000.0
}

fn step(gate: String, decision: &GateDecision) -> Step {
    Step { gate, action: decision.action.clone(), tier: decision.tier, reasons: decision.reasons.clone() }
}

fn decision(value: &Value) -> Option<GateDecision> {
    serde_json::from_value(value.clone()).ok()
}

fn tier_of(attempt: &Value) -> usize {
    attempt.get("tier").and_then(Value::as_u64).unwrap_or_default() as usize
}

fn tier_count(entry: &Value) -> Option<usize> {
    entry.pointer("/route/input/system/tier_count").and_then(Value::as_u64).map(|n| n as usize)
}

/// `id@version` of a `{"id", "version"}` object.
fn reference_of(value: &Value) -> String {
    format!("{}@{}", value.get("id").and_then(Value::as_str).unwrap_or_default(), value.get("version").and_then(Value::as_i64).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use serde_json::json;

    use super::*;
    use crate::{policy::BundleSource, registry::ArtifactRef};

    fn bundle(rego: &str) -> CompiledBundle {
        let source = BundleSource { id: "c".into(), modules: BTreeMap::from([("p.rego".to_owned(), rego.to_owned())]), data: json!({}) };
        CompiledBundle::compile(&source, ArtifactRef::parse("c@2").unwrap(), "d".into(), Duration::from_millis(100)).unwrap()
    }

    fn decision(action: &str, tier: Option<usize>, reason: &str) -> Value {
        json!({"action": action, "tier": tier, "reasons": [reason], "eval_us": 1})
    }

    /// A request served on tier 0 by a policy that accepted confident answers.
    fn served_small(index: u64, mean: f64) -> Value {
        json!({
            "index": index, "type": "inference", "request_id": format!("r{index}"),
            "system": {"id": "s", "version": 1},
            "route": {"input": {"system": {"tier_count": 2}}, "decision": decision("serve", Some(0), "routine")},
            "attempts": [{
                "tier": 0, "cost": 0.5, "tokens": {"prompt": 100, "completion": 50},
                "accept": {"input": {"attempt": {"tier": 0, "mean": mean}}, "decision": decision("accept", None, "confident")},
            }],
            "outcome": "served", "served_tier": 0,
        })
    }

    #[test]
    fn a_stricter_candidate_escalates_and_the_unrun_tier_is_estimated() {
        let strict = bundle(
            "package tiergate\nimport rego.v1\nroute := {\"action\": \"serve\", \"tier\": 0, \"reasons\": [\"routine\"]}\n\
             accept := {\"action\": \"accept\", \"reasons\": [\"confident\"]} if input.attempt.mean >= -0.1\n\
             accept := {\"action\": \"escalate\", \"reasons\": [\"unsure\"]} if input.attempt.mean < -0.1\n",
        );
        let entries = vec![served_small(0, -0.05), served_small(1, -0.3), json!({"index": 2, "type": "governance"})];
        let prices: TierPrices = [("s@1".to_owned(), vec![Some((1.0, 2.0)), Some((10.0, 20.0))])].into();

        let report = replay(&entries, &strict, &prices);

        assert_eq!((report.requests, report.differing, report.unrecorded, report.skipped), (2, 1, 1, 0));
        assert_eq!(report.before.escalation_rate, 0.0);
        assert_eq!(report.after.escalation_rate, 0.5);
        assert_eq!(report.before.containment_rate, 1.0);
        assert_eq!(report.after.containment_rate, 0.5);
        // Before: two recorded attempts at 0.5. After: the same two, plus tier 1 for request 1
        // estimated at (100 × 10 + 50 × 20) / 1000 = 2.0.
        assert_eq!(report.before.cost, 1.0);
        assert_eq!(report.after.cost, 3.0);
        assert_eq!(report.after.reasons["unsure"], 1);
        assert_eq!(report.before.reasons["confident"], 2);
        let difference = &report.differences[0];
        assert_eq!(difference.index, 1);
        assert_eq!(difference.after.outcome, "unrecorded");
        assert!(difference.after.cost_estimated);
        assert_eq!(difference.before.outcome, "served");
    }

    #[test]
    fn the_same_policy_replays_without_differences() {
        let same = bundle(
            "package tiergate\nimport rego.v1\nroute := {\"action\": \"serve\", \"tier\": 0, \"reasons\": [\"routine\"]}\n\
             accept := {\"action\": \"accept\", \"reasons\": [\"confident\"]}\n",
        );

        let report = replay(&[served_small(0, -0.05), served_small(1, -0.3)], &same, &TierPrices::new());

        assert_eq!((report.requests, report.differing), (2, 0));
        assert_eq!(report.after.cost, report.before.cost);
    }

    #[test]
    fn a_candidate_that_errors_is_replayed_as_failing_closed() {
        let broken = bundle("package tiergate\nimport rego.v1\nroute := {\"action\": \"launch\"}\n");

        let report = replay(&[served_small(0, -0.05)], &broken, &TierPrices::new());

        assert_eq!(report.differing, 1);
        assert_eq!(report.after.outcomes["denied"], 1);
        assert!(report.differences[0].after.steps[0].reasons[0].contains("failed closed"));
    }
}
