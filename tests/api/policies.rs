//! Policy bundles: compile, test with coverage, approve only when tests pass, dry-run, replay, shadow.

use std::path::Path;

use serde_json::{Value, json};
use tiergate::policy::BundleSource;

use crate::helpers::{TestApp, spawn_app, user_message};

fn shipped_bundle() -> Value {
    BundleSource::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/tiergate-default")).unwrap().to_document()
}

/// The shipped bundle under another id.
fn bundle_named(id: &str) -> Value {
    let mut bundle = shipped_bundle();
    bundle["id"] = json!(id);
    bundle
}

/// A candidate that sends every first-tier answer on to the next tier.
fn always_escalate(id: &str) -> Value {
    json!({
        "id": id,
        "modules": {
            "gate.rego": "package tiergate\n\nimport rego.v1\n\nroute := {\"action\": \"serve\", \"tier\": 0, \"reasons\": [\"start small\"]}\n\naccept := {\"action\": \"escalate\", \"reasons\": [\"second opinion\"]} if input.attempt.tier == 0\n\naccept := {\"action\": \"accept\", \"reasons\": [\"checked\"]} if input.attempt.tier > 0\n",
            "gate_test.rego": "package gate_test\n\nimport rego.v1\n\ntest_starts_small if data.tiergate.route.tier == 0\n",
        },
        "data": {},
    })
}

