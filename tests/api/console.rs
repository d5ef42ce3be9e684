//! The web console in a real browser: Debian's chromium, driven over WebDriver (chromedriver),
//! against the real gateway and model. `.ci/run` installs both; set `TIERGATE_SCREENSHOTS` to
//! a directory to have the main pages saved there as PNG (the README's pictures).

use std::{
    net::TcpListener,
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, user_message};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless chromium session. chromedriver runs in a process group of its own, and the
/// whole group (chromedriver and every chromium process it started) is killed when this goes
/// away, also when a test fails: killing chromedriver alone leaves chromium running.
struct Browser {
    client: Client,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.driver.id())]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn browser() -> Browser {
    assert!(
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
        "the console tests need Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)"
    );
    let port = free_port();
    let driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let capabilities: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            // No sandbox: CI runs as root, where chromium refuses its sandbox.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000",
                // No crash handler: it would start in a session of its own and outlive the test.
                "--disable-crash-reporter", "--disable-breakpad"],
        }
    }))
    .unwrap();
    let mut last_error = None;
    for _ in 0..100 {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector).capabilities(capabilities.clone()).connect(&format!("http://127.0.0.1:{port}")).await {
            Ok(client) => return Browser { client, driver },
            Err(error) => last_error = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not accept a session: {last_error:?}");
}

impl Browser {
    async fn open(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    async fn text(&self, css: &str) -> String {
        let url = self.client.current_url().await.map(|u| u.to_string()).unwrap_or_default();
        self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css} on {url}: {e}")).text().await.unwrap()
    }

