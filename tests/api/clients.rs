//! The tools people point at an API, pointed at a running gateway: the official `openai`
//! Python SDK and schemathesis, both from PyPI, pinned with their dependencies.

use serde_json::{Value, json};

use crate::helpers::spawn_app;

const OPENAI_SDK: &[&str] = &[
    "openai==3.57.0",
    "annotated-types==0.8.0",
    "anyio==4.16.0",
    "h11==0.16.0",
    "httpcore2==2.16.2",
    "httpx2==2.16.2",
    "idna==3.20",
    "jiter==0.19.0",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "sniffio==1.3.1",
    "truststore==0.10.5",
    "typing-inspection==0.4.5",
    "typing-extensions==4.16.0",
];

fn run_python(script: &str, tools: &std::path::Path, args: &[&str]) -> std::process::Output {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    std::process::Command::new("python3").arg(script).args(args).env("PYTHONPATH", tools).output().expect("python3 runs")
}

/// An application written against OpenAI works unchanged: models, chat with logprobs and their
/// top alternatives, streaming; and what tiergate does not implement reaches it as the SDK's own
/// `BadRequestError`, naming the parameter.
#[tokio::test(flavor = "multi_thread")]
async fn the_official_openai_sdk_lists_models_chats_with_logprobs_streams_and_sees_unsupported_parameters_refused() {
    let app = spawn_app().await;
    let tools = tokio::task::spawn_blocking(|| python_tools(OPENAI_SDK)).await.unwrap();
    let base_url = format!("{}/v1", app.address);
    let key = app.app_token.clone();

    let output =
        tokio::task::spawn_blocking(move || run_python("tests/clients/openai_sdk.py", &tools, &[&base_url, &key, "always-small"])).await.unwrap();

    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(seen["models"].as_array().unwrap().contains(&json!("support-triage")), "{seen}");
    assert_eq!(seen["retrieved"], "always-small");
    assert_eq!(seen["retrieve_unknown"], json!({"status": 404, "code": "unknown_system"}));
    assert!(!seen["chat"]["content"].as_str().unwrap().is_empty(), "{seen}");
    assert_eq!(seen["chat"]["tier_served"], 0);
    let logprob_text: String = seen["chat"]["logprob_tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(logprob_text, seen["chat"]["content"].as_str().unwrap(), "one logprob per token of the answer, no end-of-turn token");
    assert_eq!(seen["stream"]["content"], seen["chat"]["content"], "greedy: the stream carries the same answer");
    assert_eq!(seen["stream"]["usage"], seen["chat"]["usage"]);
    assert_eq!(seen["stream"]["logprob_tokens"], seen["chat"]["logprob_tokens"], "the stream carries the same logprobs");
    // top_logprobs: five real alternatives per token, best first; greedy, so the chosen token is
    // the best of them, with the same logprob; and probabilities, so they sum to at most 1.
    assert_eq!(seen["top_logprobs"]["content"], seen["chat"]["content"], "asking for alternatives does not change the answer");
    let tokens = seen["top_logprobs"]["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), seen["chat"]["logprob_tokens"].as_array().unwrap().len());
    for token in tokens {
        let top = token["top"].as_array().unwrap();
        assert_eq!(top.len(), 5, "{token}");
        let logprobs: Vec<f64> = top.iter().map(|alt| alt[1].as_f64().unwrap_or_else(|| panic!("a logprob is a number: {token}"))).collect();
        assert!(logprobs.windows(2).all(|w| w[0] >= w[1]), "best first: {token}");
        assert!(logprobs.iter().map(|l| l.exp()).sum::<f64>() <= 1.0 + 1e-4, "{token}");
        assert_eq!(top[0][0], token["token"], "greedy picks the best alternative: {token}");
        assert!((logprobs[0] - token["logprob"].as_f64().unwrap()).abs() < 1e-4, "{token}");
        assert!(logprobs[4] < logprobs[0], "the alternatives are distinct tokens: {token}");
    }
    for (param, refusal) in seen["refused"].as_object().unwrap() {
        assert_eq!(refusal, &json!({"status": 400, "code": "unsupported_parameter", "param": param}), "{param}");
    }
    assert_eq!(seen["refused"].as_object().unwrap().len(), 5);
}

/// Python tools from PyPI that tests run against tiergate (validators, SDKs), installed once
/// into the shared cache by tiergate's own installer: `python3 -m <module>` with the returned
/// directory on `PYTHONPATH`.
pub fn python_tools(pins: &[&str]) -> std::path::PathBuf {
    let settings = tiergate::config::Settings::default();
    tiergate::inference::ensure_python_tools(&settings.model_cache_dir, &settings.python, pins).unwrap_or_else(|e| panic!("{e}"))
}

/// schemathesis and what it needs, pinned.
const SCHEMATHESIS: &[&str] = &[
    "schemathesis==4.32.5",
    "anyio==4.16.0",
    "certifi==2026.10.19.post1",
    "charset-normalizer==3.5.3",
    "click==8.5.1",
    "graphql-core==3.3.2",
    "harfile==0.6.0",
    "hypothesis==6.170.17",
    "hypothesis-graphql==0.13.5",
    "idna==3.20",
    "iniconfig==2.3.1",
    "jsonschema-rs==0.60.3",
    "markdown-it-py==4.3.0",
    "markupsafe==3.0.4",
    "mdurl==0.1.2",
    "packaging==26.4",
    "pluggy==1.7.0",
    "pygments==2.21.0",
    "pyrate-limiter==4.5.1",
    "pytest==9.2.0",
    "pyyaml==6.0.4",
    "requests==2.34.2",
    "rich==15.0.0",
    "sortedcontainers==2.4.0",
    "typing-extensions==4.16.0",
    "urllib3==2.8.0",
    "werkzeug==3.1.9",
];

/// schemathesis generates requests from the served document for every operation, with a key
/// that holds every role, and checks that no answer is a server error, that every status is
/// documented, and that every body matches its documented schema. Bounded by examples per
/// operation, not by time, so that a run is the same run every time (fixed seed).
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_undocumented_status_or_body_off_its_schema() {
    let app = spawn_app().await;
    let every_role = app.issue_key(json!({"subject": "schemathesis", "roles": ["admin", "author", "approver", "app", "reviewer", "auditor"]})).await;
    let tools = tokio::task::spawn_blocking(|| python_tools(SCHEMATHESIS)).await.unwrap();
    let report = app.settings.data_dir.join("schemathesis");
    std::fs::create_dir_all(&report).unwrap();
    let args: Vec<String> = [
        "run",
        &format!("{}/openapi.json", app.address),
        "--checks",
        "not_a_server_error,status_code_conformance,response_schema_conformance",
        "--header",
        &format!("Authorization: Bearer {every_role}"),
        "--max-examples",
        "12",
        "--seed",
        "20261202",
        "--workers",
        "1",
        "--request-timeout",
        "120",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        report.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'schemathesis'; schemathesis()"])
            .args(&args)
            .env("PYTHONPATH", tools)
            // schemathesis keeps its state in the working directory: the test's own.
            .current_dir(&report)
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
}
