//! The web console at `/console`: server-rendered pages over the same domain calls as the API,
//! with the API's role rules (read from its OpenAPI document) and server-side sessions.
//!
//! Why it is built this way: pages are askama templates (checked at compile time, escaped by
//! default) rendered by the same actix-web app, so there is no second server, no Node at run
//! time and nothing fetched from a CDN; the two assets (a style sheet and the proof checker)
//! are compiled into the binary. Every read-only page is plain HTML that works without
//! JavaScript; the one script checks an entry's inclusion proof and checkpoint signature in
//! the browser (WebCrypto), so the auditor does not have to trust the server's word for it.

mod overview;
mod pages;
mod session;

use std::time::Duration;

use actix_web::{
    HttpRequest, HttpResponse, ResponseError,
    http::{Method, StatusCode, header},
    middleware::DefaultHeaders,
    web,
};
use askama::Template;

use crate::{
    access::{Caller, Role, constant_time_eq},
    api::AppState,
    error::{ApiError, ErrorCode},
};
pub use session::SignedIn;

/// Session limits (settings `console_session_idle_s`, `console_session_max_s`).
#[derive(Debug, Clone, Copy)]
pub struct ConsoleConfig {
    pub session_idle: Duration,
    pub session_max: Duration,
}

/// Everything under `/console`: pages, forms, the two assets, and a 404 page for the rest.
pub fn routes(config: &mut web::ServiceConfig) {
    config.service(
        web::scope("/console")
            .wrap(
                DefaultHeaders::new()
                    // Scripts and styles only from the binary itself; no framing; forms post
                    // only back here.
                    .add((
                        header::CONTENT_SECURITY_POLICY,
                        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
                    ))
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((header::REFERRER_POLICY, "same-origin"))
                    .add((header::CACHE_CONTROL, "no-store")),
            )
            .app_data(
                web::FormConfig::default().limit(256 * 1024).error_handler(|error, _req| {
                    ConsoleError::new(StatusCode::UNPROCESSABLE_ENTITY, "The form is malformed", format!("{error}")).into()
                }),
            )
            .route("", web::get().to(pages::home))
            .route("/", web::get().to(pages::home))
            .route("/assets/console.css", web::get().to(pages::style_sheet))
            .route("/assets/proof.js", web::get().to(pages::proof_script))
            .route("/sign-in", web::get().to(session::sign_in_page))
            .route("/sign-in", web::post().to(session::sign_in))
            .route("/sign-out", web::post().to(session::sign_out))
            .route("/overview", web::get().to(pages::overview))
            .route("/ledger", web::get().to(pages::ledger))
            .route("/ledger/checkpoints", web::get().to(pages::checkpoints))
            .route("/ledger/verify", web::get().to(pages::verify_log))
            .route("/ledger/export", web::get().to(pages::export))
            .route("/ledger/bundle", web::get().to(pages::bundle))
            .route("/ledger/{index}", web::get().to(pages::entry))
            .route("/registry/{collection}/{id}/{version}", web::get().to(pages::artifact_version))
            .route("/reviews", web::get().to(pages::reviews))
            .route("/reviews/{index}", web::get().to(pages::review))
            .route("/reviews/{index}/verdict", web::post().to(pages::record_verdict))
            .route("/experiments", web::get().to(pages::experiments))
            .route("/experiments/{id}", web::get().to(pages::experiment))
            .route("/keys", web::get().to(pages::keys))
            .route("/keys", web::post().to(pages::issue_key))
            .route("/keys/{key_id}/revoke", web::post().to(pages::revoke_key))
            .default_service(web::to(pages::not_found)),
    );
}

/// An API operation whose role rule a console page or form follows: the page shows what
/// the operation returns (or does what it does), so it needs the same roles.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
}

