//! Human review, feedback and metrics.

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, user_message};

async fn post(app: &TestApp, token: &str, path: &str, body: Value) -> reqwest::Response {
    app.client.post(format!("{}{path}", app.address)).bearer_auth(token).json(&body).send().await.unwrap()
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_answer_waits_in_the_review_queue_until_a_reviewer_records_a_verdict() {
    let app = spawn_app().await;
    let reviewer = app.issue_key(json!({"subject": "rita", "roles": ["reviewer"]})).await;
    let held = json_of(app.chat(user_message("always-review", "Explain quantum gravity.")).await).await;
    let index = held["tiergate"]["ledger_index"].as_u64().unwrap();
    let answer = held["choices"][0]["message"]["content"].as_str().unwrap().to_owned();

    let queue = json_of(app.get_with(&reviewer, "/v1/reviews").await).await;
    let item = &queue["items"][0];
    assert_eq!(item["ledger_index"], index);
    assert_eq!(item["answer"], answer.as_str());
    assert_eq!(item["messages"][0]["content"], "Explain quantum gravity.");
    assert_eq!(item["status"], "pending");

    let verdict = format!("/v1/reviews/{index}/verdict");
    let missing_correction = post(&app, &reviewer, &verdict, json!({"verdict": "correct"})).await;
    assert_eq!(missing_correction.status(), 422);
    assert_eq!(post(&app, &app.auditor_token, &verdict, json!({"verdict": "approve"})).await.status(), 403, "auditors only read");
    let recorded = post(&app, &reviewer, &verdict, json!({"verdict": "correct", "correction": "Nobody knows yet.", "comment": "overclaims"})).await;
    assert_eq!(recorded.status(), 200);
    let verdict_index = json_of(recorded).await["ledger_index"].as_u64().unwrap();
    assert_eq!(post(&app, &reviewer, &verdict, json!({"verdict": "approve"})).await.status(), 409, "one verdict per answer");

    let entry = app.ledger_entry(verdict_index).await;
    assert_eq!(entry["type"], "review");
    assert_eq!(entry["subject"]["ledger_index"], index);
    assert_eq!(entry["verdict"], "corrected");
    assert_eq!(entry["correct"], false);
    assert_eq!(entry["reviewer"]["id"], "rita");
    assert!(entry["correction_sha256"].is_string());
    let decided = json_of(app.get_with(&reviewer, &format!("/v1/reviews/{index}")).await).await;
    assert_eq!((decided["status"].as_str(), decided["verdict_index"].as_u64()), (Some("corrected"), Some(verdict_index)));
    assert_eq!(json_of(app.get_with(&reviewer, "/v1/reviews").await).await["items"], json!([]), "nothing pending");
}

#[tokio::test(flavor = "multi_thread")]
async fn feedback_on_an_answer_is_a_ledger_entry_citing_it() {
    let app = spawn_app().await;
    let served = json_of(app.chat(user_message("always-small", "Name a colour.")).await).await;
    let index = served["tiergate"]["ledger_index"].as_u64().unwrap();
    let request_id = served["tiergate"]["request_id"].as_str().unwrap().to_owned();

    let by_index = post(&app, &app.app_token, "/v1/feedback", json!({"ledger_index": index, "correct": true, "rating": 5})).await;
    let by_request = post(&app, &app.app_token, "/v1/feedback", json!({"request_id": request_id, "correct": false, "comment": "not a colour"})).await;

    assert_eq!(by_index.status(), 200);
    let entry = app.ledger_entry(json_of(by_index).await["ledger_index"].as_u64().unwrap()).await;
    assert_eq!((entry["type"].as_str(), entry["correct"].as_bool(), entry["rating"].as_u64()), (Some("feedback"), Some(true), Some(5)));
    assert_eq!(entry["subject"]["ledger_index"], index);
    assert_eq!(entry["served_tier"], 0);
    assert_eq!(by_request.status(), 200);
    let entry = app.ledger_entry(json_of(by_request).await["ledger_index"].as_u64().unwrap()).await;
    assert_eq!(entry["subject"]["ledger_index"], index);
    let bad: Vec<(Value, u16)> = vec![
        (json!({"ledger_index": 999, "correct": true}), 404),
        (json!({"request_id": "nope", "correct": true}), 404),
        (json!({"ledger_index": index, "request_id": request_id, "correct": true}), 422),
        (json!({"ledger_index": index, "correct": true, "rating": 9}), 422),
        (json!({"ledger_index": index}), 422),
    ];
    for (body, status) in bad {
        assert_eq!(post(&app, &app.app_token, "/v1/feedback", body.clone()).await.status().as_u16(), status, "{body}");
    }
}

fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_escalations_latency_tokens_ledger_commits_and_errors() {
    let app = spawn_app().await;
    assert_eq!(app.chat(user_message("always-small", "Hi")).await.status(), 200);
    assert_eq!(app.chat(user_message("escalate-once", "Hi")).await.status(), 200);
    assert_eq!(app.chat(user_message("no-such-system", "Hi")).await.status(), 404);
    let served = json_of(app.chat(user_message("always-small", "Name a colour.")).await).await;
    let index = served["tiergate"]["ledger_index"].as_u64().unwrap();
    assert_eq!(post(&app, &app.app_token, "/v1/feedback", json!({"ledger_index": index, "correct": true})).await.status(), 200);

    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();

    assert_eq!(sample(&text, r#"tiergate_requests_total{outcome="served",system="always-small",tier_served="0"}"#), Some(2.0), "{text}");
    assert_eq!(sample(&text, r#"tiergate_requests_escalated_total{system="escalate-once"}"#), Some(1.0));
    assert_eq!(sample(&text, r#"tiergate_requests_contained_total{system="always-small"}"#), Some(2.0));
    assert_eq!(sample(&text, r#"tiergate_request_duration_seconds_count{system="always-small"}"#), Some(2.0));
    assert_eq!(sample(&text, r#"tiergate_tier_duration_seconds_count{system="escalate-once",tier="1"}"#), Some(1.0));
    assert!(sample(&text, r#"tiergate_tokens_total{kind="completion",system="always-small",tier="0"}"#).unwrap() > 0.0);
    assert!(sample(&text, r#"tiergate_policy_evaluation_seconds_count{gate="accept"}"#).unwrap() >= 4.0);
    assert!(sample(&text, "tiergate_ledger_commit_seconds_count").unwrap() >= 4.0);
    assert!(sample(&text, "tiergate_ledger_batch_entries_sum").unwrap() >= 4.0);
    assert_eq!(sample(&text, r#"tiergate_errors_total{code="unknown_system"}"#), Some(1.0));
    assert_eq!(sample(&text, r#"tiergate_feedback_total{correct="true",escalated="false",system="always-small",tier_served="0"}"#), Some(1.0));
    assert_eq!(sample(&text, r#"tiergate_tier_queued_requests{system="always-small",tier="0"}"#), Some(0.0));
    assert!(text.contains("tiergate_gateway_overhead_seconds_bucket"));
    assert_eq!(app.client.get(format!("{}/metrics", app.address)).send().await.unwrap().status(), 401, "metrics need a key");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shift_in_prompt_length_is_flagged_as_drift_in_metrics_the_endpoint_and_a_ledger_governance_event() {
    let mut settings = crate::helpers::test_settings();
    settings.drift_window = 10;
    let app = crate::helpers::spawn_app_with(settings).await;
    // Baseline: short questions. Then the same kind of traffic: no drift.
    let short = ["Hi", "Hello", "Name a colour.", "Say yes.", "One word?", "Red or blue?", "Count to 2.", "Hey", "Name a fruit.", "Ok?"];
    for round in 0..2 {
        for text in short {
            assert_eq!(app.chat(user_message("always-small", &format!("{text} {round}"))).await.status(), 200);
        }
    }
    let stable = json_of(app.get("/v1/drift").await).await;
    let prompt = &stable["always-small"]["prompt_length"];
    assert_eq!(prompt["window_size"], 10, "{stable}");
    assert!(prompt["psi"].as_f64().unwrap() < 0.2 && prompt["alerting"] == false, "{stable}");

    // Then ten long prompts: the latest window no longer looks like the baseline.
    for n in 0..10 {
        let long = format!("Summarise this for me please: {}", "the quick brown fox jumps over the lazy dog ".repeat(8 + n));
        assert_eq!(app.chat(user_message("always-small", &long)).await.status(), 200);
    }

    let drifted = json_of(app.get("/v1/drift").await).await;
    let prompt = &drifted["always-small"]["prompt_length"];
    assert_eq!(prompt["alerting"], true, "{drifted}");
    assert!(prompt["psi"].as_f64().unwrap() > 0.2, "{drifted}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with("tiergate_drift_psi{") && l.contains("signal=\"prompt_length\"") && l.contains("system=\"always-small\""))
        .unwrap_or_else(|| panic!("no drift gauge:\n{metrics}"));
    let value: f64 = gauge.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value > 0.2, "{gauge}");
    // The crossing is a governance record, written in the background.
    // (With windows this small the confidence signal is noisy and may cross too.)
    let mut recorded = None;
    for _ in 0..50 {
        let entries = json_of(app.get("/v1/ledger/entries?type=governance").await).await;
        recorded = entries["entries"].as_array().and_then(|e| e.iter().find(|e| e["entry"]["drift"]["signal"] == "prompt_length").cloned());
        if recorded.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let entry = recorded.expect("a drift governance entry for the prompt length");
    assert_eq!(entry["outcome"], "drift_alert", "{entry}");
    assert_eq!(entry["entry"]["event"], "drift_alert");
    assert_eq!(entry["entry"]["artifact"]["id"], "always-small", "names the system card version it is about");
    assert!(entry["entry"]["artifact"]["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(entry["entry"]["drift"]["system"], "always-small");
    assert!(entry["entry"]["drift"]["psi"].as_f64().unwrap() > 0.2);
}

/// A stand-in OTLP/HTTP collector: accepts every POST and keeps its body.
fn capture_collector() -> (String, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    sink.lock().unwrap().extend(body);
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    (address, received)
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_of_each_gate_attempt_and_ledger_commit_are_exported_over_otlp_when_configured() {
    if crate::BACKEND == crate::helpers::Backend::Postgres {
        return; // runs the binary on its default SQLite file: once is enough
    }
    let (collector, received) = capture_collector();
    let data_dir = std::env::temp_dir().join(format!("tiergate-otlp-{}", uuid::Uuid::new_v4()));
    let admin = format!("tg_{}.{}", &uuid::Uuid::new_v4().simple().to_string()[..16], uuid::Uuid::new_v4().simple());
    let server = crate::helpers::serve_binary(
        &[],
        &[
            ("TIERGATE_DATA_DIR", data_dir.as_os_str()),
            ("TIERGATE_BOOTSTRAP_ADMIN_KEY", admin.as_ref()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_ref()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".as_ref()),
        ],
        std::process::Stdio::null(),
    );
    let address = server.address.clone();
    let client = reqwest::Client::new();
    let app_token = crate::helpers::issue_key_at(&client, &address, &admin, json!({"subject": "traced", "roles": ["app"]})).await;
    let served = client
        .post(format!("{address}/v1/chat/completions"))
        .bearer_auth(&app_token)
        .header("x-request-id", "otlp-traced-request-7")
        .json(&user_message("support-triage", "Hi"))
        .send()
        .await
        .unwrap();
    assert!(served.status().is_success());

    // Protobuf carries strings as raw bytes: the names and values can be found in the bodies.
    let expected =
        ["otlp-traced-request-7", "route_request", "policy.route", "tier.attempt", "policy.accept", "ledger.commit", "support-triage", "tiergate"];
    let mut missing = expected.to_vec();
    for _ in 0..100 {
        let bodies = String::from_utf8_lossy(&received.lock().unwrap()).into_owned();
        missing.retain(|name| !bodies.contains(name));
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(server);
    assert!(missing.is_empty(), "not exported: {missing:?}");
}
