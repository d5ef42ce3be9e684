//! Console sign-in: an API key is exchanged once for a server-side session (an HttpOnly,
//! SameSite=Strict cookie holding a random token whose hash is stored), so the key never
//! reaches JavaScript or browser storage. Sessions end on sign-out, after the idle or the
//! absolute limit, and as soon as their key is revoked or expires.

use actix_web::{
    HttpRequest, HttpResponse,
    cookie::{Cookie, SameSite, time::Duration as CookieDuration},
    http::StatusCode,
    web,
};
use askama::Template;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{ConsoleError, check_form, check_origin, forged, html, is_https, see_other};
use crate::{
    access::{AuthError, Caller, constant_time_eq},
    api::AppState,
    canonical::sha256_hex,
    store::SessionRow,
};

const SESSION_COOKIE: &str = "tiergate_session";
/// Ties a sign-in form to the browser that loaded it (there is no session to hold a form
/// token yet): the form carries the same random value as this cookie.
const SIGN_IN_COOKIE: &str = "tiergate_sign_in";
/// A page view within this long of the last one does not rewrite the session row.
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(30);

/// A live session: the caller (its key checked afresh on this request) and the session's
/// anti-forgery token.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub caller: Caller,
    pub csrf: String,
    token_sha256: String,
}

fn random_token() -> Result<String, ConsoleError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a session: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn stamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse_stamp(text: &str) -> anyhow::Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(text)?.with_timezone(&Utc))
}

fn unauthenticated(message: String) -> ConsoleError {
    ConsoleError::new(StatusCode::UNAUTHORIZED, "Not signed in", message)
}

/// The session of this request. No cookie at all is `Ok(None)` (pages send the browser to
/// sign in); a cookie that is not a live session is a 401 page saying why.
pub async fn current(state: &AppState, req: &HttpRequest) -> Result<Option<SignedIn>, ConsoleError> {
    let Some(cookie) = req.cookie(SESSION_COOKIE) else { return Ok(None) };
    let token_sha256 = sha256_hex(cookie.value().as_bytes());
    let Some(row) = state.store.session(&token_sha256).await? else {
        return Err(unauthenticated(
            "Your session cookie does not belong to any session here (forged, or from another gateway). Sign in again.".into(),
        ));
    };
    let now = Utc::now();
    let idle = now - parse_stamp(&row.last_seen_at)?;
    if let Some(ended) = &row.ended_at {
        return Err(unauthenticated(format!("Your session ended at {ended} (signed out, or its key was revoked). Sign in again.")));
    }
    let expired = if now >= parse_stamp(&row.expires_at)? {
        Some(format!("Your session reached its limit of {} hours since sign-in.", state.console.session_max.as_secs() / 3600))
    } else if idle >= chrono::Duration::from_std(state.console.session_idle).unwrap_or(chrono::Duration::MAX) {
        Some(format!("Your session was idle for more than {} minutes.", state.console.session_idle.as_secs() / 60))
    } else {
        None
    };
    if let Some(why) = expired {
        state.store.end_session(&token_sha256, &stamp(now)).await?;
        return Err(unauthenticated(format!("{why} Sign in again.")));
    }
    let caller = match state.access.authenticate_key_id(&row.key_id, now).await? {
        Ok(caller) => caller,
        Err(denied) => {
            state.store.end_session(&token_sha256, &stamp(now)).await?;
            return Err(unauthenticated(format!("{denied}; its session has ended.")));
        }
    };
    if idle >= TOUCH_EVERY {
        state.store.touch_session(&token_sha256, &stamp(now)).await?;
    }
    Ok(Some(SignedIn { caller, csrf: row.csrf_token, token_sha256 }))
}

/// The session, or a redirect to the sign-in page (as an error, so handlers can `?` it).
pub async fn require(state: &AppState, req: &HttpRequest) -> Result<SignedIn, SignInFirst> {
    match current(state, req).await {
        Ok(Some(signed_in)) => Ok(signed_in),
        Ok(None) => Err(SignInFirst::Redirect(req.uri().path_and_query().map_or_else(|| req.path().to_owned(), |p| p.as_str().to_owned()))),
        Err(error) => Err(SignInFirst::Refused(error)),
    }
}

/// Why a page was not shown to this browser.
#[derive(Debug)]
pub enum SignInFirst {
    /// No session: go to the sign-in page, then back to this path.
    Redirect(String),
    Refused(ConsoleError),
}

impl std::fmt::Display for SignInFirst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignInFirst::Redirect(next) => write!(f, "sign in first (then {next})"),
            SignInFirst::Refused(error) => error.fmt(f),
        }
    }
}

impl actix_web::ResponseError for SignInFirst {
    fn status_code(&self) -> StatusCode {
        match self {
            SignInFirst::Redirect(_) => StatusCode::SEE_OTHER,
            SignInFirst::Refused(error) => error.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            SignInFirst::Redirect(next) => see_other(&format!("/console/sign-in?next={}", percent_encode(next))),
            SignInFirst::Refused(error) => error.error_response(),
        }
    }
}

impl From<ConsoleError> for SignInFirst {
    fn from(error: ConsoleError) -> SignInFirst {
        SignInFirst::Refused(error)
    }
}

impl From<crate::error::ApiError> for SignInFirst {
    fn from(error: crate::error::ApiError) -> SignInFirst {
        SignInFirst::Refused(error.into())
    }
}