pub const LIST_LEDGER: Operation = Operation { method: "GET", path: "/v1/ledger/entries" };
pub const GET_ENTRY: Operation = Operation { method: "GET", path: "/v1/ledger/entries/{index}" };
pub const LIST_CHECKPOINTS: Operation = Operation { method: "GET", path: "/v1/ledger/checkpoints" };
pub const VERIFY_LEDGER: Operation = Operation { method: "GET", path: "/v1/ledger/verify" };
pub const EXPORT_LEDGER: Operation = Operation { method: "GET", path: "/v1/ledger/export" };
pub const AUDIT_BUNDLE: Operation = Operation { method: "GET", path: "/v1/ledger/bundle" };
/// The overview's figures are the ones `/metrics` exposes, computed from the ledger instead
/// of one replica's counters.
pub const METRICS: Operation = Operation { method: "GET", path: "/metrics" };
pub const GET_VERSION: Operation = Operation { method: "GET", path: "/v1/registry/{collection}/{id}/versions/{version}" };
pub const LIST_REVIEWS: Operation = Operation { method: "GET", path: "/v1/reviews" };
pub const RECORD_VERDICT: Operation = Operation { method: "POST", path: "/v1/reviews/{ledger_index}/verdict" };
pub const LIST_EXPERIMENTS: Operation = Operation { method: "GET", path: "/v1/experiments" };
pub const EXPERIMENT_REPORT: Operation = Operation { method: "GET", path: "/v1/experiments/{id}/report" };
pub const LIST_KEYS: Operation = Operation { method: "GET", path: "/v1/keys" };
pub const ISSUE_KEY: Operation = Operation { method: "POST", path: "/v1/keys" };
pub const REVOKE_KEY: Operation = Operation { method: "DELETE", path: "/v1/keys/{key_id}" };

impl Operation {
    /// The roles the API document declares for this operation; none (deny) if it is missing.
    fn roles(self, state: &AppState) -> Vec<Role> {
        let method = Method::from_bytes(self.method.as_bytes()).unwrap_or(Method::GET);
        state.requirements.roles(&method, self.path).map(<[Role]>::to_vec).unwrap_or_default()
    }

    pub fn allows(self, state: &AppState, caller: &Caller) -> bool {
        caller.has_any(&self.roles(state))
    }

    /// 403 unless the caller holds one of the operation's roles.
    pub fn require(self, state: &AppState, caller: &Caller) -> Result<(), ConsoleError> {
        if self.allows(state, caller) {
            return Ok(());
        }
        let needed: Vec<&str> = self.roles(state).iter().map(|r| r.as_str()).collect();
        tracing::warn!(key_id = %caller.key_id, roles = ?caller.role_names(), needed = ?needed, operation = self.path, "console page refused: role");
        Err(ConsoleError::new(
            StatusCode::FORBIDDEN,
            "Not for your role",
            format!(
                "Key {} (roles: {}) may not use this: it is what {} {} does in the API, which needs one of the roles {}. \
                 An admin can issue a key with that role on the Keys page.",
                caller.key_id,
                caller.role_names().join(", "),
                self.method,
                self.path,
                needed.join(", ")
            ),
        ))
    }
}

/// The frame of every page: who is signed in, the anti-forgery token for its forms, and the
/// navigation the caller's roles allow.
#[derive(Debug, Clone)]
pub struct Chrome {
    pub subject: String,
    pub key_id: String,
    pub roles: String,
    pub csrf: String,
    pub nav: Vec<NavItem>,
}

#[derive(Debug, Clone)]
pub struct NavItem {
    pub href: &'static str,
    pub label: &'static str,
    pub current: bool,
}

impl Chrome {
    pub fn new(state: &AppState, signed_in: &SignedIn, current: &str) -> Chrome {
        let items: [(&str, &str, Operation); 6] = [
            ("/console/overview", "Overview", METRICS),
            ("/console/ledger", "Ledger", LIST_LEDGER),
            ("/console/ledger/checkpoints", "Checkpoints", LIST_CHECKPOINTS),
            ("/console/reviews", "Review queue", LIST_REVIEWS),
            ("/console/experiments", "Experiments", LIST_EXPERIMENTS),
            ("/console/keys", "Keys", LIST_KEYS),
        ];
        let nav = items
            .into_iter()
            .filter(|(_, _, operation)| operation.allows(state, &signed_in.caller))
            .map(|(href, label, _)| NavItem { href, label, current: href == current })
            .collect();
        Chrome {
            subject: signed_in.caller.subject.clone(),
            key_id: signed_in.caller.key_id.clone(),
            roles: signed_in.caller.role_names().join(", "),
            csrf: signed_in.csrf.clone(),
            nav,
        }
    }
}

/// A refusal or failure shown as a page: its status code, what was wrong, never a stack trace.
#[derive(Debug)]
pub struct ConsoleError {
    status: StatusCode,
    title: String,
    message: String,
    code: &'static str,
}

impl ConsoleError {
    pub fn new(status: StatusCode, title: &str, message: String) -> ConsoleError {
        let code = match status.as_u16() {
            401 => "unauthenticated",
            403 => "forbidden",
            404 => "not_found",
            409 => "conflict",
            422 => "invalid_request",
            400 => "bad_request",
            _ => "internal_error",
        };
        ConsoleError { status, title: title.to_owned(), message, code }
    }
}

impl std::fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.title, self.message)
    }
}

