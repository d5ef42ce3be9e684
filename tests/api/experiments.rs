//! Live experiments on the real gateway, model, policy engine and ledger: governed like every
//! artifact, sticky assignment close to the configured split, widened without moving anyone
//! out of the treatment, a report that equals what the exported ledger says, a guardrail that
//! stops a failing treatment, and promotion through the usual four-eyes activation.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app_with, test_settings};

/// A one-tier-accepting control (v1) and a treatment (v2) whose first tier never satisfies the
/// policy, so each of its requests escalates: the arms differ in escalation rate and cost.
pub(crate) fn system_version(id: &str, first_tier_bar: f64) -> String {
    format!(
        "kind: system-card\nid: {id}\npurpose: experiment test system\npolicy: tiergate-default@1\ntiers:\n\
         - {{name: small, model: smollm2-135m-instruct@1, decoding: {{max_tokens: 1, temperature: 0.0}}}}\n\
         - {{name: large, model: smollm2-135m-instruct@1, decoding: {{max_tokens: 1, temperature: 0.0}}}}\n\
         escalation: {{min_mean_logprob: -1000.0, min_mean_logprob_by_tier: [{first_tier_bar}, -1000.0]}}\n"
    )
}

pub(crate) fn experiment(id: &str, system: &str, treatment: &str, percent: f64, unit: &str, guardrails: Value) -> String {
    json!({
        "kind": "experiment",
        "id": id,
        "purpose": "Does escalating every first answer change cost and escalation?",
        "system": system,
        "control": format!("{system}@1"),
        "treatment": treatment,
        "treatment_percent": percent,
        "assignment_unit": unit,
        "primary_metric": "escalation_rate",
        "guardrails": guardrails,
    })
    .to_string()
}

pub(crate) async fn ok(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    body
}

async fn error_message(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.unwrap();
    body["error"]["message"].as_str().unwrap().to_owned()
}

/// Sends one question as end user `user`; returns the system version that served it.
pub(crate) async fn ask(app: &TestApp, system: &str, user: &str, stakes: &str) -> (String, u64) {
    let body = json!({
        "model": system,
        "user": user,
        "messages": [{"role": "user", "content": "Say yes."}],
        "metadata": {"stakes": stakes},
    });
    let response = ok(app.chat(body).await).await;
    (response["tiergate"]["system"].as_str().unwrap().to_owned(), response["tiergate"]["ledger_index"].as_u64().unwrap())
}

async fn start(app: &TestApp, actor: &str, id: &str) -> reqwest::Response {
    app.post_as(actor, &format!("/v1/experiments/{id}/versions/1/start"), "application/json", String::new()).await
}

