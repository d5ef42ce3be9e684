//! Authentication and role checks for every endpoint, in one place. The roles an operation
//! needs are the ones its OpenAPI security requirement declares: the published document and
//! the enforcement cannot drift apart.

use std::collections::HashMap;

use actix_web::{
    Error, FromRequest, HttpMessage, HttpRequest, ResponseError,
    body::{EitherBody, MessageBody},
    dev::{Payload, ServiceRequest, ServiceResponse},
    http::Method,
    middleware::Next,
    web,
};
use serde_json::Value;
use utoipa::{
    Modify,
    openapi::{
        OpenApi,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use super::AppState;
use crate::{
    access::{Caller, Role},
    error::ApiError,
    registry::Actor,
    telemetry::current_request_id,
};

/// Name of the security scheme (HTTP bearer) in the OpenAPI document.
pub const SECURITY_SCHEME: &str = "api_key";

/// Adds the bearer-key security scheme to the document.
pub struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("tg_<key id>.<secret>")
                    .description(Some("An API key. The scopes listed on each operation are the roles that may call it (any one suffices)."))
                    .build(),
            ),
        );
    }
}

/// The roles each documented operation needs, by method and path template. An operation
/// documented without a security requirement is open (health, readiness).
#[derive(Debug, Default)]
pub struct Requirements(HashMap<(Method, String), Vec<Role>>);

impl Requirements {
    pub fn from_openapi(document: &utoipa::openapi::OpenApi) -> anyhow::Result<Requirements> {
        let document = serde_json::to_value(document)?;
        let mut map = HashMap::new();
        for (path, item) in document.get("paths").and_then(Value::as_object).into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else { continue };
                let Some(requirements) = operation.get("security").and_then(Value::as_array) else { continue };
                let mut roles = Vec::new();
                for requirement in requirements {
                    for name in requirement.get(SECURITY_SCHEME).and_then(Value::as_array).into_iter().flatten() {
                        let name = name.as_str().unwrap_or_default();
                        roles.push(Role::parse(name).ok_or_else(|| anyhow::anyhow!("{method} {path}: unknown role {name:?}"))?);
                    }
                }
                anyhow::ensure!(!roles.is_empty(), "{method} {path}: a security requirement without roles");
                map.insert((method, path.clone()), roles);
            }
        }
        Ok(Requirements(map))
    }

    /// The roles for a route, by actix's pattern for it. A segment with a pattern of its own
    /// (`{tile:.*}`) is named without it in the document (`{tile}`).
    pub fn roles(&self, method: &Method, pattern: &str) -> Option<&[Role]> {
        self.0.get(&(method.clone(), document_path(pattern))).map(Vec::as_slice)
    }
}

/// An actix route pattern as the OpenAPI document writes it: `{name:regex}` becomes `{name}`.
fn document_path(pattern: &str) -> String {
    let mut path = String::with_capacity(pattern.len());
    let mut in_regex = false;
    for c in pattern.chars() {
        match c {
            ':' if path.rfind('{') > path.rfind('}') => in_regex = true,
            '}' if in_regex => {
                in_regex = false;
                path.push('}');
            }
            _ if in_regex => {}
            _ => path.push(c),
        }
    }
    path
}

/// The bearer token of a request, if any.
fn bearer(req: &ServiceRequest) -> Option<&str> {
    let value = req.headers().get(actix_web::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Authenticates the key and checks the operation's roles before any handler runs; the
/// caller is then available to handlers as [`Caller`]. Refusals are logged with the key id,
/// never the secret.
pub async fn authorize(req: ServiceRequest, next: Next<impl MessageBody>) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    };
    let required = req.match_pattern().and_then(|pattern| state.requirements.roles(req.method(), &pattern).map(<[Role]>::to_vec));
    let Some(required) = required else {
        // Open, or not a route at all (the 404 handler answers).
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    };
    let refuse = |req: ServiceRequest, error: ApiError| Ok(req.into_response(error.error_response()).map_into_right_body());
    let caller = match state.access.authenticate(bearer(&req), chrono::Utc::now()).await {
        Err(error) => return refuse(req, ApiError::Internal(error)),
        Ok(Err(denied)) => {
            tracing::warn!(key_id = denied.key_id().unwrap_or("-"), path = %req.path(), reason = %denied, "request not authenticated");
            return refuse(req, ApiError::Unauthenticated(denied.to_string()));
        }
        Ok(Ok(caller)) => caller,
    };
    if !caller.has_any(&required) {
        let needed: Vec<&str> = required.iter().map(|r| r.as_str()).collect();
        tracing::warn!(key_id = %caller.key_id, roles = ?caller.role_names(), needed = ?needed, path = %req.path(), "request refused: role");
        let message = format!(
            "API key {} (roles: {}) may not call {} {}: it needs one of the roles {}",
            caller.key_id,
            caller.role_names().join(", "),
            req.method(),
            req.match_pattern().unwrap_or_default(),
            needed.join(", ")
        );
        return refuse(req, ApiError::Forbidden(message));
    }
    tracing::debug!(key_id = %caller.key_id, subject = %caller.subject, "authenticated");
    req.extensions_mut().insert(caller);
    next.call(req).await.map(ServiceResponse::map_into_left_body)
}

fn caller_of(req: &HttpRequest) -> Result<Caller, ApiError> {
    req.extensions().get::<Caller>().cloned().ok_or_else(|| ApiError::Unauthenticated("this operation needs an API key".into()))
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(caller_of(req))
    }
}

/// Whoever changes the registry is the subject of the key that authenticated the request.
impl FromRequest for Actor {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Actor, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(caller_of(req).map(|caller| Actor {
            id: caller.subject.clone(),
            key_id: caller.key_id.clone(),
            roles: caller.role_names().into_iter().map(str::to_owned).collect(),
            request_id: current_request_id().unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::document_path;

    #[test]
    fn a_route_pattern_reads_as_its_document_path() {
        assert_eq!(document_path("/v1/ledger/tlog/tile/{tile:.*}"), "/v1/ledger/tlog/tile/{tile}");
        assert_eq!(document_path("/v1/cards/{id}/versions/{version}"), "/v1/cards/{id}/versions/{version}");
        assert_eq!(document_path("/a/{x:[0-9]+}/b:c"), "/a/{x}/b:c");
    }
}
