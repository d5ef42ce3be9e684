//! Access control: API keys (stored as hashes), roles and scopes, per-key rate limits and daily
//! token budgets.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::Instant,
};

use anyhow::Context;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{KeyRow, Store};

/// What a key may do. A key can hold several roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manage keys.
    Admin,
    /// Submit cards and policy versions.
    Author,
    /// Approve, activate, retire, roll back; attach shadow policies.
    Approver,
    /// Call inference for the systems the key is scoped to.
    App,
    /// Record verdicts on answers held for human review.
    Reviewer,
    /// Read and export the ledger, read the registry.
    Auditor,
}

impl Role {
    pub const ALL: [Role; 6] = [Role::Admin, Role::Author, Role::Approver, Role::App, Role::Reviewer, Role::Auditor];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Author => "author",
            Role::Approver => "approver",
            Role::App => "app",
            Role::Reviewer => "reviewer",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// The authenticated identity behind a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Caller {
    /// Public key id: safe to log and record.
    pub key_id: String,
    /// The person or application the key was issued to; what four-eyes compares.
    pub subject: String,
    pub roles: Vec<Role>,
    /// System ids an `app` key may call; `*` means all.
    pub scopes: Vec<String>,
    pub rate_limit_per_minute: Option<u32>,
    pub daily_token_budget: Option<u64>,
}

impl Caller {
    pub fn has_any(&self, roles: &[Role]) -> bool {
        self.roles.iter().any(|r| roles.contains(r))
    }

    pub fn may_call(&self, system: &str) -> bool {
        self.scopes.iter().any(|s| s == "*" || s == system)
    }

    /// The roles as text, for logs, ledger entries and policy input.
    pub fn role_names(&self) -> Vec<&'static str> {
        self.roles.iter().map(|r| r.as_str()).collect()
    }
}

/// Why a request is not authenticated. The text never contains a secret.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("no API key: send Authorization: Bearer <key>")]
    Missing,
    #[error("the API key is malformed (expected Authorization: Bearer tg_<id>.<secret>)")]
    Malformed,
    #[error("unknown API key {0}")]
    Unknown(String),
    #[error("API key {0} expired at {1}")]
    Expired(String, String),
    #[error("API key {0} was revoked at {1}")]
    Revoked(String, String),
}

impl AuthError {
    /// The key id the failure is about, when the token named one.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            AuthError::Unknown(id) | AuthError::Expired(id, _) | AuthError::Revoked(id, _) => Some(id),
            _ => None,
        }
    }
}

/// A key to issue.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Who the key is for (a person or an application); four-eyes compares subjects.
    pub subject: String,
    pub roles: Vec<Role>,
    /// Systems an `app` key may call (default: all, `["*"]`).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// RFC 3339; the key stops working then.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Inference requests per minute (default: the server's setting).
    #[serde(default)]
    pub rate_limit_per_minute: Option<u32>,
    /// Prompt + completion tokens per UTC day, all tiers (default: unlimited).
    #[serde(default)]
    pub daily_token_budget: Option<u64>,
}

/// A key as listed: everything but its secret, which is never stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    pub key_id: String,
    pub subject: String,
    pub roles: Vec<Role>,
    pub scopes: Vec<String>,
    pub created_at: String,
    pub created_by: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub rate_limit_per_minute: Option<u32>,
    pub daily_token_budget: Option<u64>,
}

const TOKEN_PREFIX: &str = "tg_";

/// A new random key token, `tg_<16 hex id>.<secret>`: what [`Access::issue`] hands out, and a
/// bootstrap admin key for a gateway started by a program (`bootstrap_admin_key`).
pub fn new_token() -> anyhow::Result<String> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("no randomness for a key id: {e}"))?;
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
    Ok(format!("{TOKEN_PREFIX}{}.{}", hex::encode(id), base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)))
}

