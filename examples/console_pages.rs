//! Server time of the web console's pages on a large ledger.
//!
//! cargo run --example console_pages [-- --entries 100000 --views 20]
//!
//! Writes `--entries` inference entries shaped like the gateway's (two tiers, attempts with
//! latency, tokens, cost and gate decisions; a quarter escalated) for `support-triage` through
//! the real append path into a fresh SQLite data directory, all within the last hour, then
//! starts the real gateway on it (shipped cards and models), signs in to the console with a
//! key holding every role and loads each page `--views` times over loopback, printing p50 and
//! p95 of the time to the last byte. The JSON API's entry listing is timed the same way as the
//! baseline measured in the same run. It also times the append path with and without the
//! overview's rollups, and the catch-up that adds up a ledger older than them.

use std::time::Instant;

use serde_json::json;
use tiergate::{
    config::Settings,
    ledger::{ANCHOR_FILE, CheckpointSigner, EntryDraft, Ledger},
    startup::{Application, LEDGER_KEY_FILE},
    store::Store,
};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn entry(i: u64) -> EntryDraft {
    let escalated = i.is_multiple_of(4);
    let attempt = |tier: u64, action: &str| {
        json!({
            "tier": tier, "tier_name": if tier == 0 { "small" } else { "large" },
            "model": {"id": "m", "version": 1, "digest": "sha256:00", "weights_sha256": "00", "loaded_weights_sha256": "00"},
            "signals": {"mean_logprob": -0.5 - (i % 7) as f64 / 10.0, "min_logprob": -2.0, "completion_tokens": 24},
            "tokens": {"prompt": 40, "completion": 24}, "latency_ms": 200.0 + (i % 97) as f64 * (tier + 1) as f64,
            "cost": 0.00002 * (tier + 1) as f64, "error": null,
            "accept": {"input": {"signals": {"mean_logprob": -0.6}}, "decision": {"action": action, "reasons": ["confidence"]}},
        })
    };
    let attempts = if escalated { vec![attempt(0, "escalate"), attempt(1, "accept")] } else { vec![attempt(0, "accept")] };
    let body = json!({
        "caller": {"id": "bench", "key_id": "0000000000000000", "role": ["app"]},
        "system": {"id": "support-triage", "version": 1, "digest": "sha256:00"},
        "policy": {"id": "tiergate-default", "version": 1, "digest": "sha256:00"},
        "request": {"prompt_sha256": "00", "max_tokens": 64, "temperature": 0.0},
        "route": {"input": {"prompt_chars": 40}, "decision": {"action": "serve", "tier": 0, "reasons": ["routine"]}},
        "attempts": attempts, "outcome": "served", "escalated": escalated, "served_tier": u64::from(escalated),
    });
    EntryDraft { entry_type: "inference", request_id: format!("bench-{i}"), system_id: Some("support-triage".into()), outcome: "served".into(), body }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let entries = arg("--entries", 100_000);
    let views = arg("--views", 20) as usize;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let settings = Settings {
        bind: "127.0.0.1:0".into(),
        data_dir: std::env::temp_dir().join(format!("tiergate-console-bench-{}", uuid::Uuid::new_v4())),
        cards_dirs: vec![repo.join("model-cards")],
        policies_dir: repo.join("policies"),
        bootstrap_admin_key: Some(tiergate::access::new_token()?),
        ..Settings::default()
    };
    {
        let store = Store::connect(&settings.effective_database_url()).await?;
        store.migrate().await?;
        let signer = CheckpointSigner::load_or_create(&settings.data_dir.join(LEDGER_KEY_FILE), &settings.ledger_origin)?;
        let ledger = std::sync::Arc::new(Ledger::new(store.clone(), signer).with_anchor_file(settings.data_dir.join(ANCHOR_FILE)));
        // First half without the overview's rollups (their position set where no batch starts,
        // so appends skip them), the baseline of the append cost; then the start-up catch-up
        // adds that half up; then the second half with rollups written in each append.
        let half = entries / 2;
        sqlx::query("UPDATE ledger_rollup_state SET next_index = -1").execute(store.pool()).await?;
        let without = append_entries(&ledger, 0..half).await?;
        sqlx::query("UPDATE ledger_rollup_state SET next_index = 0").execute(store.pool()).await?;
        let started = Instant::now();
        ledger.catch_up_rollups().await?;
        let catch_up = started.elapsed().as_secs_f64();
        let with = append_entries(&ledger, half..entries).await?;
        println!("appended {half} entries without rollups at {:.0} entries/s", half as f64 / without);
        println!("added them up (start-up catch-up) at {:.0} entries/s ({catch_up:.1} s)", half as f64 / catch_up);
        println!("appended {} entries with rollups at {:.0} entries/s", entries - half, (entries - half) as f64 / with);
        ledger.publish_checkpoint().await?;
    }
    let app = Application::build(settings.clone()).await?;
    let address = format!("http://{}", app.address());
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let admin = settings.bootstrap_admin_key.clone().unwrap_or_default();
    let issued: serde_json::Value = client
        .post(format!("{address}/v1/keys"))
        .bearer_auth(&admin)
        .json(&json!({"subject": "bench", "roles": ["admin", "auditor", "reviewer", "approver"]}))
        .send()
        .await?
        .json()
        .await?;
    let token = issued["token"].as_str().unwrap_or_default().to_owned();

    // Sign in as a browser would: the sign-in page's nonce cookie and field, then the form.
    let page = client.get(format!("{address}/console/sign-in")).send().await?;
    let nonce_cookie =
        page.headers().get("set-cookie").and_then(|v| v.to_str().ok()).unwrap_or_default().split(';').next().unwrap_or_default().to_owned();
    let html = page.text().await?;
    let nonce = html.split("name=\"nonce\" value=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or_default().to_owned();
    let signed_in = client
        .post(format!("{address}/console/sign-in"))
        .header("cookie", nonce_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        // Both are URL-safe base64 and `tg_<hex>.`: nothing to percent-encode.
        .body(format!("key={token}&nonce={nonce}"))
        .send()
        .await?;
    let session = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("tiergate_session="))
        .and_then(|c| c.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("sign-in gave no session ({})", signed_in.status()))?
        .to_owned();

    let middle = entries / 2;
    let pages = [
        ("overview, last hour", "/console/overview?window=1h".to_owned()),
        ("overview, 7 days", "/console/overview?window=7d".to_owned()),
        ("ledger, first page", "/console/ledger".to_owned()),
        ("ledger, from the middle", format!("/console/ledger?from_index={middle}")),
        ("ledger, escalated answers (tier 1)", "/console/ledger?tier=1".to_owned()),
        ("entry with its proof", format!("/console/ledger/{middle}")),
        ("checkpoints", "/console/ledger/checkpoints".to_owned()),
        ("review queue", "/console/reviews".to_owned()),
        ("keys", "/console/keys".to_owned()),
    ];
    println!("{:<38} {:>9} {:>9}", "page", "p50 ms", "p95 ms");
    for (name, path) in pages {
        let times = time_views(views, || client.get(format!("{address}{path}")).header("cookie", &session).send()).await?;
        println!("{name:<38} {:>9.1} {:>9.1}", times.0, times.1);
    }
    let times = time_views(views, || client.get(format!("{address}/v1/ledger/entries?limit=50")).bearer_auth(&token).send()).await?;
    println!("{:<38} {:>9.1} {:>9.1}", "baseline: GET /v1/ledger/entries?limit=50", times.0, times.1);
    let _ = std::fs::remove_dir_all(&settings.data_dir);
    Ok(())
}

/// Appends the entries `range` from 64 concurrent writers (group commit); seconds taken.
async fn append_entries(ledger: &std::sync::Arc<Ledger>, range: std::ops::Range<u64>) -> anyhow::Result<f64> {
    let started = Instant::now();
    let writers = 64;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let ledger = ledger.clone();
            let range = range.clone();
            tokio::spawn(async move {
                for i in range.skip(w).step_by(writers) {
                    ledger.append(entry(i)).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// p50 and p95 (nearest rank) of `views` loads, each to its last byte; a non-200 stops the run.
async fn time_views<F, R>(views: usize, load: F) -> anyhow::Result<(f64, f64)>
where
    F: Fn() -> R,
    R: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let mut times = Vec::with_capacity(views);
    for _ in 0..views {
        let started = Instant::now();
        let response = load().await?;
        let status = response.status();
        let body = response.bytes().await?;
        anyhow::ensure!(status == 200, "{status}: {}", String::from_utf8_lossy(&body).chars().take(300).collect::<String>());
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let rank = |q: f64| times[((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
    Ok((rank(0.5), rank(0.95)))
}
