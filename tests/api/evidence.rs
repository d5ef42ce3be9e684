//! `tiergate compare` and `tiergate calibrate`, run as the binary on the real model, and a
//! calibrated threshold applied through the governed policy lifecycle.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::helpers::{spawn_app_with, test_settings, user_message};

/// The first `n` items of `kind` from the shipped workload, as a workload file of their own.
fn workload(dir: &Path, kind: &str, n: usize) -> PathBuf {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/support-and-facts.jsonl")).unwrap();
    let path = dir.join("workload.jsonl");
    let marker = format!("\"kind\": \"{kind}\"");
    let items: String = shipped.lines().filter(|l| l.contains(&marker)).take(n).map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, items).unwrap();
    path
}

/// A config file for the binary with the test app's settings (cards, fixtures, data directory).
fn config(settings: &tiergate::config::Settings) -> PathBuf {
    std::fs::create_dir_all(&settings.data_dir).unwrap();
    let path = settings.data_dir.join("config.yaml");
    let config = json!({
        "data_dir": settings.data_dir,
        "cards_dirs": settings.cards_dirs,
        "policies_dir": settings.policies_dir,
    });
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

fn run(args: &[&str]) -> Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tiergate")).args(args).output().unwrap();
    assert!(output.status.success(), "tiergate {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)))
}

#[tokio::test(flavor = "multi_thread")]
async fn compare_measures_small_first_against_large_first_without_touching_the_deployment() {
    let settings = test_settings();
    let config = config(&settings);
    let out = settings.data_dir.join("out");
    let workload = workload(&settings.data_dir, "intent", 4);

    let report = run(&[
        "compare",
        "--config",
        config.to_str().unwrap(),
        "--system",
        "escalate-once",
        "--workload",
        workload.to_str().unwrap(),
        "--format",
        "json",
        "--out-dir",
        out.to_str().unwrap(),
    ]);

    let (small, large) = (&report["small_first"], &report["large_first"]);
    assert_eq!(small["requests"], 4);
    assert_eq!(large["requests"], 4);
    assert_eq!(small["system"], "escalate-once");
    assert_eq!(large["system"], "escalate-once-large-first");
    // escalate-once's first tier can never meet its threshold.
    assert_eq!(small["escalation_rate"], 1.0, "{small}");
    assert_eq!(small["containment_rate"], 0.0);
    assert_eq!(large["escalation_rate"], 0.0, "{large}");
    assert_eq!(large["containment_rate"], 0.0, "large-first never answers from the first tier");
    for mode in [small, large] {
        let latency = &mode["latency_ms"];
        assert!(latency["p50"].as_f64().unwrap() > 0.0 && latency["p50"].as_f64() <= latency["p99"].as_f64(), "{latency}");
        assert!(mode["throughput_rps"].as_f64().unwrap() > 0.0);
        let scored = mode["accuracy"]["scored"].as_u64().unwrap();
        assert_eq!(scored, mode["served"].as_u64().unwrap(), "every served answer of a labelled workload is scored");
    }
    let observed = report["observations"]["small_first"].as_array().unwrap();
    assert!(observed.iter().all(|o| o["escalated"] == true && o["tier_served"] == 1), "{observed:?}");
    let markdown = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(markdown.contains("| escalation rate | 100.0% | 0.0% |"), "{markdown}");
    let chart = std::fs::read_to_string(out.join("compare.svg")).unwrap();
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
    assert_eq!(chart.matches("<circle").count(), 8, "one dot per request and mode");
    assert!(!settings.data_dir.join("tiergate.db").exists(), "the run used a scratch database, not the deployment's");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_calibrated_threshold_applied_as_policy_data_reproduces_the_reported_escalation_rate() {
    let settings = test_settings();
    let config = config(&settings);
    // truncated-first: a 3-token first tier and a 24-token second one, so on short factual
    // questions escalating buys accuracy and the curve has a middle.
    let workload = workload(&settings.data_dir, "fact", 8);
    let calibrate = |target: &str| {
        run(&[
            "calibrate",
            "--config",
            config.to_str().unwrap(),
            "--system",
            "truncated-first",
            "--workload",
            workload.to_str().unwrap(),
            "--target-accuracy",
            target,
            "--author",
            "carol",
            "--format",
            "json",
        ])
    };

    // First the whole curve; then the accuracy in its middle as the target, so that the
    // cheapest threshold meeting it lies inside the curve.
    let curve = calibrate("0");
    let sweep = curve["report"]["sweep"].as_array().unwrap().clone();
    assert!(sweep.len() >= 3, "{sweep:?}");
    assert_eq!(sweep.first().unwrap()["escalation_rate"], 0.0);
    assert_eq!(sweep.last().unwrap()["escalation_rate"], 1.0);
    assert!(sweep.windows(2).all(|p| p[0]["escalation_rate"].as_f64() < p[1]["escalation_rate"].as_f64()), "{sweep:?}");
    assert_eq!(curve["report"]["recommended"]["escalation_rate"], 0.0, "with no target, escalating nothing is cheapest");
    let target = sweep[sweep.len() / 2]["accuracy"].as_f64().unwrap();
    let cheapest = sweep.iter().find(|p| p["accuracy"].as_f64().unwrap() >= target).unwrap().clone();
    let calibrated = calibrate(&target.to_string());
    let recommended = &calibrated["report"]["recommended"];
    // Model time differs between runs; the signal, hence the curve, does not.
    for field in ["threshold", "escalation_rate", "accuracy"] {
        assert_eq!(recommended[field], cheapest[field], "the cheapest point meeting the target {target}: {recommended}");
    }
    let rate = recommended["escalation_rate"].as_f64().unwrap();
    assert!(rate > 0.0 && rate < 1.0, "a threshold inside the curve: {recommended}");
    assert_eq!(calibrated["stored"]["report"], "truncated-first@2", "stored as the second report for the system");

    // A reviewer approves the report; a new policy data version applies and cites it.
    let app = spawn_app_with(settings.clone()).await;
    let report = app.get("/v1/registry/calibration-reports/truncated-first/versions/2").await;
    assert_eq!(report.status(), 200);
    let report: Value = report.json().await.unwrap();
    assert_eq!(report["author"], "carol");
    assert_eq!(report["status"], "draft");
    assert_eq!(report["digest"], calibrated["stored"]["digest"]);
    assert_eq!(app.lifecycle("bob", "calibration-reports", "truncated-first", 2, "approve").await.status(), 200);
    assert_eq!(app.lifecycle("bob", "calibration-reports", "truncated-first", 2, "activate").await.status(), 409, "evidence is never active");
    let shipped: Value = app.get("/v1/registry/policies/tiergate-default/versions/1").await.json().await.unwrap();
    let mut bundle = shipped["document"].clone();
    bundle["data"]["systems"] = calibrated["report"]["policy_data"]["systems"].clone();
    assert_eq!(bundle["data"]["systems"]["truncated-first"]["calibration"]["report"], "truncated-first@2");
    assert_eq!(app.post_as("alice", "/v1/registry/policies", "application/json", bundle.to_string()).await.status(), 201);
    assert_eq!(app.lifecycle("bob", "policies", "tiergate-default", 2, "approve").await.status(), 200);
    let card = include_str!("../fixtures/cards/truncated-first.yaml").replace("policy: tiergate-default@1", "policy: tiergate-default@2");
    assert_eq!(app.submit("alice", "system-cards", &card).await.status(), 201);
    assert_eq!(app.lifecycle("bob", "system-cards", "truncated-first", 2, "approve").await.status(), 200);
    assert_eq!(app.lifecycle("bob", "system-cards", "truncated-first", 2, "activate").await.status(), 200);

    let mut escalated = 0;
    for line in std::fs::read_to_string(&workload).unwrap().lines() {
        let item: Value = serde_json::from_str(line).unwrap();
        let body: Value = app.chat(user_message("truncated-first", item["prompt"].as_str().unwrap())).await.json().await.unwrap();
        assert_eq!(body["tiergate"]["policy"], "tiergate-default@2", "{body}");
        escalated += usize::from(body["tiergate"]["escalated"] == true);
    }
    let reproduced = escalated as f64 / 8.0;
    assert_eq!(reproduced, recommended["escalation_rate"].as_f64().unwrap(), "threshold {}", recommended["threshold"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn calibrate_fits_a_confidence_model_per_tier_on_held_out_answers_and_a_system_serves_with_the_approved_one() {
    // A running deployment (its registry seeded with the shipped cards and confidence models),
    // on whose database calibrate stores what it fits.
    let app = spawn_app_with(test_settings()).await;
    let settings = app.settings.clone();
    let config = config(&settings);
    // Both kinds of question of the shipped workload, enough right and wrong answers of each
    // tier for five folds; and a workload of another kind, never fitted on, for the transfer.
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/support-and-facts.jsonl")).unwrap();
    let pick =
        |kind: &str| shipped.lines().filter(|l| l.contains(&format!("\"kind\": \"{kind}\""))).take(50).map(|l| format!("{l}\n")).collect::<String>();
    let workload = settings.data_dir.join("mixed.jsonl");
    std::fs::write(&workload, pick("intent") + &pick("fact")).unwrap();
    let arithmetic = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/arithmetic-word-problems.jsonl")).unwrap();
    let transfer = settings.data_dir.join("arithmetic.jsonl");
    std::fs::write(&transfer, arithmetic.lines().take(40).map(|l| format!("{l}\n")).collect::<String>()).unwrap();

    let report = run(&[
        "calibrate",
        "--config",
        config.to_str().unwrap(),
        "--system",
        "support-triage",
        "--workload",
        workload.to_str().unwrap(),
        "--target-accuracy",
        "0",
        "--author",
        "carol",
        "--format",
        "json",
        "--fit-confidence",
        "--transfer-workload",
        transfer.to_str().unwrap(),
    ]);
    let confidence = &report["report"]["confidence"];
    let fitted = confidence["tiers"].as_array().unwrap();
    let refused = confidence["refused"].as_array().unwrap();
    assert_eq!(fitted.len() + refused.len(), 2, "every tier is fitted or says why not: {confidence}");
    for tier in refused {
        assert!(
            tier["reason"].as_str().unwrap().contains("held-out AUROC") || tier["reason"].as_str().unwrap().contains("labelled answers"),
            "{tier}"
        );
    }
    let small = fitted.iter().find(|t| t["tier"] == 0).unwrap_or_else(|| panic!("the small tier's signals rank its answers: {confidence}"));
    let document = &small["document"];
    assert_eq!(document["id"], "support-triage-small");
    assert_eq!(document["tier_model"], "smollm2-135m-instruct@1");
    assert_eq!(document["fit"]["items"], 100);
    // The figures are the held-out ones, for the method with the lower held-out log loss.
    assert_eq!(document["fit"]["held_out"], small["held_out"]);
    let held_out_auroc = small["held_out"]["auroc"].as_f64().unwrap();
    assert!(held_out_auroc >= 0.6, "{held_out_auroc}");
    let candidates = small["candidates"].as_array().unwrap();
    let best =
        candidates.iter().min_by(|a, b| a["held_out"]["log_loss"].as_f64().unwrap().total_cmp(&b["held_out"]["log_loss"].as_f64().unwrap())).unwrap();
    assert_eq!(best["method"], small["method"]);
    assert!(document["fit"]["reliability_svg"].as_str().unwrap().starts_with("<svg"));
    let sweep = confidence["sweep"].as_array().unwrap();
    assert_eq!(sweep.first().unwrap()["escalation_rate"], 0.0);
    assert_eq!(sweep.last().unwrap()["escalation_rate"], 1.0);
    let transferred = &confidence["transfer"];
    assert_eq!(transferred["items"], 40, "{transferred}");
    assert!(transferred["p_correct_ece"].as_f64().is_some(), "{transferred}");

    // Stored as a draft beside the shipped version, for a second person; once approved, a system
    // card version cites it.
    let stored: Value = app.get("/v1/registry/confidence-models/support-triage-small/versions/2").await.json().await.unwrap();
    assert_eq!(stored["status"], "draft");
    assert_eq!(stored["author"], "carol");
    assert_eq!(stored["document"], *document);
    assert_eq!(app.lifecycle("bob", "confidence-models", "support-triage-small", 2, "approve").await.status(), 200);
    let card = include_str!("../../model-cards/support-triage.yaml")
        .replace("confidence_model: support-triage-small@1", "confidence_model: support-triage-small@2")
        .replace("min_p_correct_by_tier: [0.17, null]", "min_p_correct_by_tier: [0.5, null]");
    assert!(card.contains("support-triage-small@2") && card.contains("[0.5, null]"), "the shipped card still cites the shipped model");
    assert_eq!(app.submit("alice", "system-cards", &card).await.status(), 201, "{card}");
    assert_eq!(app.lifecycle("bob", "system-cards", "support-triage", 2, "approve").await.status(), 200);
    assert_eq!(app.lifecycle("bob", "system-cards", "support-triage", 2, "activate").await.status(), 200);
    let predictor: tiergate::confidence::Predictor = serde_json::from_value(document["predictor"].clone()).unwrap();
    let body: Value = app.chat(user_message("support-triage", "What is the capital of Japan? Answer in a few words.")).await.json().await.unwrap();
    let entry = app.ledger_entry(body["tiergate"]["ledger_index"].as_u64().unwrap()).await;
    let first = &entry["attempts"][0];
    assert_eq!(first["confidence_model"]["id"], "support-triage-small");
    assert_eq!(first["confidence_model"]["version"], 2);
    assert_eq!(first["confidence_model"]["digest"], stored["digest"]);
    let signals: tiergate::inference::Signals = serde_json::from_value(first["signals"].clone()).unwrap();
    let p = signals.p_correct.unwrap();
    assert!((p - predictor.predict(&signals).unwrap()).abs() < 1e-5);
    assert_eq!(body["tiergate"]["escalated"], p < 0.5, "P(correct) {p} against 0.5: {body}");
}
