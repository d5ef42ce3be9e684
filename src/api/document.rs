//! Completes the generated OpenAPI document where the derive macros leave it short of the
//! standard or of what the server really answers: every response needs a `description`, and
//! the answers that come from the shared layers rather than from a handler are listed on every
//! operation they apply to: 401 and 403 from the access middleware on secured operations, 400
//! from the JSON body parser on operations with a JSON body, 404 from the path extractor on
//! operations with path parameters, 422 from the query extractor on operations with query
//! parameters (`api::path_config`, `api::query_config`, `api::parse_json_body`), and 503 from
//! a halted ledger on every operation that records or signs (`ledger::LedgerHalted`).

use actix_web::http::StatusCode;
use serde_json::{Value, json};

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Reads that sign a fresh checkpoint, which a halted ledger refuses.
const SIGNING_READS: [&str; 6] = [
    "/v1/ledger/checkpoint",
    "/v1/ledger/tlog/checkpoint",
    "/v1/ledger/entries/{index}",
    "/v1/ledger/export",
    "/v1/ledger/consistency/{from_size}",
    "/v1/ledger/bundle",
];

/// The document with the gaps filled; what is served, committed and read for the role rules.
pub fn complete(document: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let mut value = serde_json::to_value(&document).expect("the generated OpenAPI document serializes");
    complete_value(&mut value);
    serde_json::from_value(value).expect("the completed OpenAPI document is still one")
}

fn complete_value(document: &mut Value) {
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, operation) in item.iter_mut() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let secured = operation.get("security").and_then(Value::as_array).is_some_and(|s| !s.is_empty());
            let json_body = operation.pointer("/requestBody/content/application~1json").is_some();
            let parameters_in =
                |place: &str| operation.get("parameters").and_then(Value::as_array).is_some_and(|ps| ps.iter().any(|p| p["in"] == place));
            let (path_parameters, query_parameters) = (parameters_in("path"), parameters_in("query"));
            let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else { continue };
            if secured {
                responses.entry("401").or_insert_with(|| error_response("No API key, or a key that is unknown, revoked or expired"));
                responses.entry("403").or_insert_with(|| error_response("The key holds none of the roles this operation allows"));
            }
            if json_body {
                responses.entry("400").or_insert_with(|| error_response("The body is not valid JSON (`malformed_json`)"));
            }
            if path_parameters {
                responses.entry("404").or_insert_with(|| error_response("Nothing at this path: an unknown id, or a path segment of the wrong form"));
            }
            if method != "get" || SIGNING_READS.contains(&path.as_str()) {
                responses.entry("503").or_insert_with(|| {
                    error_response("The ledger cannot record or sign: it is unreachable, or it has halted because the stored tree contradicts a checkpoint it signed (named in the message)")
                });
            }
            if query_parameters {
                responses.entry("422").or_insert_with(|| error_response("A query parameter is malformed or out of range, named in the message"));
            }
            for (status, response) in responses.iter_mut() {
                let Some(response) = response.as_object_mut() else { continue };
                if !response.contains_key("description") && !response.contains_key("$ref") {
                    response.insert("description".into(), Value::String(reason_phrase(status)));
                }
            }
        }
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })
}

/// The standard reason phrase of a status code ("OK", "Not Found"); a range such as `4XX` or
/// `default` gets a plain description.
fn reason_phrase(status: &str) -> String {
    status
        .parse::<u16>()
        .ok()
        .and_then(|code| StatusCode::from_u16(code).ok())
        .and_then(|code| code.canonical_reason())
        .map_or_else(|| format!("Status {status}"), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secured_operations_document_401_and_403_and_every_response_has_a_description() {
        let mut document = json!({"paths": {"/a/{id}": {
            "get": {"security": [{"api_key": ["admin"]}], "responses": {"200": {"content": {}}, "404": {"description": "Gone away"}},
                    "parameters": [{"name": "id", "in": "path"}, {"name": "limit", "in": "query"}]},
            "post": {"responses": {"201": {}}, "requestBody": {"content": {"application/json": {}}}},
            "parameters": []
        }}});

        complete_value(&mut document);

        let get = &document["paths"]["/a/{id}"]["get"]["responses"];
        assert_eq!(get["200"]["description"], "OK");
        assert_eq!(get["404"]["description"], "Gone away", "a description given is kept");
        assert!(get["422"]["description"].is_string(), "query parameters can be malformed");
        assert!(get.get("400").is_none(), "no body, so no malformed body");
        assert_eq!(get["401"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody");
        assert!(get["403"]["description"].is_string());
        let post = &document["paths"]["/a/{id}"]["post"]["responses"];
        assert_eq!(post["201"]["description"], "Created");
        assert!(post["400"]["description"].as_str().unwrap().contains("JSON"));
        assert!(post.get("401").is_none(), "an open operation needs no key");
        assert!(post.get("404").is_none(), "no path parameters were declared on it");
    }
}
