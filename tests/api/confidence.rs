//! Confidence models: governed like every artifact, cited by a system card, turning each
//! attempt's signals into P(correct) that the policy thresholds on, recorded in the ledger and
//! judged against people's feedback. On the real model, policy engine and ledger.

use serde_json::{Value, json};
use tiergate::confidence::Predictor;

use crate::helpers::{TestApp, spawn_app_with, test_settings, user_message};

/// A hand-written model (the fit from real answers is tested with `tiergate calibrate` in
/// `evidence.rs`): P rises with the mean token logprob and the mean margin.
fn confidence_model(id: &str, tier_model: &str, extra_feature: Option<&str>) -> Value {
    let mut features = vec![
        json!({"name": "mean_logprob", "mean": -1.0, "scale": 1.0, "coefficient": 1.0}),
        json!({"name": "mean_margin", "mean": 2.0, "scale": 1.0, "coefficient": 0.2}),
    ];
    if let Some(name) = extra_feature {
        features.push(json!({"name": name, "mean": 0.5, "scale": 0.25, "coefficient": 1.0}));
    }
    json!({
        "kind": "confidence-model",
        "id": id,
        "purpose": "Test fixture: P(correct) rises with the mean token logprob and margin.",
        "tier_model": tier_model,
        "predictor": {"method": "logistic", "intercept": 0.0, "features": features},
        "fit": {"items": 120, "right": 50, "wrong": 70, "held_out": {"auroc": 0.8, "ece": 0.05}}
    })
}

/// A two-tier SmolLM2 system whose first tier cites `smollm2-logprob@1`, with `escalation`.
fn system_card(id: &str, escalation: &str) -> String {
    format!(
        "kind: system-card\nid: {id}\npurpose: P(correct) test system\npolicy: tiergate-default@1\ntiers:\n  - name: small\n    model: smollm2-135m-instruct@1\n    confidence_model: smollm2-logprob@1\n    decoding: {{max_tokens: 12, temperature: 0.0}}\n  - name: large\n    model: smollm2-135m-instruct@1\n    decoding: {{max_tokens: 12, temperature: 0.0}}\nescalation:\n{escalation}"
    )
}

async fn json_of(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    body
}

