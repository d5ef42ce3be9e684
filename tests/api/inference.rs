//! Tier runtimes end to end: streaming, a remote tier, a failing tier, backpressure, overhead.

use std::path::PathBuf;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{spawn_app, spawn_app_with, test_settings, user_message};

const SMALL_MODEL: &str = "smollm2-135m-instruct@1";

/// A directory of extra cards for one test.
fn cards_dir(cards: &[(&str, String)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tiergate-cards-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in cards {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

fn remote_model_card(id: &str, base_url: &str, model: &str, key_env: &str) -> String {
    format!(
        "kind: model-card\nid: {id}\nname: {id} (remote)\nruntime: {{kind: openai-compatible, base_url: \"{base_url}\", model: {model}, api_key_env: {key_env}}}\n\
         weights: {{source: remote, sha256: \"{}\"}}\ncost: {{per_1k_input_tokens: 1.0, per_1k_output_tokens: 2.0, currency: USD}}\n",
        "cd".repeat(32)
    )
}

/// Two tiers; the first one's threshold cannot be met, so every answer it gives escalates.
fn system_card(id: &str, first: &str, second: &str, p95_ms: u64) -> String {
    format!(
        "kind: system-card\nid: {id}\npurpose: test\npolicy: tiergate-default@1\ntiers:\n\
         - {{name: first, model: \"{first}\", decoding: {{max_tokens: 8, temperature: 0.0}}}}\n\
         - {{name: second, model: \"{second}\", decoding: {{max_tokens: 8, temperature: 0.0}}}}\n\
         slas: {{p95_latency_ms: {p95_ms}}}\nescalation: {{min_mean_logprob: -1000.0, min_mean_logprob_by_tier: [1.0, -1000.0]}}\n"
    )
}

/// The `data:` payloads of a server-sent-events body.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n").filter_map(|event| event.strip_prefix("data: ")).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_sends_the_accepted_answer_in_the_openai_chunk_format_after_the_ledger_commit() {
    let app = spawn_app().await;
    let plain: Value = app.chat(user_message("always-small", "Name a primary colour.")).await.json().await.unwrap();
    let mut request = user_message("always-small", "Name a primary colour.");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});

    let response = app.chat(request).await;

    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = sse_data(&response.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, plain["choices"][0]["message"]["content"].as_str().unwrap(), "greedy: the same answer, streamed");
    assert!(chunks.len() > 3, "the answer comes in pieces");
    let last = &chunks[chunks.len() - 2];
    assert_eq!(last["choices"][0]["finish_reason"], plain["choices"][0]["finish_reason"]);
    let index = last["tiergate"]["ledger_index"].as_u64().unwrap();
    assert_eq!(app.ledger_entry(index).await["outcome"], "served", "committed before the final chunk");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], plain["usage"]["total_tokens"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_tier_is_called_over_the_openai_protocol_with_its_logprobs() {
    let remote = spawn_app().await;
    let key_env = format!("TIERGATE_TEST_REMOTE_KEY_{}", uuid::Uuid::new_v4().simple()).to_uppercase();
    // SAFETY: the variable name is unique to this test; nothing else reads or writes it.
    unsafe { std::env::set_var(&key_env, &remote.app_token) };
    let mut settings = test_settings();
    settings.cards_dirs.push(cards_dir(&[
        ("remote.yaml", remote_model_card("remote-large", &format!("{}/v1", remote.address), "always-small", &key_env)),
        ("system.yaml", system_card("small-then-remote", SMALL_MODEL, "remote-large@1", 20_000)),
    ]));
    let app = spawn_app_with(settings).await;
    let remote_entries = remote.ledger_count().await;

    let response: Value = app.chat(user_message("small-then-remote", "Name a primary colour.")).await.json().await.unwrap();

    assert_eq!(response["tiergate"]["tier_served"], 1, "{response}");
    assert_eq!(remote.ledger_count().await, remote_entries + 1, "the remote tiergate served (and recorded) it");
    let entry = app.ledger_entry(response["tiergate"]["ledger_index"].as_u64().unwrap()).await;
    let attempt = &entry["attempts"][1];
    assert_eq!(attempt["model"]["id"], "remote-large");
    assert!(attempt["error"].is_null(), "{attempt}");
    assert!(attempt["signals"]["mean_logprob"].as_f64().unwrap() > -100.0, "the remote returned token logprobs: {attempt}");
    assert!(attempt["tokens"]["completion"].as_u64().unwrap() > 0);
    let expected_cost = (attempt["tokens"]["prompt"].as_f64().unwrap() * 1.0 + attempt["tokens"]["completion"].as_f64().unwrap() * 2.0) / 1000.0;
    assert!((attempt["cost"].as_f64().unwrap() - expected_cost).abs() < 1e-9);
    let answer = response["choices"][0]["message"]["content"].as_str().unwrap();
    let remote_entry = remote.ledger_entry(remote_entries as u64).await;
    assert_eq!(remote_entry["answer_sha256"], hex::encode(Sha256::digest(answer.as_bytes())), "the answer is the remote's");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_tier_is_handled_by_policy_and_repeated_failures_open_its_circuit() {
    let key_env = format!("TIERGATE_TEST_DEAD_KEY_{}", uuid::Uuid::new_v4().simple()).to_uppercase();
    // SAFETY: the variable name is unique to this test.
    unsafe { std::env::set_var(&key_env, "unused") };
    let mut settings = test_settings();
    settings.breaker_failures = 2;
    settings.breaker_open_s = 600;
    // Port 9 (discard) has no listener here: connections are refused at once.
    settings.cards_dirs.push(cards_dir(&[
        ("dead.yaml", remote_model_card("dead-remote", "http://127.0.0.1:9/v1", "nothing", &key_env)),
        ("system.yaml", system_card("dead-first", "dead-remote@1", SMALL_MODEL, 20_000)),
    ]));
    let app = spawn_app_with(settings).await;

    let mut errors = Vec::new();
    for _ in 0..3 {
        let response: Value = app.chat(user_message("dead-first", "Name a primary colour.")).await.json().await.unwrap();
        assert_eq!(response["tiergate"]["tier_served"], 1, "the policy escalated past the failed tier: {response}");
        let entry = app.ledger_entry(response["tiergate"]["ledger_index"].as_u64().unwrap()).await;
        assert_eq!(entry["attempts"][0]["accept"]["decision"]["action"], "escalate");
        errors.push(entry["attempts"][0]["error"].as_str().unwrap().to_owned());
    }
    let ready: Value = app.get("/readyz").await.json().await.unwrap();

    assert!(errors[0].contains("unreachable"), "{errors:?}");
    assert!(errors[2].contains("circuit is open"), "after two failures the tier is skipped: {errors:?}");
    assert_eq!(ready["checks"]["tiers"]["dead-first/0"]["circuit"], "open", "{ready}");
    assert_eq!(ready["checks"]["tiers"]["dead-first/1"]["circuit"], "closed");
}

/// A caller whose time budget runs out leaves mistral.rs generating an answer nobody waits for.
/// Sending it fails; upstream mistral.rs then panicked in its error path and its engine thread
/// died, taking the requests queued behind on the same model with it (vendored fix in
/// `vendor/mistralrs-core/src/utils/mod.rs`).
#[tokio::test(flavor = "multi_thread")]
async fn a_tier_over_its_time_budget_is_an_attempt_with_the_error_and_the_next_request_is_served() {
    let impatient = format!(
        "kind: system-card\nid: impatient\npurpose: test\npolicy: tiergate-default@1\ntiers:\n\
         - {{name: only, model: \"{SMALL_MODEL}\", decoding: {{max_tokens: 48, temperature: 0.0}}}}\n\
         slas: {{p95_latency_ms: 150}}\nescalation: {{min_mean_logprob: -1000.0}}\n"
    );
    let mut settings = test_settings();
    settings.cards_dirs.push(cards_dir(&[("impatient.yaml", impatient)]));
    let app = spawn_app_with(settings).await;

    // 48 tokens take far longer than 150 ms here, so the tier is abandoned mid-answer.
    let abandoned = app.chat(user_message("impatient", "Write a long story about a dragon and a castle.")).await;
    assert_ne!(abandoned.status(), 200);
    let body: Value = abandoned.json().await.unwrap();
    let entry = app.ledger_entry(body["error"]["ledger_index"].as_u64().expect("the failure is in the ledger")).await;
    assert!(entry["attempts"][0]["error"].as_str().unwrap().contains("time budget"), "{entry}");

    // Queued on the same model while the abandoned answer is still being generated.
    let response: Value = app.chat(user_message("always-small", "Name a primary colour.")).await.json().await.unwrap();
    let entry = app.ledger_entry(response["tiergate"]["ledger_index"].as_u64().unwrap()).await;
    assert!(entry["attempts"][0]["error"].is_null(), "the model's engine survived: {entry}");
    assert_eq!(response["tiergate"]["tier_served"], 0, "{response}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_tier_queue_answers_429_with_retry_after_instead_of_waiting() {
    let mut settings = test_settings();
    settings.tier_concurrency = 1;
    settings.tier_queue_depth = 0;
    let app = spawn_app_with(settings).await;
    let entries = app.ledger_count().await;

    let requests = (0..4).map(|_| app.chat(user_message("always-small", "Write a sentence about the sea.")));
    let responses = futures::future::join_all(requests).await;

    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert!(statuses.contains(&200), "{statuses:?}");
    let refused: Vec<&reqwest::Response> = responses.iter().filter(|r| r.status() == 429).collect();
    assert!(!refused.is_empty(), "{statuses:?}");
    assert!(refused.iter().all(|r| r.headers()["retry-after"] == "1"));
    let served = statuses.iter().filter(|s| **s == 200).count() as i64;
    assert_eq!(app.ledger_count().await, entries + served, "refused requests reached no tier and left no entry");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_response_reports_the_gateways_own_overhead_and_the_cost() {
    let app = spawn_app().await;

    let response = app.chat(user_message("always-small", "Hi")).await;

    let overhead: f64 = response.headers()["x-tiergate-overhead-ms"].to_str().unwrap().parse().unwrap();
    let body: Value = response.json().await.unwrap();
    let model_ms = body["tiergate"]["model_ms"].as_f64().unwrap();
    assert!(overhead >= 0.0 && model_ms > 0.0);
    assert_eq!(body["tiergate"]["overhead_ms"].as_f64().unwrap(), overhead);
    let attempts_ms: f64 = body["tiergate"]["attempts"].as_array().unwrap().iter().map(|a| a["latency_ms"].as_f64().unwrap()).sum();
    assert!((attempts_ms - model_ms).abs() < 0.01, "model time is the attempts' time");
    // The small packaged model's card: 0.0002 per 1k prompt tokens, 0.001 per 1k generated.
    let expected_cost =
        (body["usage"]["prompt_tokens"].as_f64().unwrap() * 0.0002 + body["usage"]["completion_tokens"].as_f64().unwrap() * 0.001) / 1000.0;
    assert!((body["tiergate"]["cost"].as_f64().unwrap() - expected_cost).abs() < 1e-12, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prompt_that_reuses_cached_keys_and_values_gets_the_answer_it_got_without_them() {
    let app = spawn_app().await;
    let ask = |text: &'static str| {
        let app = &app;
        async move {
            let body: Value = app.chat(user_message("always-small", text)).await.json().await.unwrap();
            let attempt = &body["tiergate"]["attempts"][0];
            (body["choices"][0]["message"]["content"].as_str().unwrap().to_owned(), attempt["mean_logprob"].as_f64().unwrap())
        }
    };
    let question = "What is the capital of France? Answer in one word.";

    // The first answer is computed from scratch. The second question shares the chat template's
    // prefix with it, so it reuses that part of the first one's cached keys and values and runs
    // only its own tokens. Asked again, the first question reuses all but its last prompt token
    // from the cache: wrong positions or another request's keys would change the answer.
    let (first, first_logprob) = ask(question).await;
    let (other, _) = ask("Name a primary colour.").await;
    let (again, again_logprob) = ask(question).await;

    assert_ne!(first, other);
    assert_eq!(again, first, "the cached prefix must give the same greedy answer");
    assert!((again_logprob - first_logprob).abs() < 1e-3, "{again_logprob} vs {first_logprob}");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_in_flight_together_on_one_model_get_the_answers_they_get_alone() {
    let mut settings = test_settings();
    // Let all three through tiergate's own queue at once, so they meet in mistral.rs.
    settings.tier_concurrency = 3;
    let app = spawn_app_with(settings).await;
    let questions = ["What is 17 times 23?", "Write a haiku about governance.", "Name three primary colours."];
    let ask = |question: &'static str| {
        let app = &app;
        async move {
            let body: Value = app.chat(user_message("always-small", question)).await.json().await.unwrap();
            body["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
        }
    };

    let mut alone = Vec::new();
    for question in questions {
        alone.push(ask(question).await);
    }
    // All three at once on the same loaded model: one sequence's answer must never continue with
    // another's keys and values (it did when mistral.rs decoded them as one batch).
    let together = futures::future::join_all(questions.map(ask)).await;

    assert_eq!(together, alone);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prompt_longer_than_the_context_is_a_400_recorded_in_the_ledger_that_opens_no_circuit() {
    let app = spawn_app().await;
    // ~10,000 tokens: more than SmolLM2's 8,192-token context.
    let prompt = " apple".repeat(10_000);

    let response = app.chat(user_message("always-small", &prompt)).await;

    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "context_length_exceeded", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(SMALL_MODEL) && message.contains("8192"), "names the model and its context: {message}");
    let index = body["error"]["ledger_index"].as_u64().expect("the refusal points at its ledger entry");
    let entry = app.ledger_entry(index).await;
    assert_eq!(entry["outcome"], "denied");
    let attempts = entry["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "the policy escalated once: the larger tier might have had a longer context");
    for attempt in attempts {
        assert_eq!(attempt["accept"]["input"]["attempt"]["error_code"], "context_length_exceeded", "{attempt}");
    }
    // The tiers are healthy: a client's over-long prompts must not open their circuits.
    for _ in 0..3 {
        assert_eq!(app.chat(user_message("always-small", &prompt)).await.status(), 400);
    }
    let served = app.chat(user_message("always-small", "Hi")).await;
    assert_eq!(served.status(), 200, "{}", served.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_optional_self_check_asks_the_model_and_hands_p_yes_to_the_accept_gate() {
    let mut settings = test_settings();
    let card = |id: &str, min_yes: &str| {
        format!(
            "kind: system-card\nid: {id}\npurpose: test\npolicy: tiergate-default@1\ntiers:\n\
             - {{name: small, model: \"{SMALL_MODEL}\", decoding: {{max_tokens: 8, temperature: 0.0}}}}\n\
             - {{name: large, model: \"{SMALL_MODEL}\", decoding: {{max_tokens: 8, temperature: 0.0}}}}\n\
             escalation: {{min_mean_logprob: -1000.0, self_check: true{min_yes}}}\n"
        )
    };
    settings
        .cards_dirs
        .push(cards_dir(&[("checked.yaml", card("self-checked", "")), ("strict.yaml", card("self-checked-strict", ", min_self_check_yes: 1.0"))]));
    let app = spawn_app_with(settings).await;

    let checked: Value = app.chat(user_message("self-checked", "What is the capital of France?")).await.json().await.unwrap();
    let entry = app.ledger_entry(checked["tiergate"]["ledger_index"].as_u64().unwrap()).await;
    let signals = &entry["attempts"][0]["accept"]["input"]["attempt"]["signals"];
    let p_yes = signals["self_check_yes"].as_f64().unwrap_or_else(|| panic!("no self-check signal: {signals}"));
    assert!((0.0..=1.0).contains(&p_yes), "{p_yes}");
    assert_eq!(checked["tiergate"]["tier_served"], 0, "no threshold on it: the confident answer is accepted");

    // With a threshold the model's doubt cannot meet (below 1), the same answer is escalated.
    let strict: Value = app.chat(user_message("self-checked-strict", "What is the capital of France?")).await.json().await.unwrap();
    let strict_entry = app.ledger_entry(strict["tiergate"]["ledger_index"].as_u64().unwrap()).await;
    let strict_yes = strict_entry["attempts"][0]["accept"]["input"]["attempt"]["signals"]["self_check_yes"].as_f64().unwrap();
    // Greedy: the same question gets the same self-check (the second may reuse the first's
    // cached prompt prefix, which can move the last float bits).
    assert!((strict_yes - p_yes).abs() < 1e-4, "{strict_yes} vs {p_yes}");
    let first_decision = &strict_entry["attempts"][0]["accept"]["decision"];
    if strict_yes < 1.0 {
        assert_eq!(first_decision["action"], "escalate", "{first_decision}");
        assert!(first_decision["reasons"][0].as_str().unwrap().contains("self-check"), "{first_decision}");
    } else {
        assert_eq!(first_decision["action"], "accept", "P(yes) = 1 meets the threshold: {first_decision}");
    }
}
