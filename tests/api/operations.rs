//! Health, readiness, the OpenAPI document and the docs page.

use serde_json::Value;

use crate::helpers::spawn_app;

fn committed_openapi() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let generated = serde_json::to_value(tiergate::api::openapi_document()).unwrap();

    assert!(generated == committed_openapi(), "openapi/openapi.json is stale: run `cargo run -- openapi > openapi/openapi.json`");
}

/// `cargo fmt --check` under the committed rustfmt.toml, run by the test command so that CI
/// keeps it (the vendored crates keep upstream's formatting and are not workspace members).
#[test]
fn the_code_is_formatted() {
    let output =
        std::process::Command::new(env!("CARGO")).args(["fmt", "--check"]).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("cargo fmt runs");

    assert!(output.status.success(), "run `cargo fmt`:\n{}", String::from_utf8_lossy(&output.stdout));
}

/// `cargo clippy --all-targets -- -D warnings` on tiergate's own crate (dependencies are not
/// linted), run by the test command so that CI keeps it. It shares the test build's target
/// directory (cargo has released its lock by the time tests run), so only a metadata pass over
/// the dependencies is added. The variables cargo sets for a test (`CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR`, …) are removed: build scripts that watch them (ring's) would otherwise
/// re-run and make the next test build recompile everything above them.
#[test]
fn clippy_finds_nothing() {
    let target_dir = std::env::current_exe().unwrap().ancestors().nth(3).expect("the test binary lies in <target>/debug/deps").to_owned();
    let mut command = std::process::Command::new(env!("CARGO"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if (name.starts_with("CARGO_") && name != "CARGO_HOME") || name == "OUT_DIR" || name == "CARGO" {
            command.env_remove(name);
        }
    }
    let output = command
        .args(["clippy", "--all-targets", "--locked", "--quiet", "--", "-D", "warnings"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo clippy runs");

    assert!(output.status.success(), "cargo clippy --all-targets -- -D warnings:\n{}", String::from_utf8_lossy(&output.stderr));
}

/// The shipped alerting rules are valid Prometheus rules (promtool, from Debian's prometheus
/// package, which .ci/run installs when it is missing).
#[test]
fn the_alerting_rules_pass_promtool() {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/alerts.yml");
    let output = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool runs (apt-get install prometheus; .ci/run does)");

    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{report}");
    let shipped = std::fs::read_to_string(&rules).unwrap().lines().filter(|l| l.trim_start().starts_with("- alert:")).count();
    assert!(report.contains(&format!("SUCCESS: {shipped} rules found")), "every shipped rule was checked: {report}");

    // The uncosigned-checkpoints alert fires past the limit the gateway exports, not at it.
    let unit_test = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alerts-uncosigned.test.yml");
    let output = std::process::Command::new("promtool").args(["test", "rules"]).arg(&unit_test).output().unwrap();
    assert!(output.status.success(), "{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_served_openapi_document_is_3_1_and_documents_the_chat_endpoint() {
    let app = spawn_app().await;

    let served: Value = app.get("/openapi.json").await.json().await.unwrap();

    assert!(served["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(served["paths"]["/v1/chat/completions"]["post"].is_object());
    assert_eq!(served, committed_openapi());
}

/// openapi-spec-validator from PyPI and what it needs, pinned.
const OPENAPI_SPEC_VALIDATOR: &[&str] = &[
    "openapi-spec-validator==0.9.0",
    "openapi-schema-validator==0.9.0",
    "jsonschema==4.26.0",
    "jsonschema-path==0.5.0",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "attrs==26.1.0",
    "lazy-object-proxy==1.13.0",
    "pathable==0.6.0",
    "PyYAML==6.0.4",
    "rfc3339-validator==0.1.4",
    "six==1.17.0",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "pydantic-settings==2.16.3",
    "python-dotenv==1.2.4",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing-extensions==4.16.0",
];

/// What client generators and schemathesis need first: a document that is valid OpenAPI 3.1,
/// checked by the reference validator rather than by our own reading of the standard.
#[tokio::test(flavor = "multi_thread")]
async fn the_served_openapi_document_passes_openapi_spec_validator() {
    let app = spawn_app().await;
    let served = app.get("/openapi.json").await.text().await.unwrap();
    let file = app.settings.data_dir.join("served-openapi.json");
    std::fs::write(&file, served).unwrap();
    let tools = tokio::task::spawn_blocking(|| crate::clients::python_tools(OPENAPI_SPEC_VALIDATOR)).await.unwrap();

    let output = std::process::Command::new(&app.settings.python)
        .args(["-m", "openapi_spec_validator", "--schema", "3.1", "--errors", "all"])
        .arg(&file)
        .env("PYTHONPATH", tools)
        .output()
        .unwrap();

    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{report}");
    assert!(report.contains("OK"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docs_page_is_served_without_internet() {
    let app = spawn_app().await;

    let response = app.get("/docs/").await;

    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    // Vendored: the page loads its scripts from this server, not from a CDN.
    assert!(!html.contains("https://"), "{html}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness_report_the_loaded_systems() {
    let app = spawn_app().await;

    let health = app.get("/healthz").await;
    let ready = app.get("/readyz").await;

    assert_eq!(health.status(), 200);
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["database"], "ok");
    let systems: Vec<&str> = body["checks"]["systems"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(systems.contains(&"support-triage"), "{systems:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_get_the_json_error_body_and_a_supplied_request_id_is_echoed() {
    let app = spawn_app().await;

    let response = app.client.get(format!("{}/v2/nothing", app.address)).header("x-request-id", "trace-42").send().await.unwrap();

    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-request-id"], "trace-42");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(body["error"]["request_id"], "trace-42");
}