async fn activate(app: &TestApp, id: &str, card: &str) {
    assert_eq!(app.submit("alice", "system-cards", card).await.status(), 201, "{card}");
    assert_eq!(app.lifecycle("bob", "system-cards", id, 1, "approve").await.status(), 200);
    assert_eq!(app.lifecycle("bob", "system-cards", id, 1, "activate").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approved_confidence_model_gives_each_answer_a_p_correct_that_the_policy_decides_on_and_the_ledger_records() {
    let mut settings = test_settings();
    settings.calibration_min_labelled = 3;
    let app = spawn_app_with(settings).await;

    // Governed like any artifact: a draft, which its author cannot approve.
    let model = confidence_model("smollm2-logprob", "smollm2-135m-instruct@1", None);
    let submitted = app.post_as("alice", "/v1/registry/confidence-models", "application/json", model.to_string()).await;
    assert_eq!(submitted.status(), 201);
    let submitted: Value = submitted.json().await.unwrap();
    assert_eq!(submitted["version"]["status"], "draft");
    let digest = submitted["version"]["digest"].as_str().unwrap().to_owned();
    // A system card may cite the draft, but cannot become active while it is one.
    assert_eq!(app.submit("alice", "system-cards", &system_card("p-early", "  min_p_correct_by_tier: [0.5, null]\n")).await.status(), 201);
    assert_eq!(app.lifecycle("bob", "system-cards", "p-early", 1, "approve").await.status(), 200);
    let early = app.lifecycle("bob", "system-cards", "p-early", 1, "activate").await;
    assert_eq!(early.status(), 409);
    assert!(early.text().await.unwrap().contains("/tiers/0/confidence_model: confidence_model smollm2-logprob@1 is draft"));
    assert_eq!(app.lifecycle("alice", "confidence-models", "smollm2-logprob", 1, "approve").await.status(), 403, "four eyes");
    assert_eq!(app.lifecycle("bob", "confidence-models", "smollm2-logprob", 1, "approve").await.status(), 200);
    assert_eq!(app.lifecycle("bob", "confidence-models", "smollm2-logprob", 1, "activate").await.status(), 409, "cited, never active");

    // The same model under three policies: a low bar, an unreachable bar, and the expected cost
    // of a wrong answer against the price of the next tier.
    activate(&app, "p-lenient", &system_card("p-lenient", "  min_p_correct_by_tier: [0.001, null]\n  min_mean_logprob: -1000\n")).await;
    activate(&app, "p-strict", &system_card("p-strict", "  min_p_correct_by_tier: [0.999, null]\n  min_mean_logprob: -1000\n")).await;
    activate(&app, "p-costed", &system_card("p-costed", "  error_cost: 1000\n  min_mean_logprob: -1000\n")).await;
    let predictor: Predictor = serde_json::from_value(model["predictor"].clone()).unwrap();
    let question = "What is the capital of France?";

    let mut served = Vec::new();
    for (system, escalates, reason) in [
        ("p-lenient", false, "is at or above 0.001"),
        ("p-strict", true, "is below 0.999: escalate"),
        ("p-costed", true, "exceeds the next tier's estimated cost"),
    ] {
        let body = json_of(app.chat(user_message(system, question)).await).await;
        assert_eq!(body["tiergate"]["escalated"], escalates, "{system}: {body}");
        let entry = app.ledger_entry(body["tiergate"]["ledger_index"].as_u64().unwrap()).await;
        let first = &entry["attempts"][0];
        assert_eq!(first["confidence_model"], json!({"id": "smollm2-logprob", "version": 1, "digest": digest}), "{system}");
        // P(correct) is the approved model applied to the recorded signals, which now include
        // the margins the gateway asks alternatives for.
        let signals: tiergate::inference::Signals = serde_json::from_value(first["signals"].clone()).unwrap();
        assert!(signals.mean_margin.is_some() && signals.min_margin.is_some() && signals.mean_entropy.is_some(), "{signals:?}");
        let p = signals.p_correct.expect("p_correct recorded");
        assert!((p - predictor.predict(&signals).unwrap()).abs() < 1e-5, "{system}: {p} from {signals:?}");
        assert_eq!(body["tiergate"]["attempts"][0]["p_correct"], json!(p), "the caller sees it too");
        assert_eq!(first["accept"]["input"]["attempt"]["signals"]["p_correct"], json!(p), "the policy saw it");
        let reasons = first["accept"]["decision"]["reasons"].to_string();
        assert!(reasons.contains(reason), "{system}: {reasons}");
        assert_eq!(first["accept"]["decision"]["action"], if escalates { "escalate" } else { "accept" });
        if escalates {
            assert_eq!(entry["served_tier"], 1);
            assert!(entry["attempts"][1]["confidence_model"].is_null(), "the large tier cites no model");
        }
        // The caller asked for no alternatives and gets none, although the gateway used five.
        assert!(body["choices"][0]["logprobs"].is_null() || body["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == json!([]), "{body}");
        if system == "p-lenient" {
            served.push((body["tiergate"]["ledger_index"].as_u64().unwrap(), p));
        }
    }

    // People's feedback judges the probabilities: answers called the opposite of what P says
    // give a large calibration error, an alert in the ledger naming the model version.
    for question in ["What colour is the sky?", "How many days are in a week?"] {
        let body = json_of(app.chat(user_message("p-lenient", question)).await).await;
        served.push((body["tiergate"]["ledger_index"].as_u64().unwrap(), body["tiergate"]["attempts"][0]["p_correct"].as_f64().unwrap()));
    }
    let mean_p = served.iter().map(|(_, p)| p).sum::<f64>() / served.len() as f64;
    let verdict = mean_p < 0.5;
    for (index, _) in &served {
        let response = app
            .client
            .post(format!("{}/v1/feedback", app.address))
            .bearer_auth(&app.app_token)
            .json(&json!({"ledger_index": index, "correct": verdict}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let calibration = json_of(app.get("/v1/calibration").await).await;
    let state = &calibration["p-lenient/0"];
    assert_eq!(state["confidence_model"], "smollm2-logprob@1", "{calibration}");
    assert_eq!(state["labelled"], 3);
    let expected_ece: f64 = {
        // Per tenth of P: |observed − mean predicted| weighted by its share.
        let mut bins = std::collections::BTreeMap::<usize, Vec<f64>>::new();
        for (_, p) in &served {
            bins.entry(((p * 10.0) as usize).min(9)).or_default().push(*p);
        }
        let observed = if verdict { 1.0 } else { 0.0 };
        bins.values().map(|ps| ps.len() as f64 / 3.0 * (observed - ps.iter().sum::<f64>() / ps.len() as f64).abs()).sum()
    };
    assert!((state["ece"].as_f64().unwrap() - expected_ece).abs() < 1e-6, "{state} vs {expected_ece}");
    assert!(expected_ece > 0.1 && state["alerting"] == true, "{state}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("tiergate_confidence_ece{") && l.contains("system=\"p-lenient\"")), "{metrics}");
    let mut alert = None;
    for _ in 0..50 {
        let entries = json_of(app.get("/v1/ledger/entries?type=governance").await).await;
        alert = entries["entries"].as_array().and_then(|e| e.iter().find(|e| e["outcome"] == "calibration_alert").cloned());
        if alert.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let alert = alert.expect("a calibration alert in the ledger");
    assert_eq!(alert["entry"]["artifact"], json!({"kind": "confidence_model", "id": "smollm2-logprob", "version": 1, "digest": digest}));
    assert_eq!(alert["entry"]["calibration"]["labelled"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn confidence_models_and_citations_that_cannot_work_are_refused_naming_the_problem_and_nothing_is_stored() {
    let app = spawn_app_with(test_settings()).await;
    let submit = |document: Value| {
        let app = &app;
        async move {
            let response = app.post_as("alice", "/v1/registry/confidence-models", "application/json", document.to_string()).await;
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let mut few = confidence_model("few", "smollm2-135m-instruct@1", None);
    few["fit"] = json!({"items": 30, "right": 12, "wrong": 18, "held_out": {"auroc": 0.8, "ece": 0.05}});
    let mut weak = confidence_model("weak", "smollm2-135m-instruct@1", None);
    weak["fit"]["held_out"]["auroc"] = json!(0.55);
    let mut unknown_feature = confidence_model("unknown", "smollm2-135m-instruct@1", None);
    unknown_feature["predictor"]["features"][0]["name"] = json!("vibes");
    let missing_model = confidence_model("orphan", "no-such-model@1", None);
    for (document, status, message) in [
        (few, 422, "/fit/items: fitted on 30 labelled answers; at least 50"),
        (weak, 422, "/fit/held_out/auroc: 0.550 is below the floor 0.6"),
        (unknown_feature, 422, "/predictor"),
        (missing_model, 422, "/tier_model: model_card no-such-model@1 does not exist"),
    ] {
        let (got, body) = submit(document).await;
        assert_eq!(got, status, "{body}");
        assert!(body.contains(message), "{message} in {body}");
    }
    for id in ["few", "weak", "unknown", "orphan"] {
        assert_eq!(app.get(&format!("/v1/registry/confidence-models/{id}/versions")).await.status(), 404, "{id} was not stored");
    }

    // Cited where it cannot work: by a tier running another model, for a signal the system
    // does not produce, or not at all in the registry.
    assert_eq!(submit(confidence_model("for-gemma", "gemma3-270m@1", None)).await.0, 201);
    assert_eq!(submit(confidence_model("with-self-check", "smollm2-135m-instruct@1", Some("self_check_yes"))).await.0, 201);
    let before = app.ledger_count().await;
    for (model, message) in [
        (
            "for-gemma@1",
            "/tiers/0/confidence_model: confidence model for-gemma was fitted on answers of gemma3-270m@1, but this tier runs smollm2-135m-instruct@1",
        ),
        ("with-self-check@1", "/tiers/0/confidence_model: confidence model with-self-check uses self_check_yes, which this system does not produce"),
        ("nowhere@1", "/tiers/0/confidence_model: confidence_model nowhere@1 does not exist in the registry"),
    ] {
        let card = system_card("cites", "  min_p_correct: 0.5\n").replace("smollm2-logprob@1", model);
        let response = app.submit("alice", "system-cards", &card).await;
        assert_eq!(response.status(), 422);
        let body = response.text().await.unwrap();
        assert!(body.contains(message), "{message} in {body}");
    }
    assert_eq!(app.get("/v1/registry/system-cards/cites/versions").await.status(), 404);
    assert_eq!(app.ledger_count().await, before, "refusals write nothing to the ledger");
    // With the self-check on, the same citation is accepted.
    let card = system_card("cites", "  min_p_correct: 0.5\n  self_check: true\n").replace("smollm2-logprob@1", "with-self-check@1");
    assert_eq!(app.submit("alice", "system-cards", &card).await.status(), 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tier_refits_its_confidence_model_on_the_answers_people_judged_in_the_ledger() {
    let app = spawn_app_with(test_settings()).await;
    let fit = |body: Value| {
        let app = &app;
        async move { app.post_as("alice", "/v1/confidence-models/fit", "application/json", body.to_string()).await }
    };

    // Nothing judged yet: refused, naming the count and the minimum, and nothing stored.
    let refused = fit(json!({"system": "always-small", "tier": 0})).await;
    assert_eq!(refused.status(), 422);
    let message = refused.text().await.unwrap();
    assert!(message.contains("0 labelled answers (0 right, 0 wrong): a fit needs at least 50, with at least 10 of each"), "{message}");
    assert_eq!(app.get("/v1/registry/confidence-models/always-small-small/versions").await.status(), 404);
    assert_eq!(fit(json!({"system": "always-small", "tier": 5})).await.status(), 422, "no such tier");
    assert_eq!(fit(json!({"system": "nowhere", "tier": 0})).await.status(), 404);
    assert_eq!(fit(json!({"system": "always-small", "tier": 0, "since": "yesterday"})).await.status(), 422);

    // Real answers to labelled questions, judged by the application as its users would.
    let shipped = include_str!("../workloads/support-and-facts.jsonl");
    let items: Vec<Value> = ["intent", "fact"]
        .iter()
        .flat_map(|kind| shipped.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(move |i| i["kind"] == *kind).take(40))
        .collect();
    let mut labels = Vec::new();
    for item in &items {
        let body = json_of(app.chat(user_message("always-small", item["prompt"].as_str().unwrap())).await).await;
        let answer = body["choices"][0]["message"]["content"].as_str().unwrap().to_lowercase();
        let correct = match (&item["expected"], &item["expected_any"]) {
            (Value::String(label), _) => answer.split(|c: char| !c.is_alphanumeric() && c != '-' && c != '_').any(|w| w == label.to_lowercase()),
            (_, Value::Array(options)) => options.iter().any(|o| answer.contains(&o.as_str().unwrap().to_lowercase())),
            _ => unreachable!("the shipped workload is labelled"),
        };
        let index = body["tiergate"]["ledger_index"].as_u64().unwrap();
        labels.push((index, correct));
    }
    // One answer is judged twice; the later label is the one that counts.
    let twice = labels[0].0;
    labels[0].1 = !labels[0].1;
    for (index, correct) in labels.iter().map(|(i, c)| (*i, *c)).chain([(twice, !labels[0].1), (twice, labels[0].1)]).skip(1) {
        let response = app
            .client
            .post(format!("{}/v1/feedback", app.address))
            .bearer_auth(&app.app_token)
            .json(&json!({"ledger_index": index, "correct": correct}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    let fitted = fit(json!({"system": "always-small", "tier": 0})).await;
    assert_eq!(fitted.status(), 201);
    let fitted: Value = fitted.json().await.unwrap();
    assert_eq!(fitted["labelled"], 80);
    let version = &fitted["version"];
    assert_eq!(version["id"], "always-small-small");
    assert_eq!((version["status"].as_str(), version["author"].as_str()), (Some("draft"), Some("alice")));
    let document = &version["document"];
    assert_eq!(document["tier_model"], "smollm2-135m-instruct@1");
    assert_eq!(document["fit"]["items"], 80);
    assert_eq!(document["fit"]["right"], labels.iter().filter(|(_, c)| *c).count());
    assert_eq!(document["fit"]["held_out"], fitted["held_out"]);
    // The training data is named by a digest an auditor recomputes from the ledger.
    labels.sort();
    let digest = tiergate::canonical::sha256_digest(&tiergate::canonical::to_canonical_bytes(&json!(labels)));
    assert_eq!(document["fit"]["workload_sha256"], digest);
    let governance = app.ledger_entry(fitted["ledger_index"].as_u64().unwrap()).await;
    assert_eq!(governance["event"], "submitted");
    assert_eq!(governance["artifact"]["kind"], "confidence_model");
    assert_eq!(app.lifecycle("alice", "confidence-models", "always-small-small", 1, "approve").await.status(), 403);
    assert_eq!(app.lifecycle("bob", "confidence-models", "always-small-small", 1, "approve").await.status(), 200);
}