pub(crate) async fn submit_and_approve_system(app: &TestApp, card: &str, version: i64, id: &str) {
    assert_eq!(app.submit("alice", "system-cards", card).await.status(), 201);
    assert_eq!(app.lifecycle("bob", "system-cards", id, version, "approve").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_is_governed_sticky_widened_reported_as_the_ledger_says_and_promoted() {
    let app = spawn_app_with(test_settings()).await;
    submit_and_approve_system(&app, &system_version("canary-sys", -1000.0), 1, "canary-sys").await;
    assert_eq!(app.lifecycle("bob", "system-cards", "canary-sys", 1, "activate").await.status(), 200);
    submit_and_approve_system(&app, &system_version("canary-sys", 1.0), 2, "canary-sys").await;
    // A third version stays a draft.
    assert_eq!(app.submit("alice", "system-cards", &system_version("canary-sys", 0.5)).await.status(), 201);
    let guardrails = json!({"min_samples": 20, "max_error_rate": 0.5});

    // Bad input: 422 naming the field, and nothing stored.
    let missing = app.submit("alice", "experiments", &experiment("canary", "canary-sys", "canary-sys@9", 30.0, "user", guardrails.clone())).await;
    assert!(error_message(missing, 422).await.contains("/treatment: system_card canary-sys@9 does not exist"));
    let draft = app.submit("alice", "experiments", &experiment("canary", "canary-sys", "canary-sys@3", 30.0, "user", guardrails.clone())).await;
    assert!(error_message(draft, 422).await.contains("/treatment: system_card canary-sys@3 is draft"));
    let share = app.submit("alice", "experiments", &experiment("canary", "canary-sys", "canary-sys@2", 150.0, "user", guardrails.clone())).await;
    assert!(error_message(share, 422).await.contains("/treatment_percent"));
    let unknown = json!({"min_samples": 20, "max_cost": 3});
    let unknown = app.submit("alice", "experiments", &experiment("canary", "canary-sys", "canary-sys@2", 30.0, "user", unknown)).await;
    assert!(error_message(unknown, 422).await.contains("/guardrails"));
    assert_eq!(app.get("/v1/registry/experiments/canary/versions").await.status(), 404, "nothing was stored");

    // Governed: the author can neither approve nor start it; it is started, never activated.
    let text = experiment("canary", "canary-sys", "canary-sys@2", 30.0, "user", guardrails.clone());
    assert_eq!(app.submit("alice", "experiments", &text).await.status(), 201);
    assert_eq!(app.lifecycle("alice", "experiments", "canary", 1, "approve").await.status(), 403);
    assert_eq!(app.lifecycle("bob", "experiments", "canary", 1, "approve").await.status(), 200);
    assert_eq!(app.lifecycle("bob", "experiments", "canary", 1, "activate").await.status(), 409);
    assert_eq!(start(&app, "alice", "canary").await.status(), 403);
    let started = ok(start(&app, "bob", "canary").await).await;
    assert_eq!(started["run"]["treatment_percent"], 30.0);
    let started_entry = app.ledger_entry(started["record"]["ledger_index"].as_u64().unwrap()).await;
    assert_eq!(started_entry["event"], "experiment_started");
    assert_eq!(started_entry["experiment"]["treatment"], "canary-sys@2");
    // A second experiment on the same system is refused while the first runs.
    let rival = experiment("rival", "canary-sys", "canary-sys@2", 10.0, "request", guardrails.clone());
    assert_eq!(app.submit("alice", "experiments", &rival).await.status(), 201);
    assert_eq!(app.lifecycle("bob", "experiments", "rival", 1, "approve").await.status(), 200);
    assert!(error_message(start(&app, "bob", "rival").await, 422).await.contains("/system: experiment canary@1 is already running"));

    // 300 users: about 30% in the treatment (binomial sd 2.6 points), each user sticky.
    let mut arm_of = BTreeMap::new();
    let mut answers: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for user in 0..300 {
        let (served, index) = ask(&app, "canary-sys", &format!("user-{user}"), "normal").await;
        answers.entry(served.clone()).or_default().push(index);
        arm_of.insert(user, served);
    }
    let treated = arm_of.values().filter(|served| *served == "canary-sys@2").count();
    assert!((66..=114).contains(&treated), "{treated} of 300 users in a 30% treatment");
    // People judge some answers: 3 of 4 control answers right, 1 of 4 treatment answers.
    for (version, right) in [("canary-sys@1", 3), ("canary-sys@2", 1)] {
        for (i, index) in answers[version].iter().take(4).enumerate() {
            let feedback = json!({"ledger_index": index, "correct": i < right}).to_string();
            let response = app
                .client
                .post(format!("{}/v1/feedback", app.address))
                .bearer_auth(&app.app_token)
                .header("content-type", "application/json")
                .body(feedback)
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "{}", response.status());
        }
    }
    for user in 0..20 {
        assert_eq!(ask(&app, "canary-sys", &format!("user-{user}"), "normal").await.0, arm_of[&user], "user-{user} changed arm");
    }
    // High-stakes requests stay on control and out of the comparison.
    let treated_user = arm_of.iter().find(|(_, served)| *served == "canary-sys@2").map(|(user, _)| *user).unwrap();
    let (served, kept_index) = ask(&app, "canary-sys", &format!("user-{treated_user}"), "high").await;
    assert_eq!(served, "canary-sys@1");
    let kept = app.ledger_entry(kept_index).await;
    assert_eq!(kept["experiment"]["assigned_arm"], "treatment");
    assert_eq!(kept["experiment"]["arm"], "control");
    assert!(kept["experiment"]["excluded"].as_str().unwrap().contains("kept on control"));

    // Widening: everyone in the treatment stays there; a share is never lowered.
    let widen =
        |percent: f64| app.post_as("bob", "/v1/experiments/canary/share", "application/json", json!({"treatment_percent": percent}).to_string());
    assert!(error_message(widen(10.0).await, 422).await.contains("/treatment_percent"));
    assert_eq!(ok(widen(60.0).await).await["run"]["treatment_percent"], 60.0);
    for (user, served) in arm_of.iter().filter(|(_, served)| *served == "canary-sys@2").take(15) {
        assert_eq!(ask(&app, "canary-sys", &format!("user-{user}"), "normal").await.0, *served, "user-{user} left the treatment");
    }

    // The report equals what the exported ledger says.
    let report = ok(app.get("/v1/experiments/canary/report").await).await;
    let export = app.get("/v1/ledger/export").await.text().await.unwrap();
    let entries: Vec<Value> = export.lines().skip(1).map(|line| serde_json::from_str::<Value>(line).unwrap()["entry"].clone()).collect();
    let mut recomputed: BTreeMap<&str, (u64, u64, f64)> = BTreeMap::new();
    let mut excluded = 0;
    for entry in entries.iter().filter(|e| e["experiment"]["id"] == "canary") {
        if !entry["experiment"]["excluded"].is_null() {
            excluded += 1;
            continue;
        }
        let arm = recomputed.entry(if entry["experiment"]["arm"] == "treatment" { "treatment" } else { "control" }).or_default();
        arm.0 += 1;
        arm.1 += u64::from(entry["escalated"].as_bool().unwrap());
        arm.2 += entry["attempts"].as_array().unwrap().iter().filter_map(|a| a["cost"].as_f64()).sum::<f64>();
    }
    assert_eq!(report["excluded"], excluded);
    for (arm, key) in [("control", "control_arm"), ("treatment", "treatment_arm")] {
        let (requests, escalated, cost) = recomputed[arm];
        assert_eq!(report[key]["requests"], requests, "{arm}: {report}");
        let rate = report[key]["escalation_rate"]["value"].as_f64().unwrap();
        assert!((rate - escalated as f64 / requests as f64).abs() < 1e-6, "{arm}");
        let mean_cost = report[key]["cost_per_request"]["value"].as_f64().unwrap();
        assert!((mean_cost - cost / requests as f64).abs() < 1e-6, "{arm}");
    }
    for (key, right) in [("control_arm", 0.75), ("treatment_arm", 0.25)] {
        assert_eq!(report[key]["labelled"], 4, "{key}");
        assert_eq!(report[key]["feedback_accuracy"]["value"], right, "{key}");
    }
    assert_eq!(report["treatment_arm"]["escalation_rate"]["value"], 1.0, "the treatment escalates every request");
    assert_eq!(report["control_arm"]["escalation_rate"]["value"], 0.0);
    assert_eq!(report["verdict"]["decision"], "treatment_worse", "{}", report["verdict"]);

    // Promotion: the treatment's author cannot; a second person activates it, citing the report.
    assert_eq!(app.post_as("alice", "/v1/experiments/canary/promote", "application/json", String::new()).await.status(), 403);
    let promoted = ok(app.post_as("bob", "/v1/experiments/canary/promote", "application/json", String::new()).await).await;
    let activation = app.ledger_entry(promoted["activation"]["ledger_index"].as_u64().unwrap()).await;
    assert_eq!(activation["event"], "activated");
    assert_eq!(activation["artifact"]["version"], 2);
    assert_eq!(activation["evidence"]["report_digest"], promoted["report_digest"]);
    for user in 0..5 {
        assert_eq!(ask(&app, "canary-sys", &format!("user-{user}"), "normal").await.0, "canary-sys@2", "everyone gets the promoted version");
    }
    let runs = ok(app.get("/v1/experiments").await).await;
    assert_eq!(runs["items"][0]["state"], "promoted");
    assert_eq!(app.post_as("bob", "/v1/experiments/canary/stop", "application/json", json!({"reason": "done"}).to_string()).await.status(), 409);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_treatment_whose_tier_fails_every_call_trips_its_error_guardrail_and_control_serves_again() {
    let mut settings = test_settings();
    settings.experiment_guardrail_interval_ms = 200;
    let app = spawn_app_with(settings).await;
    submit_and_approve_system(&app, &system_version("guarded-sys", -1000.0), 1, "guarded-sys").await;
    assert_eq!(app.lifecycle("bob", "system-cards", "guarded-sys", 1, "activate").await.status(), 200);
    // The treatment's first tier is an endpoint nobody listens on: every call fails for real.
    let dead = "kind: model-card\nid: dead-endpoint\nname: nothing listens here\nruntime: {kind: openai-compatible, base_url: \"http://127.0.0.1:9/v1\", model: none}\nweights: {source: remote, sha256: \"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd\"}\n";
    assert_eq!(app.submit("alice", "model-cards", dead).await.status(), 201);
    assert_eq!(app.lifecycle("bob", "model-cards", "dead-endpoint", 1, "approve").await.status(), 200);
    let failing = "kind: system-card\nid: guarded-sys\npurpose: first tier fails\npolicy: tiergate-default@1\ntiers:\n\
         - {name: dead, model: dead-endpoint@1, decoding: {max_tokens: 1, temperature: 0.0}}\n\
         - {name: large, model: smollm2-135m-instruct@1, decoding: {max_tokens: 1, temperature: 0.0}}\n\
         escalation: {min_mean_logprob: -1000.0}\n";
    submit_and_approve_system(&app, failing, 2, "guarded-sys").await;
    let text = experiment("guarded", "guarded-sys", "guarded-sys@2", 50.0, "request", json!({"min_samples": 5, "max_error_rate": 0.2}));
    assert_eq!(app.submit("alice", "experiments", &text).await.status(), 201);
    assert_eq!(app.lifecycle("bob", "experiments", "guarded", 1, "approve").await.status(), 200);
    ok(app.post_as("bob", "/v1/experiments/guarded/versions/1/start", "application/json", String::new()).await).await;

    let mut stopped = None;
    for request in 0..80 {
        ask(&app, "guarded-sys", &format!("u{request}"), "normal").await;
        let runs = ok(app.get("/v1/experiments").await).await;
        if runs["items"][0]["state"] == "stopped" {
            stopped = Some(runs["items"][0].clone());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let stopped = stopped.expect("the guardrail stopped the experiment");
    assert!(stopped["end_reason"].as_str().unwrap().contains("max_error_rate"), "{stopped}");
    let export = app.get("/v1/ledger/export").await.text().await.unwrap();
    let stop = export
        .lines()
        .skip(1)
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["entry"].clone())
        .find(|entry| entry["event"] == "experiment_stopped")
        .expect("a governance entry records the stop");
    assert_eq!(stop["actor"]["id"], "tiergate-experiment-guardrails");
    assert_eq!(stop["stop"]["breaches"][0]["guardrail"], "max_error_rate");
    assert_eq!(stop["stop"]["breaches"][0]["observed"], 1.0);
    assert!(stop["stop"]["treatment_requests"].as_u64().unwrap() >= 5);
    for request in 0..6 {
        assert_eq!(ask(&app, "guarded-sys", &format!("after-{request}"), "normal").await.0, "guarded-sys@1", "all traffic is back on control");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn activating_another_version_of_the_system_stops_its_experiment() {
    let mut settings = test_settings();
    settings.experiment_guardrail_interval_ms = 200;
    let app = spawn_app_with(settings).await;
    submit_and_approve_system(&app, &system_version("moved-sys", -1000.0), 1, "moved-sys").await;
    assert_eq!(app.lifecycle("bob", "system-cards", "moved-sys", 1, "activate").await.status(), 200);
    submit_and_approve_system(&app, &system_version("moved-sys", 1.0), 2, "moved-sys").await;
    let text = experiment("moved", "moved-sys", "moved-sys@2", 10.0, "caller", json!({"min_samples": 10}));
    assert_eq!(app.submit("alice", "experiments", &text).await.status(), 201);
    assert_eq!(app.lifecycle("bob", "experiments", "moved", 1, "approve").await.status(), 200);
    ok(start(&app, "bob", "moved").await).await;
    // Not a promotion: the plain activation leaves the experiment without its control.
    assert_eq!(app.lifecycle("bob", "system-cards", "moved-sys", 2, "activate").await.status(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let runs = ok(app.get("/v1/experiments").await).await;
        if runs["items"][0]["state"] == "stopped" {
            assert!(runs["items"][0]["end_reason"].as_str().unwrap().contains("the control moved-sys@1 is no longer active"), "{runs}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the experiment kept running without its control: {runs}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
