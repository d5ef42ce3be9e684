//! The chat endpoint end to end: routing through real tiers, policy decisions, bad input.

use serde_json::{Value, json};

use crate::helpers::{spawn_app, user_message};

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_system_answers_with_a_real_model_and_routing_metadata() {
    let app = spawn_app().await;

    let response = app.chat(user_message("support-triage", "How do I reset my password?")).await;

    assert_eq!(response.status(), 200);
    let request_id = header(&response, "x-request-id");
    let ledger_header = header(&response, "x-tiergate-ledger-index");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(!body["choices"][0]["message"]["content"].as_str().unwrap().trim().is_empty());
    let meta = &body["tiergate"];
    assert_eq!(meta["system"], "support-triage@1");
    assert_eq!(meta["policy"], "tiergate-default@1");
    assert_eq!(meta["request_id"], request_id.as_str());
    assert_eq!(meta["ledger_index"].to_string(), ledger_header);
    // Whatever the model said, the routing must agree with the small tier's P(correct) threshold
    // (0.17), from the shipped confidence model.
    let first = &meta["attempts"][0];
    let p = first["p_correct"].as_f64().unwrap();
    if p >= 0.17 {
        assert_eq!(first["decision"], "accept");
        assert_eq!(meta["tier_served"], 0);
        assert_eq!(meta["escalated"], false);
    } else {
        assert_eq!(first["decision"], "escalate");
        assert_eq!(meta["escalated"], true);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_logprobs_are_natural_log_probabilities_and_the_signal_is_their_mean() {
    let app = spawn_app().await;
    let mut request = user_message("always-small", "Name three colours.");
    request["logprobs"] = json!(true);

    let response = app.chat(request).await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let content = body["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    // A probability is at most 1, so its log is at most 0; JSON has no NaN, so a logprob that
    // is not a number arrives as null and fails here too. (mistral.rs 0.8.1 reported log10 of
    // the raw logit for greedy decoding: positive, or NaN for a negative logit.)
    let logprobs: Vec<f64> = content.iter().map(|t| t["logprob"].as_f64().unwrap_or_else(|| panic!("logprob is not a number: {t}"))).collect();
    assert!(logprobs.iter().all(|l| *l <= 0.0), "{logprobs:?}");
    let mean = logprobs.iter().sum::<f64>() / logprobs.len() as f64;
    let signal = body["tiergate"]["attempts"][0]["mean_logprob"].as_f64().unwrap();
    assert!((signal - mean).abs() < 1e-4, "the accept gate's signal {signal} is the mean of {logprobs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_the_policy_accepts_is_served_by_the_small_tier() {
    let app = spawn_app().await;

    let response = app.chat(user_message("always-small", "Say hello.")).await;

    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-tiergate-tier"), "0");
    assert_eq!(header(&response, "x-tiergate-escalated"), "false");
    let body: Value = response.json().await.unwrap();
    let meta = &body["tiergate"];
    assert_eq!(meta["tier_served"], 0);
    assert_eq!(meta["tier_name"], "small");
    assert_eq!(meta["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(meta["attempts"][0]["decision"], "accept");
    assert!(meta["attempts"][0]["mean_logprob"].as_f64().unwrap() <= 0.0);
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_below_the_small_tiers_threshold_is_escalated_to_the_large_tier() {
    let app = spawn_app().await;

    let response = app.chat(user_message("escalate-once", "What is two plus two?")).await;

    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-tiergate-escalated"), "true");
    let body: Value = response.json().await.unwrap();
    let meta = &body["tiergate"];
    assert_eq!(meta["tier_served"], 1);
    assert_eq!(meta["escalated"], true);
    let attempts = meta["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["decision"], "escalate");
    assert!(attempts[0]["reasons"][0].as_str().unwrap().contains("below the threshold"), "{attempts:?}");
    assert_eq!(attempts[1]["decision"], "accept");
    let both_tiers_tokens: u64 = attempts.iter().map(|a| a["completion_tokens"].as_u64().unwrap()).sum();
    assert_eq!(body["usage"]["completion_tokens"].as_u64().unwrap(), both_tiers_tokens);
}

#[tokio::test(flavor = "multi_thread")]
async fn declared_high_stakes_start_on_the_large_tier() {
    let app = spawn_app().await;
    let mut request = user_message("always-small", "Is my account compromised?");
    request["metadata"] = json!({"stakes": "high"});

    let response = app.chat(request).await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let meta = &body["tiergate"];
    assert_eq!(meta["tier_served"], 1);
    assert_eq!(meta["escalated"], false);
    assert_eq!(meta["attempts"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blocked_use_case_is_refused_and_the_refusal_is_recorded() {
    let app = spawn_app().await;
    let mut request = user_message("support-triage", "What is wrong with my knee?");
    request["metadata"] = json!({"use_case": "medical-diagnosis"});

    let response = app.chat(request).await;

    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "policy_denied");
    assert!(body["error"]["message"].as_str().unwrap().contains("medical-diagnosis"));
    let index = body["error"]["ledger_index"].as_u64().expect("the refusal names its ledger entry");
    let entry = app.ledger_entry(index).await;
    assert_eq!(entry["outcome"], "denied");
    assert_eq!(entry["route"]["decision"]["action"], "deny");
    assert_eq!(entry["attempts"], json!([]), "no model ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_no_tier_is_sure_of_is_held_for_review_and_returned_flagged() {
    let app = spawn_app().await;

    let response = app.chat(user_message("always-review", "Explain quantum gravity.")).await;

    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["tiergate"]["outcome"], "held_for_review");
    assert_eq!(body["tiergate"]["review_required"], true, "the held answer is returned, flagged");
    assert!(!body["choices"][0]["message"]["content"].as_str().unwrap().is_empty());
    assert_eq!(body["tiergate"]["attempts"][1]["decision"], "review");
    let entry = app.ledger_entry(body["tiergate"]["ledger_index"].as_u64().unwrap()).await;
    assert_eq!(entry["outcome"], "held_for_review");
    assert_eq!(entry["answer_sha256"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_4xx_and_leaves_no_ledger_entry() {
    let app = spawn_app().await;
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (json!({"model": "no-such-system", "messages": [{"role": "user", "content": "hi"}]}), 404, "unknown_system", "no-such-system"),
        (json!({"model": "support-triage", "messages": []}), 422, "invalid_request", "messages"),
        (json!({"model": "support-triage"}), 422, "invalid_request", "messages"),
        (
            json!({"model": "support-triage", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}),
            422,
            "invalid_request",
            "max_tokens",
        ),
        (json!({"model": "support-triage", "messages": [{"role": "user", "content": 5}]}), 422, "invalid_request", "messages[0].content"),
        (json!({"model": "support-triage", "messages": [{"role": "wizard", "content": "hi"}]}), 422, "invalid_request", "messages[0].role"),
        (
            json!({"model": "support-triage", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}),
            422,
            "invalid_request",
            "max_tokens",
        ),
        (json!({"model": "support-triage", "messages": [{"role": "user", "content": "hi"}], "n": 3}), 400, "unsupported_parameter", "n:"),
        (
            json!({"model": "support-triage", "messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 21}),
            422,
            "invalid_request",
            "top_logprobs: 21",
        ),
        (
            json!({"model": "support-triage", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}),
            422,
            "invalid_request",
            "top_logprobs: needs",
        ),
    ];

    for (request, status, code, named) in cases {
        let response = app.chat(request.clone()).await;

        assert_eq!(response.status().as_u16(), status, "{request}");
        let request_id = header(&response, "x-request-id");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{request} → {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(named), "{request} → {body}");
        assert_eq!(body["error"]["request_id"], request_id.as_str());
    }
    assert_eq!(app.ledger_count().await, 0);
}

/// What would change the answer is refused, naming the parameter; the neutral values that
/// clients send by default pass.
#[tokio::test(flavor = "multi_thread")]
async fn openai_parameters_tiergate_does_not_implement_are_refused_by_name_not_ignored() {
    let app = spawn_app().await;
    let ask = |extra: Value| {
        let mut request = json!({"model": "always-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
        request.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        request
    };
    let tool = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]);
    let refused = [
        json!({"tools": tool}),
        json!({"tool_choice": "required"}),
        json!({"response_format": {"type": "json_object"}}),
        json!({"logit_bias": {"42": 10}}),
        json!({"top_p": 0.5}),
        json!({"stop": ["\n"]}),
        json!({"seed": 7}),
        json!({"n": 2}),
    ];

    for extra in refused {
        let param = extra.as_object().unwrap().keys().find(|k| *k != "logprobs").unwrap().clone();
        let response = app.chat(ask(extra.clone())).await;

        assert_eq!(response.status(), 400, "{extra}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unsupported_parameter", "{body}");
        assert_eq!(body["error"]["param"], param.as_str(), "{body}");
        assert!(body["error"]["message"].as_str().unwrap().starts_with(&format!("{param}:")), "{body}");
    }
    assert_eq!(app.ledger_count().await, 0, "nothing refused is recorded as served");

    let neutral = json!({"tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "top_p": 1.0,
        "presence_penalty": 0, "frequency_penalty": 0.0, "stop": null, "seed": null, "n": 1, "store": false});
    assert_eq!(app.chat(ask(neutral)).await.status(), 200, "the values that mean \"not used\" pass");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_is_a_400_with_the_error_body() {
    let app = spawn_app().await;

    let response = app.post_raw("/v1/chat/completions", r#"{"model": "support-triage", "messages": ["#).await;

    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_json");
    assert!(body["error"]["message"].as_str().unwrap().contains("line 1"), "{body}");
    assert!(!body["error"]["request_id"].as_str().unwrap().is_empty());
    assert_eq!(app.ledger_count().await, 0);
}

/// What OpenAI clients and chat UIs ask first: the systems this key may call, as models.
#[tokio::test(flavor = "multi_thread")]
async fn models_lists_the_systems_the_key_may_call_in_the_openai_format() {
    let app = spawn_app().await;

    let all: Value = app.get_with(&app.app_token, "/v1/models").await.json().await.unwrap();
    let scoped_key = app.issue_key(json!({"subject": "one-system-app", "roles": ["app"], "scopes": ["always-small"]})).await;
    let scoped: Value = app.get_with(&scoped_key, "/v1/models").await.json().await.unwrap();
    let one = app.get_with(&app.app_token, "/v1/models/support-triage").await;
    let hidden = app.get_with(&scoped_key, "/v1/models/support-triage").await;
    let unknown = app.get_with(&app.app_token, "/v1/models/no-such-system").await;

    assert_eq!(all["object"], "list");
    let ids: Vec<&str> = all["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"support-triage") && ids.contains(&"always-small"), "{ids:?}");
    assert_eq!(scoped["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect::<Vec<_>>(), ["always-small"]);
    assert_eq!(one.status(), 200);
    let model: Value = one.json().await.unwrap();
    assert_eq!((model["object"].as_str(), model["owned_by"].as_str()), (Some("model"), Some("tiergate")));
    assert!(model["created"].as_i64().unwrap() > 1_700_000_000, "{model}");
    assert!(model["tiergate"]["system"].as_str().unwrap().starts_with("support-triage@"), "{model}");
    let tiers: Vec<&str> = model["tiergate"]["tiers"].as_array().unwrap().iter().map(|t| t["model"].as_str().unwrap()).collect();
    assert_eq!(tiers, ["smollm2-135m-instruct@1", "gemma3-270m@1"]);
    assert_eq!(hidden.status(), 404, "a system outside the key's scopes is not shown");
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json::<Value>().await.unwrap()["error"]["code"], "unknown_system");
}
