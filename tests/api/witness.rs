//! Witnessing (c2sp.org/tlog-witness): real `tiergate witness serve` processes on loopback
//! cosign the gateway's growing ledger, refuse a forked checkpoint, and a verifier counts their
//! cosignatures; witnesses that are down or answer badly never hold up a request.

use std::{collections::HashMap, time::Duration};

use base64::{Engine as _, prelude::BASE64_STANDARD};
use serde_json::Value;
use tiergate::{
    config::WitnessSetting,
    ledger::{CheckpointSigner, CosigningKey},
    startup::LEDGER_KEY_FILE,
};
use tlog_tiles::{Hash, HashReader, prove_tree, stored_hash_index, stored_hashes, tree_hash};

use crate::helpers::{TestApp, spawn_app_with, test_settings, user_message};

/// `tiergate witness serve` as a process, killed when dropped.
struct WitnessProcess {
    child: std::process::Child,
    url: String,
    key: String,
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_witness(state_dir: &std::path::Path, name: &str, log_key: &str, listen: &str) -> WitnessProcess {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .args(["witness", "serve", "--listen", listen, "--name", name, "--log-key", log_key])
        .arg("--state-dir")
        .arg(state_dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the witness starts");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut key, mut url, mut line) = (String::new(), String::new(), String::new());
    while stdout.read_line(&mut line).unwrap() > 0 {
        if let Some(printed) = line.trim().strip_prefix("witness key ") {
            key = printed.to_owned();
        }
        if let Some(printed) = line.trim().strip_prefix("tiergate witness listening on ") {
            url = printed.to_owned();
            break;
        }
        line.clear();
    }
    assert!(!url.is_empty() && !key.is_empty(), "the witness printed its key and address");
    WitnessProcess { child, url, key }
}

fn scratch_dir(what: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tiergate-{what}-{}", uuid::Uuid::new_v4()))
}

/// Test settings whose ledger key exists already, so witnesses can be told it before the
/// gateway starts; returns the key's signer too.
fn settings_with_ledger_key() -> (tiergate::config::Settings, CheckpointSigner) {
    let mut settings = test_settings();
    let signer = CheckpointSigner::load_or_create(&settings.data_dir.join(LEDGER_KEY_FILE), &settings.ledger_origin).unwrap();
    settings.checkpoint_interval_s = 0;
    settings.witness_retry_s = 1;
    (settings, signer)
}

/// Serves a request, publishes a checkpoint of the tree with it, and returns that tree's size.
async fn serve_and_publish(app: &TestApp, question: &str) -> u64 {
    assert_eq!(app.chat(user_message("always-small", question)).await.status(), 200);
    let note = app.get("/v1/ledger/checkpoint").await.text().await.unwrap();
    note.lines().nth(1).unwrap().parse().unwrap()
}

/// Waits until the published checkpoint of `size` carries cosignatures from all of `witnesses`.
async fn wait_for_cosignatures(app: &TestApp, size: u64, witnesses: &[&str]) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        let published: Vec<Value> = app.get("/v1/ledger/checkpoints").await.json().await.unwrap();
        if let Some(checkpoint) = published.into_iter().find(|c| c["tree_size"] == size) {
            let names: Vec<&str> = checkpoint["cosignatures"].as_array().unwrap().iter().map(|c| c["witness"].as_str().unwrap()).collect();
            if witnesses.iter().all(|w| names.contains(w)) {
                return checkpoint;
            }
            last = checkpoint;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the checkpoint of {size} entries was not cosigned by {witnesses:?}: {last}");
}

fn verify_file(contents: &str, key: &str, witness_keys: &[&str], min: Option<usize>) -> (bool, String) {
    let dir = scratch_dir("witness-verify");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("checkpoint");
    std::fs::write(&file, contents).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tiergate"));
    command.args(["ledger", "verify"]).arg(&file).args(["--key", key.trim()]);
    for witness in witness_keys {
        command.args(["--witness-key", witness]);
    }
    if let Some(min) = min {
        command.args(["--min-witnesses", &min.to_string()]);
    }
    let output = command.output().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

/// An in-memory log built from leaf data: what a forking log operator would compute.
struct Tree(HashMap<u64, Hash>, u64);

impl HashReader for Tree {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes.iter().map(|i| self.0.get(i).copied().ok_or(tlog_tiles::Error::IndexesNotInTree)).collect()
    }
}

impl Tree {
    fn of(leaves: &[Vec<u8>]) -> Tree {
        let mut tree = Tree(HashMap::new(), 0);
        for leaf in leaves {
            for (offset, hash) in stored_hashes(tree.1, leaf, &tree).unwrap().into_iter().enumerate() {
                tree.0.insert(stored_hash_index(0, tree.1) + offset as u64, hash);
            }
            tree.1 += 1;
        }
        tree
    }
}

async fn add_checkpoint(url: &str, old: u64, proof: &[Hash], note: &str) -> (u16, String, String) {
    let lines: String = proof.iter().map(|h| format!("{}\n", BASE64_STANDARD.encode(h.0))).collect();
    let response = reqwest::Client::new().post(format!("{url}/add-checkpoint")).body(format!("old {old}\n{lines}\n{note}")).send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_witnesses_cosign_a_growing_log_refuse_a_fork_and_a_verifier_counts_their_cosignatures() {
    let (mut settings, signer) = settings_with_ledger_key();
    let (dir_one, dir_two) = (scratch_dir("witness-one"), scratch_dir("witness-two"));
    let one = start_witness(&dir_one, "witness.test/one", &signer.verifier_key, "127.0.0.1:0");
    let mut two = start_witness(&dir_two, "witness.test/two", &signer.verifier_key, "127.0.0.1:0");
    settings.witnesses =
        vec![WitnessSetting { url: one.url.clone(), key: one.key.clone() }, WitnessSetting { url: two.url.clone(), key: two.key.clone() }];
    let app = spawn_app_with(settings).await;
    let names = ["witness.test/one", "witness.test/two"];

    // First checkpoint (old size 0), then a larger one: cosigned only after a consistency proof.
    let first = serve_and_publish(&app, "What is two plus two?").await;
    wait_for_cosignatures(&app, first, &names).await;
    let second = serve_and_publish(&app, "Name a primary colour.").await;
    assert!(second > first);
    let cosigned = wait_for_cosignatures(&app, second, &names).await;
    for cosignature in cosigned["cosignatures"].as_array().unwrap() {
        assert!(cosignature["signature"].as_str().unwrap().starts_with(&format!("\u{2014} {} ", cosignature["witness"].as_str().unwrap())));
    }

    // The published witnessed checkpoint verifies with both witness keys, and not with one.
    let key = app.get("/v1/ledger/public-key").await.text().await.unwrap();
    let witnessed = app.get("/v1/ledger/witnessed-checkpoint").await.text().await.unwrap();
    assert_eq!(witnessed.lines().nth(1), Some(second.to_string().as_str()), "{witnessed}");
    let (ok, said) = verify_file(&witnessed, &key, &[&one.key, &two.key], Some(2));
    assert!(ok, "{said}");
    assert!(said.contains("cosigned by 2 of 2 witnesses"), "{said}");
    let only_one: String = witnessed.lines().filter(|l| !l.starts_with("\u{2014} witness.test/two ")).map(|l| format!("{l}\n")).collect();
    let (ok, said) = verify_file(&only_one, &key, &[&one.key, &two.key], Some(2));
    assert!(!ok, "a checkpoint with one cosignature fails a verifier demanding two: {said}");
    assert!(said.contains("1 valid cosignature(s)") && said.contains("2 required"), "{said}");
    let forged = witnessed.replacen(&format!("\n{second}\n"), &format!("\n{}\n", second + 1), 1);
    assert!(!verify_file(&forged, &key, &[&one.key, &two.key], Some(2)).0, "an edited checkpoint fails");
    assert_eq!(app.get("/v1/ledger/tlog/checkpoint").await.text().await.unwrap(), witnessed, "tlog-tiles serves the witnessed checkpoint");

    // An export at the witnessed checkpoint carries the cosignatures to an offline verifier.
    let export = app.get("/v1/ledger/export?checkpoint=witnessed").await.text().await.unwrap();
    let (ok, said) = verify_file(&export, &key, &[&one.key, &two.key], None);
    assert!(ok && said.contains(&format!("verified: {second} entries")), "{said}");
    assert_eq!(app.get("/v1/ledger/export?checkpoint=sometime").await.status(), 422);

    // A fork signed with the ledger's own key: entry 0 rewritten, one entry added, and a
    // consistency proof computed honestly within the forked tree. Both witnesses refuse it,
    // and refuse a same-size checkpoint with another root.
    let current = app.get("/v1/ledger/export").await.text().await.unwrap();
    let mut leaves: Vec<Vec<u8>> =
        tiergate::ledger::export_entries(&current).take(second as usize).map(|e| tiergate::canonical::to_canonical_bytes(&e)).collect();
    leaves[0] = br#"{"rewritten":true}"#.to_vec();
    let same_size = Tree::of(&leaves);
    leaves.push(br#"{"added":true}"#.to_vec());
    let forked = Tree::of(&leaves);
    let forked_note = signer.sign(second + 1, tree_hash(second + 1, &forked).unwrap()).unwrap();
    let forked_proof = prove_tree(second + 1, second, &forked).unwrap();
    let same_size_note = signer.sign(second, tree_hash(second, &same_size).unwrap()).unwrap();
    for witness in [&one, &two] {
        let (status, _, why) = add_checkpoint(&witness.url, second, &forked_proof, &forked_note).await;
        assert_eq!(status, 422, "{}: {why}", witness.url);
        let (status, content_type, why) = add_checkpoint(&witness.url, second, &[], &same_size_note).await;
        assert_eq!(status, 409, "{}: {why}", witness.url);
        assert!(!content_type.starts_with("text/x.tlog.size") && why.contains("forked"), "{content_type}: {why}");
        let (status, content_type, body) = add_checkpoint(&witness.url, 0, &[], &forked_note).await;
        assert_eq!((status, content_type.as_str(), body.as_str()), (409, "text/x.tlog.size", format!("{second}\n").as_str()));
    }

    // A witness restarted from its state directory still holds the honest history: the next
    // checkpoint is cosigned after a consistency proof from where it left off.
    let address = two.url.trim_start_matches("http://").to_owned();
    drop(two);
    two = start_witness(&dir_two, "witness.test/two", &signer.verifier_key, &address);
    let third = serve_and_publish(&app, "Is the sky blue?").await;
    wait_for_cosignatures(&app, third, &names).await;
    let (status, _, body) = add_checkpoint(&two.url, 0, &[], &forked_note).await;
    assert_eq!((status, body), (409, format!("{third}\n")), "the restarted witness kept its state");
    drop((one, two));
    for dir in [dir_one, dir_two] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// A stand-in for a misbehaving witness on loopback: every request gets `answer` with 200.
async fn bad_witness(answer: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let answer = answer.clone();
            tokio::spawn(async move {
                // Read the whole request first: closing on unread bytes would reset the
                // connection, and the gateway would see an unreachable witness, not a bad answer.
                let (mut request, mut buffer) = (Vec::new(), [0u8; 4096]);
                loop {
                    let Ok(read) = socket.read(&mut buffer).await else { return };
                    request.extend_from_slice(&buffer[..read]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|n| n.trim().parse::<usize>().unwrap_or(0)))
                            .unwrap_or(0);
                        if body.len() >= length {
                            break;
                        }
                    }
                    if read == 0 {
                        return;
                    }
                }
                let response =
                    format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}", answer.len());
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    url
}

fn metric(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && labels.iter().all(|l| line.contains(l)))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn witnesses_that_are_down_or_answer_badly_delay_cosigning_but_never_a_request() {
    let (mut settings, signer) = settings_with_ledger_key();
    let dir = scratch_dir("witness-good");
    let good = start_witness(&dir, "witness.test/good", &signer.verifier_key, "127.0.0.1:0");
    let garbled = CosigningKey::from_seed("witness.test/garbled", [7; 32]).unwrap();
    let forger = CosigningKey::from_seed("witness.test/forger", [8; 32]).unwrap();
    let down = CosigningKey::from_seed("witness.test/down", [9; 32]).unwrap();
    // The forger signs a cosignature of some other checkpoint: well-formed, but it does not verify.
    let forged_line = forger.cosign("another.example/log\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", 1);
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    settings.witnesses = vec![
        WitnessSetting { url: good.url.clone(), key: good.key.clone() },
        WitnessSetting { url: bad_witness("no cosignature here\n".into()).await, key: garbled.verifier_key() },
        WitnessSetting { url: bad_witness(forged_line).await, key: forger.verifier_key() },
        WitnessSetting { url: format!("http://{closed_port}"), key: down.verifier_key() },
    ];
    settings.witness_quorum = Some(2);
    settings.max_uncosigned_s = 1;
    settings.witness_timeout_ms = 2_000;
    let app = spawn_app_with(settings).await;

    // Serving goes on; the good witness cosigns, the others are rejected or unreachable.
    let size = serve_and_publish(&app, "What is two plus two?").await;
    wait_for_cosignatures(&app, size, &["witness.test/good"]).await;
    assert_eq!(app.chat(user_message("always-small", "Name a primary colour.")).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let readyz = app.client.get(format!("{}/readyz", app.address)).send().await.unwrap();
    assert_eq!(readyz.status(), 200, "witnesses never make the gateway unready");
    let health: Value = readyz.json().await.unwrap();
    let witnessing = &health["checks"]["ledger_witnesses"];
    assert_eq!(witnessing["quorum"], 2);
    assert_eq!(witnessing["witnessed_tree_size"], Value::Null, "{witnessing}");
    assert!(witnessing["uncosigned_seconds"].as_f64().unwrap() > 1.0, "{witnessing}");
    assert_eq!(witnessing["within_limit"], false, "{witnessing}");
    let problem = |name: &str| witnessing["witnesses"][name]["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(problem("witness.test/garbled").contains("not note signature lines"), "{witnessing}");
    assert!(problem("witness.test/forger").contains("does not verify"), "{witnessing}");
    assert!(!problem("witness.test/down").is_empty(), "{witnessing}");
    assert_eq!(witnessing["witnesses"]["witness.test/good"]["last_error"], Value::Null, "{witnessing}");
    assert_eq!(witnessing["witnesses"]["witness.test/good"]["cosigned_tree_size"], size, "{witnessing}");

    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metric(&metrics, "tiergate_witness_requests_total", &["witness=\"witness.test/good\"", "outcome=\"cosigned\""]) >= 1.0, "{metrics}");
    assert!(metric(&metrics, "tiergate_witness_requests_total", &["witness=\"witness.test/garbled\"", "outcome=\"malformed\""]) >= 1.0);
    assert!(metric(&metrics, "tiergate_witness_requests_total", &["witness=\"witness.test/forger\"", "outcome=\"malformed\""]) >= 1.0);
    assert!(metric(&metrics, "tiergate_witness_requests_total", &["witness=\"witness.test/down\"", "outcome=\"unreachable\""]) >= 1.0);
    assert!(metric(&metrics, "tiergate_ledger_uncosigned_seconds", &[]) > 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "tiergate_ledger_uncosigned_limit_seconds", &[]), 1.0);

    // Nothing rejected was kept: one cosignature, and no checkpoint counts as witnessed.
    let published: Vec<Value> = app.get("/v1/ledger/checkpoints").await.json().await.unwrap();
    let names: Vec<&str> = published[0]["cosignatures"].as_array().unwrap().iter().map(|c| c["witness"].as_str().unwrap()).collect();
    assert_eq!(names, ["witness.test/good"]);
    assert_eq!(app.get("/v1/ledger/witnessed-checkpoint").await.status(), 404);
    drop(good);
    std::fs::remove_dir_all(dir).unwrap();
}