    async fn attribute(&self, css: &str, name: &str) -> Option<String> {
        self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}")).attr(name).await.unwrap()
    }

    async fn click(&self, css: &str) {
        self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}")).click().await.unwrap();
    }

    /// Clicks a button that submits a form and waits until the browser has left the page.
    async fn submit(&self, css: &str) {
        let old_page = self.client.find(Locator::Css("html")).await.unwrap();
        self.click(css).await;
        for _ in 0..200 {
            if old_page.tag_name().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("clicking {css} did not leave {}", self.path().await);
    }

    async fn fill(&self, css: &str, value: &str) {
        self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}")).send_keys(value).await.unwrap();
    }

    async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        format!("{}{}", url.path(), url.query().map(|q| format!("?{q}")).unwrap_or_default())
    }

    async fn sign_in(&self, address: &str, token: &str) {
        self.open(&format!("{address}/console")).await;
        assert!(self.path().await.starts_with("/console/sign-in"), "without a session the console asks to sign in: {}", self.path().await);
        self.fill("#key", token).await;
        self.submit("#sign-in").await;
    }

    /// The state a page's proof check reached, once it is no longer pending.
    async fn proof_state(&self) -> (String, String) {
        for _ in 0..100 {
            let state = self.attribute("#proof-result", "data-state").await.unwrap_or_default();
            if state != "pending" {
                return (state, self.text("#proof-result").await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the proof check never finished: {}", self.text("#proof-result").await);
    }

    async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("TIERGATE_SCREENSHOTS") else { return };
        let png = self.client.screenshot().await.unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }
}

/// Answers that escalate and ones that do not, a refusal, and two held for review.
async fn known_traffic(app: &TestApp) -> (u64, u64, Vec<u64>, Vec<i64>) {
    let (mut requests, mut escalated, mut answers) = (0, 0, Vec::new());
    for prompt in ["What is the capital of France?", "Name a primary colour.", "Write one word that rhymes with cat."] {
        let response = app.chat(user_message("support-triage", prompt)).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        requests += 1;
        escalated += u64::from(body["tiergate"]["escalated"].as_bool().unwrap());
        answers.push(body["tiergate"]["ledger_index"].as_u64().unwrap());
    }
    let mut denied = user_message("support-triage", "What is wrong with my knee?");
    denied["metadata"] = json!({"use_case": "medical-diagnosis"});
    assert_eq!(app.chat(denied).await.status(), 403);
    requests += 1;
    let mut held = Vec::new();
    for prompt in ["Explain quantum gravity.", "Explain dark matter."] {
        let response = app.chat(user_message("always-review", prompt)).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        held.push(body["tiergate"]["ledger_index"].as_i64().unwrap());
    }
    (requests, escalated, answers, held)
}

/// A page on another origin that posts a verdict form to the console as soon as it loads.
fn forging_site(target: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let page = format!(
        r#"<!doctype html><form method="post" action="{target}"><input name="csrf" value="guessed"><input name="verdict" value="reject"></form><script>document.forms[0].submit()</script>"#
    );
    let server = actix_web::HttpServer::new(move || {
        let page = page.clone();
        actix_web::App::new().default_service(actix_web::web::to(move || {
            let page = page.clone();
            async move { actix_web::HttpResponse::Ok().content_type("text/html").body(page) }
        }))
    })
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    address
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_what_the_api_reports_proves_entries_in_the_browser_and_records_verdicts() {
    let app = spawn_app().await;
    let (requests, escalated, answers, held) = known_traffic(&app).await;
    let auditor = app.issue_key(json!({"subject": "console-auditor", "roles": ["auditor", "reviewer"]})).await;
    let browser = browser().await;

    browser.sign_in(&app.address, &auditor).await;
    assert_eq!(browser.path().await, "/console/overview");
    let shown_requests = browser.attribute("#requests-support-triage", "data-value").await.unwrap();
    let shown_escalated = browser.attribute("#escalation-support-triage", "data-escalated").await.unwrap();
    assert_eq!(shown_requests, requests.to_string(), "the overview counts the requests the API answered");
    assert_eq!(shown_escalated, escalated.to_string(), "and the escalations the API reported");
    let rate = browser.text("#escalation-support-triage").await;
    assert_eq!(rate, format!("{:.1}%", 100.0 * escalated as f64 / requests as f64));
    browser.screenshot("overview").await;

    // The explorer lists the entries; its filters narrow them as the API's do.
    browser.open(&format!("{}/console/ledger?outcome=held_for_review", app.address)).await;
    let rows = browser.client.find_all(Locator::Css("#entries tbody tr")).await.unwrap();
    let mut listed = Vec::new();
    for row in rows {
        listed.push(row.attr("data-index").await.unwrap().unwrap().parse::<i64>().unwrap());
    }
    assert_eq!(listed, held, "held_for_review lists exactly the held answers");
    browser.screenshot("ledger").await;

    // An entry's proof is checked in the browser against the signed checkpoint.
    browser.open(&format!("{}/console/ledger/{}", app.address, answers[0])).await;
    let (state, message) = browser.proof_state().await;
    assert_eq!(state, "verified", "{message}");
    assert!(message.contains(&format!("entry {}", answers[0])), "{message}");
    assert_eq!(browser.text("#entry-type").await, "inference");
    browser.screenshot("entry").await;
    // A key other than the ledger's does not verify it.
    let other_key_file = std::env::temp_dir().join(format!("tiergate-other-key-{}", uuid::Uuid::new_v4()));
    let other_key = tiergate::ledger::CheckpointSigner::load_or_create(&other_key_file, &app.settings.ledger_origin).unwrap().verifier_keys();
    let _ = std::fs::remove_file(&other_key_file);
    browser.client.find(Locator::Css("#verifier-key")).await.unwrap().clear().await.unwrap();
    browser.fill("#verifier-key", &other_key).await;
    browser.click("#check-proof").await;
    let (state, message) = browser.proof_state().await;
    assert_eq!(state, "failed", "{message}");

    // A verdict recorded in the review queue is a ledger entry.
    browser.open(&format!("{}/console/reviews", app.address)).await;
    browser.click(&format!("a[href='/console/reviews/{}']", held[0])).await;
    browser.screenshot("review").await;
    browser.click("input[name=verdict][value=correct]").await;
    browser.fill("#correction", "Nobody knows yet.").await;
    browser.submit("#record-verdict").await;
    assert!(browser.text("#verdict").await.starts_with("corrected by console-auditor"), "{}", browser.text("#verdict").await);
    let verdict_index: u64 = browser.text("#verdict-entry").await.trim_start_matches("ledger entry ").parse().unwrap();
    let verdict = app.ledger_entry(verdict_index).await;
    assert_eq!((verdict["type"].as_str(), verdict["verdict"].as_str()), (Some("review"), Some("corrected")));
    assert_eq!(verdict["subject"]["ledger_index"], held[0]);
    assert_eq!(verdict["reviewer"]["id"], "console-auditor");

    // A page the role may not see is refused, not shown empty.
    browser.open(&format!("{}/console/keys", app.address)).await;
    assert_eq!(browser.text("#error-status").await, "403 Forbidden");
    assert!(browser.text("#error-message").await.contains("admin"), "the refusal names the role needed");

    // A form posted from another site is refused, and nothing is written.
    let entries_before = app.ledger_count().await;
    let forger = forging_site(format!("{}/console/reviews/{}/verdict", app.address, held[1]));
    browser.open(&forger).await;
    for _ in 0..50 {
        if browser.path().await.contains("/verdict") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(browser.text("#error-status").await, "403 Forbidden");
    let review: Value = app.get_with(&auditor, &format!("/v1/reviews/{}", held[1])).await.json().await.unwrap();
    assert_eq!(review["status"], "pending", "the forged verdict was not recorded");
    assert_eq!(app.ledger_count().await, entries_before);

    // Sign-out ends the session on the server: the old cookie is refused afterwards.
    browser.open(&format!("{}/console/overview", app.address)).await;
    let session = browser.client.get_named_cookie("tiergate_session").await.unwrap();
    browser.submit("#sign-out").await;
    assert!(browser.path().await.starts_with("/console/sign-in"));
    browser.open(&format!("{}/console/ledger", app.address)).await;
    assert!(browser.path().await.starts_with("/console/sign-in"), "signed out, the console asks to sign in again");
    browser.client.add_cookie(session).await.unwrap();
    browser.open(&format!("{}/console/ledger", app.address)).await;
    assert_eq!(browser.text("#error-status").await, "401 Unauthorized");
    assert!(browser.text("#error-message").await.contains("ended"), "{}", browser.text("#error-message").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_issues_and_revokes_keys_and_a_revoked_keys_session_ends() {
    let app = spawn_app().await;
    let browser = browser().await;
    browser.sign_in(&app.address, &app.admin_token).await;
    assert_eq!(browser.path().await, "/console/overview", "an admin sees the overview (the roles of /metrics)");

    browser.open(&format!("{}/console/keys", app.address)).await;
    browser.fill("#subject", "dana").await;
    browser.click("input[name=role][value=auditor]").await;
    browser.submit("#issue-key").await;
    let token = browser.text("#issued-token").await;
    browser.screenshot("keys").await;
    let me: Value = app.get_with(&token, "/v1/keys/me").await.json().await.unwrap();
    assert_eq!(me["subject"], "dana", "the key shown once works on the API");
    let key_id = me["key_id"].as_str().unwrap().to_owned();

    // Dana signs in in a second browser; the admin revokes her key; her next page is refused.
    let dana = browser_signed_in(&app.address, &token).await;
    dana.open(&format!("{}/console/ledger", app.address)).await;
    assert!(dana.client.find(Locator::Css("#entries")).await.is_ok());
    browser.open(&format!("{}/console/keys", app.address)).await;
    browser.submit(&format!("tr[data-key='{key_id}'] button")).await;
    assert!(browser.text(&format!("tr[data-key='{key_id}']")).await.contains("revoked"));
    dana.open(&format!("{}/console/ledger", app.address)).await;
    assert_eq!(dana.text("#error-status").await, "401 Unauthorized");

    // Malformed input: a page that says what was wrong, with its code; nothing is issued.
    let keys_before = app.store().await.keys().await.unwrap().len();
    browser.open(&format!("{}/console/keys", app.address)).await;
    browser.fill("#subject", "eve").await;
    browser.submit("#issue-key").await;
    assert_eq!(browser.text("#error-status").await, "422 Unprocessable Entity");
    assert!(browser.text("#error-message").await.contains("roles"), "{}", browser.text("#error-message").await);
    assert_eq!(app.store().await.keys().await.unwrap().len(), keys_before);
    browser.open(&format!("{}/console/ledger?tier=first", app.address)).await;
    assert_eq!(browser.text("#error-status").await, "403 Forbidden", "an admin may not read the ledger");
    browser.open(&format!("{}/console/no-such-page", app.address)).await;
    assert_eq!(browser.text("#error-status").await, "404 Not Found");

    // A forged session cookie is refused with a page saying so.
    let mut forged = browser.client.get_named_cookie("tiergate_session").await.unwrap();
    forged.set_value("forged-session-token");
    dana.client.add_cookie(forged).await.unwrap();
    dana.open(&format!("{}/console/ledger", app.address)).await;
    assert_eq!(dana.text("#error-status").await, "401 Unauthorized");
    assert!(dana.text("#error-message").await.contains("does not belong to any session"));
}

async fn browser_signed_in(address: &str, token: &str) -> Browser {
    let browser = browser().await;
    browser.sign_in(address, token).await;
    browser
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_ledger_filters_get_a_422_page_naming_the_parameter() {
    let app = spawn_app().await;
    let browser = browser_signed_in(&app.address, &app.auditor_token).await;
    browser.open(&format!("{}/console/ledger?tier=first", app.address)).await;
    assert_eq!(browser.text("#error-status").await, "422 Unprocessable Entity");
    assert!(browser.text("#error-message").await.contains("tier"), "{}", browser.text("#error-message").await);
    browser.open(&format!("{}/console/ledger?since=yesterday", app.address)).await;
    assert!(browser.text("#error-message").await.contains("since"), "{}", browser.text("#error-message").await);
    // Empty fields from the filter form mean "any".
    browser.open(&format!("{}/console/ledger?system=&outcome=&tier=", app.address)).await;
    assert!(browser.client.find(Locator::Css("#entries")).await.is_ok());
    browser.open(&format!("{}/console/overview?window=forever", app.address)).await;
    assert!(browser.text("#error-message").await.contains("window"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_experiments_page_shows_the_report_the_api_computes_and_only_to_its_roles() {
    use crate::experiments::{ask, experiment, ok, submit_and_approve_system, system_version};

    let app = spawn_app().await;
    submit_and_approve_system(&app, &system_version("shown-sys", -1000.0), 1, "shown-sys").await;
    assert_eq!(app.lifecycle("bob", "system-cards", "shown-sys", 1, "activate").await.status(), 200);
    submit_and_approve_system(&app, &system_version("shown-sys", 1.0), 2, "shown-sys").await;
    let text = experiment("shown", "shown-sys", "shown-sys@2", 50.0, "request", json!({"min_samples": 3, "max_error_rate": 0.5}));
    assert_eq!(app.submit("alice", "experiments", &text).await.status(), 201);
    assert_eq!(app.lifecycle("bob", "experiments", "shown", 1, "approve").await.status(), 200);
    ok(app.post_as("bob", "/v1/experiments/shown/versions/1/start", "application/json", String::new()).await).await;
    for request in 0..10 {
        ask(&app, "shown-sys", &format!("u{request}"), "normal").await;
    }
    let report = ok(app.get("/v1/experiments/shown/report").await).await;

    let browser = browser_signed_in(&app.address, &app.auditor_token).await;
    browser.open(&format!("{}/console/experiments", app.address)).await;
    assert!(browser.text("#experiments").await.contains("shown@1"));
    browser.click("a[href='/console/experiments/shown@1']").await;
    let arms = browser.text("#arms").await;
    let requests_row = arms.lines().find(|line| line.starts_with("Requests")).unwrap_or_default().to_owned();
    assert_eq!(
        requests_row,
        format!("Requests {} {}", report["control_arm"]["requests"], report["treatment_arm"]["requests"]),
        "the page shows the API's numbers"
    );
    assert!(browser.text("#experiment-state").await.starts_with("running"));
    assert!(browser.text("#experiment-verdict").await.contains("escalation_rate"));
    browser.screenshot("experiment").await;

    // The role rule of GET /v1/experiments: an application's key is refused.
    let app_browser = browser_signed_in(&app.address, &app.app_token).await;
    app_browser.open(&format!("{}/console/experiments/shown@1", app.address)).await;
    assert_eq!(app_browser.text("#error-status").await, "403 Forbidden");
}