impl From<ApiError> for ConsoleError {
    fn from(error: ApiError) -> ConsoleError {
        let status = error.status_code();
        if let ApiError::Internal(cause) = &error {
            tracing::error!(error = ?cause, "console page failed");
        }
        let title = match status.as_u16() {
            400 | 422 => "That input is not valid",
            401 => "Not signed in",
            403 => "Not allowed",
            404 => "Not found",
            409 => "Already done",
            503 => "Unavailable",
            _ => "Something went wrong",
        };
        ConsoleError { status, title: title.to_owned(), message: error.to_string(), code: error.code() }
    }
}

impl From<anyhow::Error> for ConsoleError {
    fn from(error: anyhow::Error) -> ConsoleError {
        ApiError::Internal(error).into()
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    title: &'a str,
    message: &'a str,
    sign_in: bool,
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let page = ErrorPage {
            status: self.status.as_u16(),
            reason: self.status.canonical_reason().unwrap_or(""),
            title: &self.title,
            message: &self.message,
            sign_in: self.status == StatusCode::UNAUTHORIZED,
        };
        let mut response = HttpResponse::build(self.status);
        response.extensions_mut().insert(ErrorCode(self.code));
        match page.render() {
            Ok(html) => response.content_type("text/html; charset=utf-8").body(html),
            Err(error) => {
                tracing::error!(error = %error, "rendering the console's error page failed");
                response.content_type("text/plain; charset=utf-8").body(format!("{} {}", self.status, self.message))
            }
        }
    }
}

/// A rendered page as a response.
pub fn html(page: &impl Template) -> Result<HttpResponse, ConsoleError> {
    let body = page.render().map_err(|e| anyhow::anyhow!("rendering a console page: {e}"))?;
    Ok(HttpResponse::Ok().content_type("text/html; charset=utf-8").body(body))
}

/// 303 See Other to `location` (after a form, so reloading does not post again).
pub fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther().insert_header((header::LOCATION, location.to_owned())).finish()
}

/// The page's own origin as the browser names it, for the `Origin` check on forms.
fn own_origin(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

/// True behind TLS (directly or via a proxy that says so): session cookies are then `Secure`.
fn is_https(req: &HttpRequest) -> bool {
    req.connection_info().scheme() == "https"
}

/// Refuses a form posted from another origin: the browser's `Origin` header names where the
/// form was. (Absent on some same-origin posts; the session's form token still applies.)
fn check_origin(req: &HttpRequest) -> Result<(), ConsoleError> {
    let Some(origin) = req.headers().get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().unwrap_or_default();
    if origin == own_origin(req) {
        return Ok(());
    }
    tracing::warn!(origin = %origin, path = %req.path(), "console form refused: cross-origin");
    Err(forged(format!("it was posted from {origin}, not from this console")))
}

fn forged(why: String) -> ConsoleError {
    ConsoleError::new(StatusCode::FORBIDDEN, "Form refused", format!("This form was refused and nothing was changed: {why}."))
}

/// Checks a state-changing form: same origin, and the session's anti-forgery token.
pub fn check_form(req: &HttpRequest, signed_in: &SignedIn, csrf: &str) -> Result<(), ConsoleError> {
    check_origin(req)?;
    if !constant_time_eq(csrf.as_bytes(), signed_in.csrf.as_bytes()) {
        tracing::warn!(key_id = %signed_in.caller.key_id, path = %req.path(), "console form refused: anti-forgery token");
        return Err(forged(
            "its anti-forgery token does not belong to your session (a cross-site request, or a form from an earlier session)".into(),
        ));
    }
    Ok(())
}

/// Drops empty parameters (an HTML form sends every field, filled or not) before parsing a
/// query string into `T` (whose fields are all optional); a parameter that does not parse is a
/// 422 page naming it.
pub fn parse_query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, ConsoleError> {
    let kept: Vec<&str> = req.query_string().split('&').filter(|pair| !pair.is_empty() && !pair.ends_with('=')).collect();
    web::Query::<T>::from_query(&kept.join("&")).map(web::Query::into_inner).map_err(|error| {
        // The parser does not say which parameter it choked on: the first one that fails on
        // its own is it.
        let culprit = kept.iter().find_map(|pair| web::Query::<T>::from_query(pair).err().map(|e| (*pair, e)));
        let message = match culprit {
            Some((pair, error)) => {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                format!("{name}: {value:?} is not valid here ({})", error.to_string().trim_start_matches("Query deserialize error: "))
            }
            None => format!("query: {error}"),
        };
        ConsoleError::new(StatusCode::UNPROCESSABLE_ENTITY, "That filter is not valid", message)
    })
}