/// Keys, rate limits and budgets.
#[derive(Debug)]
pub struct Access {
    store: Store,
    default_rate_per_minute: Option<u32>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Access {
    pub fn new(store: Store, default_rate_per_minute: Option<u32>) -> Access {
        Access { store, default_rate_per_minute, buckets: Mutex::new(HashMap::new()) }
    }

    /// Issues a key; the returned token is the only time its secret exists outside the caller.
    pub async fn issue(&self, new: &NewKey, created_by: &str, now: &str) -> anyhow::Result<(KeyInfo, String)> {
        let token = new_token()?;
        let (key_id, secret) = split_token(&token).context("a fresh token splits into id and secret")?;
        let info = self.store_key(key_id, secret, new, created_by, now).await?;
        Ok((info, token))
    }

    /// Stores a key whose token was supplied from outside (the bootstrap key of an automated
    /// deployment), unless it is already stored.
    pub async fn adopt(&self, token: &str, new: &NewKey, created_by: &str, now: &str) -> anyhow::Result<KeyInfo> {
        let (key_id, secret) = split_token(token).context("the supplied bootstrap key is malformed (tg_<16 hex>.<secret>)")?;
        if let Some(existing) = self.store.key(key_id).await? {
            anyhow::ensure!(existing.secret_sha256 == secret_hash(secret), "bootstrap key {key_id} exists with another secret");
            return Ok(info(&existing));
        }
        self.store_key(key_id, secret, new, created_by, now).await
    }

    async fn store_key(&self, key_id: &str, secret: &str, new: &NewKey, created_by: &str, now: &str) -> anyhow::Result<KeyInfo> {
        let row = KeyRow {
            key_id: key_id.to_owned(),
            secret_sha256: secret_hash(secret),
            subject: new.subject.clone(),
            roles: serde_json::to_string(&new.roles)?,
            scopes: serde_json::to_string(&new.scopes.clone().unwrap_or_else(|| vec!["*".into()]))?,
            created_at: now.to_owned(),
            created_by: created_by.to_owned(),
            expires_at: new.expires_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            revoked_at: None,
            rate_limit_per_minute: new.rate_limit_per_minute.map(i64::from),
            daily_token_budget: new.daily_token_budget.map(|b| b as i64),
        };
        self.store.insert_key(&row).await?;
        Ok(info(&row))
    }

    pub async fn has_keys(&self) -> anyhow::Result<bool> {
        Ok(self.store.key_count().await? > 0)
    }

    /// Checks a bearer token; every call reads the key afresh, so a revocation takes effect on
    /// the next request.
    pub async fn authenticate(&self, token: Option<&str>, now: DateTime<Utc>) -> anyhow::Result<Result<Caller, AuthError>> {
        let Some(token) = token else { return Ok(Err(AuthError::Missing)) };
        let Some((key_id, secret)) = split_token(token) else { return Ok(Err(AuthError::Malformed)) };
        let Some(row) = self.store.key(key_id).await? else { return Ok(Err(AuthError::Unknown(key_id.to_owned()))) };
        if !constant_time_eq(row.secret_sha256.as_bytes(), secret_hash(secret).as_bytes()) {
            // A wrong secret for a real id is reported like an unknown key: nothing to probe.
            return Ok(Err(AuthError::Unknown(key_id.to_owned())));
        }
        self.caller(&row, now)
    }

    /// The caller behind a key id the gateway already authenticated (a console session's key),
    /// checked afresh: a key revoked or expired since then no longer counts.
    pub async fn authenticate_key_id(&self, key_id: &str, now: DateTime<Utc>) -> anyhow::Result<Result<Caller, AuthError>> {
        let Some(row) = self.store.key(key_id).await? else { return Ok(Err(AuthError::Unknown(key_id.to_owned()))) };
        self.caller(&row, now)
    }

    fn caller(&self, row: &KeyRow, now: DateTime<Utc>) -> anyhow::Result<Result<Caller, AuthError>> {
        let key_id = row.key_id.as_str();
        if let Some(revoked) = &row.revoked_at {
            return Ok(Err(AuthError::Revoked(key_id.to_owned(), revoked.clone())));
        }
        if let Some(expires) = &row.expires_at {
            let expiry = DateTime::parse_from_rfc3339(expires).context("stored expiry")?;
            if now >= expiry {
                return Ok(Err(AuthError::Expired(key_id.to_owned(), expires.clone())));
            }
        }
        let info = info(row);
        Ok(Ok(Caller {
            key_id: info.key_id,
            subject: info.subject,
            roles: info.roles,
            scopes: info.scopes,
            rate_limit_per_minute: info.rate_limit_per_minute.or(self.default_rate_per_minute),
            daily_token_budget: info.daily_token_budget,
        }))
    }

    pub async fn list(&self) -> anyhow::Result<Vec<KeyInfo>> {
        Ok(self.store.keys().await?.iter().map(info).collect())
    }

    pub async fn get(&self, key_id: &str) -> anyhow::Result<Option<KeyInfo>> {
        Ok(self.store.key(key_id).await?.as_ref().map(info))
    }

    /// Revokes a key and ends its console sessions.
    pub async fn revoke(&self, key_id: &str, now: &str) -> anyhow::Result<bool> {
        let revoked = self.store.revoke_key(key_id, now).await?;
        if revoked {
            self.store.end_sessions_of_key(key_id, now).await?;
        }
        Ok(revoked)
    }

    /// Takes one inference request from the key's bucket, or says after how many seconds
    /// one will be available.
    pub fn take_rate(&self, caller: &Caller) -> Result<(), u64> {
        let Some(per_minute) = caller.rate_limit_per_minute.filter(|n| *n > 0) else { return Ok(()) };
        let capacity = f64::from(per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let bucket = buckets.entry(caller.key_id.clone()).or_insert(Bucket { tokens: capacity, updated: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * per_second).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / per_second).ceil().max(1.0) as u64)
        }
    }

