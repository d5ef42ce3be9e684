//! What a running experiment adds to one request, against the route gate every request already
//! pays, measured in the same run: the sticky assignment (HMAC-SHA256 of the experiment id and
//! the unit) with the `input.experiment` and ledger objects it builds, and, for requests
//! assigned to the treatment, the second route evaluation (the treatment's own policy).
//!
//! Also, as the route gate's own before/after: the same bundle evaluated the way tiergate did
//! before 2026-12-08, cloning a regorus engine that was never prepared, so that every clone
//! re-analysed the modules.
//!
//! cargo run --example experiment_assignment [-- --iterations 200000]

use std::{hint::black_box, path::Path, time::Instant};

use serde_json::json;
use tiergate::{
    experiment::{assign, percent_to_ppm},
    policy::{BundleSource, CompiledBundle, Gate},
    registry::ArtifactRef,
};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let iterations = arg("--iterations", 200_000);
    let source = BundleSource::from_dir(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/tiergate-default")))?;
    let policy = CompiledBundle::compile(
        &source,
        ArtifactRef { id: "tiergate-default".into(), version: 1 },
        String::new(),
        std::time::Duration::from_secs(1),
    )?;
    // The route input the router builds for a support-triage request.
    let input = json!({
        "request": {"caller": "support-app", "key_id": "k_3f2a", "role": "app", "scopes": ["*"], "use_case": "account-help", "stakes": "normal",
                    "data_class": null, "metadata": {"user": "user-1234"}, "prompt_chars": 182, "message_count": 2},
        "system": {"id": "support-triage", "version": 1, "tier_count": 2,
                   "tiers": [{"name": "small", "model": "smollm2-135m-instruct@1"}, {"name": "large", "model": "gemma3-270m@1"}]},
        "thresholds": {"min_mean_logprob": -1.22, "min_p_correct_by_tier": [0.17, null]},
        "experiment": {"id": "triage-v2-canary", "version": 1, "arm": "treatment", "treatment_percent": 5.0, "unit": "user"},
    });

    let route_rounds = (iterations / 20).max(1000);
    for _ in 0..route_rounds / 10 {
        black_box(policy.evaluate(Gate::Route, &input, 2));
    }
    let started = Instant::now();
    for _ in 0..route_rounds {
        black_box(policy.evaluate(Gate::Route, black_box(&input), 2));
    }
    let route_ns = started.elapsed().as_nanos() as f64 / route_rounds as f64;

    // The old path: a clone of an unprepared engine per evaluation.
    let mut unprepared = regorus::Engine::new();
    for (name, text) in &source.modules {
        unprepared.add_policy(name.clone(), text.clone())?;
    }
    unprepared.add_data(regorus::Value::from(source.data.clone()))?;
    let old_rounds = (route_rounds / 20).max(100);
    let started = Instant::now();
    for _ in 0..old_rounds {
        let mut engine = unprepared.clone();
        engine.set_input(regorus::Value::from(input.clone()));
        black_box(engine.eval_rule("data.tiergate.route".to_owned())?);
    }
    let old_route_ns = started.elapsed().as_nanos() as f64 / old_rounds as f64;

    let key = [7u8; 32];
    let ppm = percent_to_ppm(5.0);
    let units: Vec<String> = (0..1024).map(|i| format!("user-{i}")).collect();
    let started = Instant::now();
    let mut treated = 0usize;
    for i in 0..iterations {
        let unit = &units[i % units.len()];
        let arm = assign(black_box(&key), "triage-v2-canary", unit, ppm);
        treated += usize::from(arm == tiergate::experiment::Arm::Treatment);
        // The two small objects a request of an experiment carries.
        black_box(json!({"id": "triage-v2-canary", "version": 1, "arm": arm.as_str(), "treatment_percent": 5.0, "unit": "user"}));
        black_box(
            json!({"id": "triage-v2-canary", "version": 1, "digest": "sha256:00", "arm": arm.as_str(), "assigned_arm": arm.as_str(), "excluded": null}),
        );
    }
    let assign_ns = started.elapsed().as_nanos() as f64 / iterations as f64;

    println!("route gate evaluation, unprepared engine (old): {:>9.0} ns", old_route_ns);
    println!("route gate evaluation (every request):        {:>9.0} ns  = {:.3}x the old path", route_ns, route_ns / old_route_ns);
    println!("assignment + its two objects (experiment):     {:>9.0} ns  = {:.3}x a route evaluation", assign_ns, assign_ns / route_ns);
    println!("treatment-assigned requests: one more route evaluation = 1.000x ({:.1}% of units here)", 100.0 * treated as f64 / iterations as f64);
    Ok(())
}