async fn submit(app: &TestApp, actor: &str, bundle: &Value) -> reqwest::Response {
    app.post_as(actor, "/v1/registry/policies", "application/json", bundle.to_string()).await
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_is_compiled_and_tested_on_submission_and_approved_only_when_its_tests_pass() {
    let app = spawn_app().await;

    let good = submit(&app, "alice", &bundle_named("candidate")).await;
    assert_eq!(good.status(), 201);
    let good = json_of(good).await;
    assert_eq!(good["version"]["status"], "draft");
    let tests = &good["tests"];
    assert!(tests["passed"].as_u64().unwrap() >= 9, "{tests}");
    assert_eq!((tests["failed"].as_u64(), tests["errors"].as_u64()), (Some(0), Some(0)));
    let coverage = tests["coverage"].as_array().unwrap();
    assert_eq!(coverage.len(), 1, "test modules are not themselves measured: {coverage:?}");
    assert_eq!(coverage[0]["module"], "routing.rego");
    assert!(coverage[0]["percent"].as_f64().unwrap() > 50.0, "{coverage:?}");
    assert!(!coverage[0]["covered_lines"].as_array().unwrap().is_empty());
    assert_eq!(app.lifecycle("alice", "policies", "candidate", 1, "approve").await.status(), 403);
    assert_eq!(app.lifecycle("bob", "policies", "candidate", 1, "approve").await.status(), 200);

    // Stricter data breaks a shipped test: stored as a draft, refused approval, test named.
    let mut failing = bundle_named("candidate");
    failing["data"]["defaults"]["thresholds"]["min_mean_logprob"] = json!(-0.01);
    let stored = json_of(submit(&app, "alice", &failing).await).await;
    assert_eq!(stored["version"]["version"], 2);
    assert!(stored["tests"]["failed"].as_u64().unwrap() >= 1, "{}", stored["tests"]);
    let refused = app.lifecycle("bob", "policies", "candidate", 2, "approve").await;
    assert_eq!(refused.status(), 409);
    let message = json_of(refused).await["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("test_confident_answer_accepted"), "{message}");
    let report = json_of(app.get("/v1/registry/policies/candidate/versions/2/tests").await).await;
    assert!(report["results"].as_array().unwrap().iter().any(|t| t["name"] == "test_confident_answer_accepted" && t["outcome"] == "fail"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rego_that_does_not_compile_is_refused_with_module_line_and_column() {
    let app = spawn_app().await;
    let (versions, entries) = (app.store().await.artifact_version_count().await.unwrap(), app.ledger_count().await);
    let mut broken = bundle_named("broken");
    broken["modules"]["extra.rego"] = json!("package tiergate\n\nimport rego.v1\n\nextra := {\n");

    let response = submit(&app, "alice", &broken).await;

    assert_eq!(response.status(), 422);
    let error = json_of(response).await["error"].clone();
    assert_eq!(error["code"], "policy_compile_error");
    assert_eq!(error["module"], "extra.rego");
    assert!(error["location"]["line"].as_u64().unwrap() >= 5, "{error}");
    assert!(error["location"]["column"].as_u64().unwrap() >= 1, "{error}");
    assert_eq!(app.store().await.artifact_version_count().await.unwrap(), versions, "nothing stored");
    assert_eq!(app.ledger_count().await, entries);

    let shapeless = submit(&app, "alice", &json!({"id": "x", "modules": {"notes.txt": "hi"}})).await;
    assert_eq!(shapeless.status(), 422);
    assert!(json_of(shapeless).await["error"]["message"].as_str().unwrap().starts_with("/modules/notes.txt"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_evaluates_a_gate_for_a_given_input() {
    let app = spawn_app().await;
    let evaluate =
        |body: Value| app.post_as("carol", "/v1/registry/policies/tiergate-default/versions/1/evaluate", "application/json", body.to_string());

    let blocked =
        json_of(evaluate(json!({"gate": "route", "input": {"request": {"use_case": "medical-diagnosis"}, "system": {"tier_count": 2}}})).await).await;
    let unsure = json_of(
        evaluate(json!({"gate": "accept", "input": {"request": {}, "system": {"tier_count": 2},
            "attempt": {"tier": 0, "tiers_left": 1, "error": null, "signals": {"mean_logprob": -3.0}}}}))
        .await,
    )
    .await;
    let malformed = evaluate(json!({"gate": "sideways", "input": {}})).await;

    assert_eq!(blocked["action"], "deny");
    assert!(!blocked["reasons"].as_array().unwrap().is_empty());
    assert!(blocked["eval_us"].as_u64().is_some());
    assert_eq!(unsure["action"], "escalate", "{unsure}");
    assert_eq!(malformed.status(), 422);
    assert!(json_of(malformed).await["error"]["message"].as_str().unwrap().contains("gate"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_runs_a_bundles_tests_with_coverage_and_fails_on_a_failing_test() {
    let shipped = std::process::Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .args(["policy", "test", concat!(env!("CARGO_MANIFEST_DIR"), "/policies/tiergate-default")])
        .output()
        .unwrap();
    let output = String::from_utf8_lossy(&shipped.stdout);
    assert!(shipped.status.success(), "{output}");
    assert!(output.contains("PASS routing_test.rego: test_routine_request_served_small"), "{output}");
    assert!(output.contains("coverage routing.rego:"), "{output}");

    let dir = std::env::temp_dir().join(format!("tiergate-bundle-{}", uuid::Uuid::new_v4())).join("failing");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("p.rego"), "package tiergate\n\nimport rego.v1\n\nx := 1\n").unwrap();
    std::fs::write(dir.join("p_test.rego"), "package p_test\n\nimport rego.v1\n\ntest_x_is_two if data.tiergate.x == 2\n").unwrap();
    let failing = std::process::Command::new(env!("CARGO_BIN_EXE_tiergate")).args(["policy", "test"]).arg(&dir).output().unwrap();
    assert!(!failing.status.success());
    assert!(String::from_utf8_lossy(&failing.stdout).contains("FAIL p_test.rego: test_x_is_two"));
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_reports_where_a_candidate_would_decide_differently_on_recorded_traffic() {
    let app = spawn_app().await;
    for question in ["Name a colour.", "Name a fruit."] {
        assert_eq!(app.chat(user_message("always-small", question)).await.status(), 200);
    }
    assert_eq!(submit(&app, "alice", &always_escalate("second-opinion")).await.status(), 201);

    let same =
        json_of(app.post_as("carol", "/v1/registry/policies/tiergate-default/versions/1/replay", "application/json", String::new()).await).await;
    let report = app
        .post_as("carol", "/v1/registry/policies/second-opinion/versions/1/replay", "application/json", json!({"system": "always-small"}).to_string())
        .await;

    assert_eq!((same["requests"].as_u64(), same["differing"].as_u64()), (Some(2), Some(0)), "the active policy replays to itself: {same}");
    assert_eq!(report.status(), 200);
    let report = json_of(report).await;
    assert_eq!(report["candidate"], "second-opinion@1");
    assert_eq!((report["requests"].as_u64(), report["differing"].as_u64()), (Some(2), Some(2)));
    assert_eq!(report["before"]["escalation_rate"], 0.0);
    assert_eq!(report["after"]["escalation_rate"], 1.0);
    assert_eq!(report["before"]["containment_rate"], 1.0);
    assert_eq!(report["unrecorded"], 2, "tier 1 never ran for these requests");
    assert_eq!(report["after"]["reasons"]["second opinion"], 2);
    let difference = &report["differences"][0];
    assert_eq!(difference["index"], 0);
    assert_eq!(difference["before"]["outcome"], "served");
    assert_eq!(difference["after"]["outcome"], "unrecorded");
    assert_eq!(difference["after"]["steps"][1]["action"], "escalate");
    let bad_range = app
        .post_as("carol", "/v1/registry/policies/second-opinion/versions/1/replay", "application/json", json!({"since": "yesterday"}).to_string())
        .await;
    assert_eq!(bad_range.status(), 422);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_policy_is_recorded_beside_the_active_one_but_never_acted_on() {
    let app = spawn_app().await;
    assert_eq!(submit(&app, "alice", &always_escalate("second-opinion")).await.status(), 201);
    let attached = app
        .client
        .put(format!("{}/v1/registry/system-cards/always-small/shadow", app.address))
        .bearer_auth(app.token("bob").await)
        .json(&json!({"policy": "second-opinion@1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(attached.status(), 200);

    let mut indexes = Vec::new();
    for question in ["Name a colour.", "Name a fruit."] {
        let served = json_of(app.chat(user_message("always-small", question)).await).await;
        assert_eq!(served["tiergate"]["tier_served"], 0, "the shadow's escalation is not acted on");
        indexes.push(served["tiergate"]["ledger_index"].as_u64().unwrap());
    }
    let entry = app.ledger_entry(indexes[0]).await;
    assert_eq!(entry["shadow"]["policy"]["id"], "second-opinion");
    assert_eq!(entry["shadow"]["route"]["action"], "serve");
    assert_eq!(entry["shadow"]["accepts"][0]["action"], "escalate");
    assert_eq!(entry["attempts"].as_array().unwrap().len(), 1);

    let report = json_of(app.get("/v1/registry/system-cards/always-small/shadow").await).await;
    assert_eq!(report["policy"], "second-opinion@1");
    assert_eq!(report["attached_by"], "bob");
    assert_eq!((report["report"]["requests"].as_u64(), report["report"]["differing"].as_u64()), (Some(2), Some(2)));
    assert_eq!(report["report"]["after"]["escalation_rate"], 1.0, "the would-be escalation rate");
    assert_eq!(report["report"]["before"]["escalation_rate"], 0.0);

    let detached = app
        .client
        .delete(format!("{}/v1/registry/system-cards/always-small/shadow", app.address))
        .bearer_auth(app.token("bob").await)
        .send()
        .await
        .unwrap();
    assert_eq!(detached.status(), 200);
    let after = json_of(app.chat(user_message("always-small", "Name a tree.")).await).await;
    let entry = app.ledger_entry(after["tiergate"]["ledger_index"].as_u64().unwrap()).await;
    assert!(entry.get("shadow").is_none());
    assert_eq!(app.get("/v1/registry/system-cards/always-small/shadow").await.status(), 404);
    let events: Vec<Value> = json_of(app.get("/v1/ledger/entries?type=governance").await).await["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["entry"]["event"].clone())
        .collect();
    assert_eq!(events, vec![json!("submitted"), json!("shadow_attached"), json!("shadow_detached")]);
}