    /// Refuses inference once today's tokens reach the key's budget, saying how many seconds
    /// remain until the budget renews (UTC midnight).
    pub async fn check_budget(&self, caller: &Caller, now: DateTime<Utc>) -> anyhow::Result<Result<(), (u64, u64)>> {
        let Some(budget) = caller.daily_token_budget else { return Ok(Ok(())) };
        let used = self.store.key_usage(&caller.key_id, &day(now)).await?.max(0) as u64;
        if used < budget {
            return Ok(Ok(()));
        }
        Ok(Err((seconds_to_midnight(now), used)))
    }

    /// Adds a request's tokens (prompt + completion, every tier) to the key's day.
    pub async fn record_usage(&self, caller: &Caller, tokens: u64, now: DateTime<Utc>) -> anyhow::Result<u64> {
        Ok(self.store.add_key_usage(&caller.key_id, &day(now), tokens as i64).await?.max(0) as u64)
    }

    pub async fn usage_today(&self, key_id: &str, now: DateTime<Utc>) -> anyhow::Result<u64> {
        Ok(self.store.key_usage(key_id, &day(now)).await?.max(0) as u64)
    }
}

fn info(row: &KeyRow) -> KeyInfo {
    // Stored by this module as JSON arrays; an unreadable value means no roles, never more.
    let roles: Vec<String> = serde_json::from_str(&row.roles).unwrap_or_default();
    KeyInfo {
        key_id: row.key_id.clone(),
        subject: row.subject.clone(),
        roles: roles.iter().filter_map(|r| Role::parse(r)).collect(),
        scopes: serde_json::from_str(&row.scopes).unwrap_or_default(),
        created_at: row.created_at.clone(),
        created_by: row.created_by.clone(),
        expires_at: row.expires_at.clone(),
        revoked_at: row.revoked_at.clone(),
        rate_limit_per_minute: row.rate_limit_per_minute.map(|n| n as u32),
        daily_token_budget: row.daily_token_budget.map(|n| n as u64),
    }
}

/// `tg_<16 hex>.<secret>` → (key id, secret).
fn split_token(token: &str) -> Option<(&str, &str)> {
    let (key_id, secret) = token.strip_prefix(TOKEN_PREFIX)?.split_once('.')?;
    let valid_id = key_id.len() == 16 && key_id.bytes().all(|b| b.is_ascii_hexdigit());
    (valid_id && !secret.is_empty()).then_some((key_id, secret))
}

fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn day(now: DateTime<Utc>) -> String {
    now.format("%Y-%m-%d").to_string()
}

fn seconds_to_midnight(now: DateTime<Utc>) -> u64 {
    let tomorrow = (now + chrono::Duration::days(1)).date_naive().and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    tomorrow.map_or(86_400, |t| (t - now).num_seconds().max(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_into_id_and_secret_and_reject_anything_else() {
        assert_eq!(split_token("tg_0123456789abcdef.s3cret"), Some(("0123456789abcdef", "s3cret")));
        for bad in ["", "tg_", "tg_0123.s", "xx_0123456789abcdef.s", "tg_0123456789abcdef.", "tg_0123456789abcdeg.s"] {
            assert_eq!(split_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn new_tokens_are_well_formed_and_distinct() {
        let (first, second) = (new_token().unwrap(), new_token().unwrap());
        let (id, secret) = split_token(&first).expect("a new token splits");
        assert_eq!((id.len(), secret.len()), (16, 43), "{first}");
        assert_ne!(first, second);
    }

    #[test]
    fn the_budget_renews_at_utc_midnight() {
        let now = DateTime::parse_from_rfc3339("2026-11-28T23:59:30Z").unwrap().with_timezone(&Utc);
        assert_eq!(seconds_to_midnight(now), 30);
        assert_eq!(day(now), "2026-11-28");
    }

    #[test]
    fn secrets_compare_in_constant_time_by_value() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