impl From<anyhow::Error> for SignInFirst {
    fn from(error: anyhow::Error) -> SignInFirst {
        SignInFirst::Refused(error.into())
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// Only a path inside the console is a place to return to after sign-in (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next) if next.starts_with("/console") && !next.starts_with("//") && !next.contains(['\\', '\r', '\n']) => next.to_owned(),
        _ => "/console/overview".to_owned(),
    }
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    nonce: String,
    next: String,
    problem: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct SignInQuery {
    next: Option<String>,
}

fn sign_in_form(req: &HttpRequest, next: String, problem: Option<String>, status: StatusCode) -> Result<HttpResponse, ConsoleError> {
    let nonce = random_token()?;
    let page = SignInPage { nonce: nonce.clone(), next, problem };
    let mut response = html(&page)?;
    *response.status_mut() = status;
    let cookie = Cookie::build(SIGN_IN_COOKIE, nonce)
        .path("/console/sign-in")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(is_https(req))
        .max_age(CookieDuration::minutes(30))
        .finish();
    response.add_cookie(&cookie).map_err(|e| anyhow::anyhow!("setting the sign-in cookie: {e}"))?;
    Ok(response)
}

pub async fn sign_in_page(req: HttpRequest, query: web::Query<SignInQuery>) -> Result<HttpResponse, ConsoleError> {
    sign_in_form(&req, safe_next(query.next.as_deref()), None, StatusCode::OK)
}

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    key: String,
    nonce: String,
    next: Option<String>,
}

pub async fn sign_in(state: web::Data<AppState>, req: HttpRequest, form: web::Form<SignInForm>) -> Result<HttpResponse, ConsoleError> {
    check_origin(&req)?;
    let expected = req.cookie(SIGN_IN_COOKIE).map(|c| c.value().to_owned()).unwrap_or_default();
    if expected.is_empty() || !constant_time_eq(expected.as_bytes(), form.nonce.as_bytes()) {
        return Err(forged("it did not come from a sign-in page this browser loaded".into()));
    }
    let next = safe_next(form.next.as_deref());
    let now = Utc::now();
    let caller = match state.access.authenticate(Some(form.key.trim()), now).await? {
        Ok(caller) => caller,
        Err(denied) => {
            tracing::warn!(key_id = denied.key_id().unwrap_or("-"), reason = %denied, "console sign-in refused");
            let problem = match denied {
                AuthError::Missing | AuthError::Malformed => "That is not an API key: keys look like tg_<16 hex digits>.<secret>.".to_owned(),
                other => format!("{other}."),
            };
            return sign_in_form(&req, next, Some(problem), StatusCode::UNAUTHORIZED);
        }
    };
    let token = random_token()?;
    let row = SessionRow {
        token_sha256: sha256_hex(token.as_bytes()),
        key_id: caller.key_id.clone(),
        csrf_token: random_token()?,
        created_at: stamp(now),
        last_seen_at: stamp(now),
        expires_at: stamp(now + chrono::Duration::from_std(state.console.session_max).unwrap_or(chrono::Duration::days(1))),
        ended_at: None,
    };
    state.store.insert_session(&row).await?;
    tracing::info!(key_id = %caller.key_id, subject = %caller.subject, "console session started");
    let cookie = Cookie::build(SESSION_COOKIE, token)
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(is_https(&req))
        .max_age(CookieDuration::seconds(state.console.session_max.as_secs() as i64))
        .finish();
    let mut response = see_other(&next);
    response.add_cookie(&cookie).map_err(|e| anyhow::anyhow!("setting the session cookie: {e}"))?;
    let mut spent = Cookie::build(SIGN_IN_COOKIE, "").path("/console/sign-in").finish();
    spent.make_removal();
    response.add_cookie(&spent).map_err(|e| anyhow::anyhow!("clearing the sign-in cookie: {e}"))?;
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct SignOutForm {
    csrf: String,
}

pub async fn sign_out(state: web::Data<AppState>, req: HttpRequest, form: web::Form<SignOutForm>) -> Result<HttpResponse, SignInFirst> {
    let signed_in = require(&state, &req).await?;
    check_form(&req, &signed_in, &form.csrf)?;
    state.store.end_session(&signed_in.token_sha256, &stamp(Utc::now())).await?;
    tracing::info!(key_id = %signed_in.caller.key_id, "console session ended: signed out");
    let mut response = see_other("/console/sign-in");
    let mut removal = Cookie::build(SESSION_COOKIE, "").path("/console").finish();
    removal.make_removal();
    response.add_cookie(&removal).map_err(|e| anyhow::anyhow!("clearing the session cookie: {e}"))?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_paths_are_returned_to_after_sign_in() {
        assert_eq!(safe_next(Some("/console/ledger?outcome=served")), "/console/ledger?outcome=served");
        for unsafe_next in [None, Some("https://evil.example/"), Some("//evil.example/console"), Some("/v1/keys"), Some("/console\\x")] {
            assert_eq!(safe_next(unsafe_next), "/console/overview", "{unsafe_next:?}");
        }
    }

    #[test]
    fn a_return_path_is_percent_encoded() {
        assert_eq!(percent_encode("/console/ledger?a=b&c=d"), "/console/ledger%3Fa%3Db%26c%3Dd");
    }
}
