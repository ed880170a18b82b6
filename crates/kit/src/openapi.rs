//! The OpenAPI 3.1 document every service serves at `/api/openapi.json` (with a Swagger UI at
//! `/api/docs`), built from the handlers' `#[utoipa::path]` attributes.
//!
//! Handlers describe what is theirs: the success body and the errors only they answer (403, 404,
//! 409, 429), each named in backticks. [`complete`] adds what every operation of a kind can
//! answer, so that no handler can forget it: 400 for bad parameters or bodies, 401 where a token
//! is required, 413/415 for bodies, 500 and 503 everywhere. It also lists the whole
//! [`ErrorCode`] table in the document: in `info.description` for people and as
//! `x-error-codes` (`[{"error", "status", "meaning"}]`) for tools.

use std::collections::btree_map::Entry;

use proto::error::ErrorCode;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

/// Where each service serves its document.
pub const DOCUMENT_PATH: &str = "/api/openapi.json";

/// The security scheme name of user tokens (`Authorization: Bearer <jwt>`).
pub const BEARER: &str = "bearer";
/// The security scheme name of the service-to-service token (`X-Internal-Token`).
pub const INTERNAL: &str = "internal_token";

/// Every error reply: the seed's envelope with `data: null` and a stable `error` name.
#[derive(Debug, ToSchema)]
#[schema(as = ErrorReply)]
pub struct ErrorReply {
    /// Equals the HTTP status.
    pub code: u16,
    /// A sentence safe to show to a person.
    pub message: String,
    /// Always null.
    #[schema(schema_with = null_schema)]
    pub data: (),
    /// A stable snake_case name for clients to branch on; the document's description and its
    /// `x-error-codes` list every one with its status.
    pub error: String,
}

/// `data` of a reply that carries nothing: always null.
pub fn null_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Null)
        .build()
}

/// The `data: null` success envelope (`{"code":200,"message":"success","data":null}`).
#[derive(Debug, ToSchema)]
pub struct EmptyReply {
    pub code: u16,
    pub message: String,
    #[schema(schema_with = null_schema)]
    pub data: (),
}

/// Adds `T`'s schema and every schema it refers to, for types no operation names (WebSocket frames).
pub fn add_schema<T: ToSchema>(doc: &mut OpenApi) {
    let mut schemas = vec![(T::name().into_owned(), T::schema())];
    T::schemas(&mut schemas);
    let components = doc.components.get_or_insert_with(Default::default);
    components.schemas.extend(schemas);
}

/// Errors any operation with a JSON body may answer.
pub const BODY_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidJson,
    ErrorCode::InvalidBody,
    ErrorCode::BodyTooLarge,
    ErrorCode::UnsupportedMediaType,
];
/// Errors any operation with path or query parameters may answer.
pub const PARAMETER_ERRORS: &[ErrorCode] = &[ErrorCode::InvalidPath, ErrorCode::InvalidQuery];
/// Errors any operation that takes a user token may answer.
pub const BEARER_ERRORS: &[ErrorCode] = &[
    ErrorCode::MissingToken,
    ErrorCode::InvalidToken,
    ErrorCode::TokenExpired,
    ErrorCode::TokenRevoked,
];
/// Errors any operation that takes the internal token may answer.
pub const INTERNAL_ERRORS: &[ErrorCode] = &[ErrorCode::InvalidInternalToken];
/// Errors every operation may answer.
pub const EVERY_OPERATION_ERRORS: &[ErrorCode] =
    &[ErrorCode::InternalError, ErrorCode::DatabaseUnavailable];
/// Errors of the router itself, for paths or methods no operation has (so no operation lists
/// them; the document's description does).
pub const ROUTER_ERRORS: &[ErrorCode] = &[ErrorCode::NotFound, ErrorCode::MethodNotAllowed];
/// Errors of the listener (`crate::serve`), answered before any route for any path: an
/// oversized request head, a source address or port over its connection cap.
pub const CONNECTION_ERRORS: &[ErrorCode] = &[
    ErrorCode::HeadersTooLarge,
    ErrorCode::UrlTooLong,
    ErrorCode::TooManyConnections,
];

/// "`a`, `b` or `c`": the names of `codes` as response descriptions write them.
pub fn names(codes: &[ErrorCode]) -> String {
    let quoted: Vec<String> = codes.iter().map(|c| format!("`{}`", c.name())).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The table as a Markdown list, one line per error: "`name` (status): meaning".
fn error_table() -> String {
    ErrorCode::ALL
        .iter()
        .map(|c| format!("- `{}` ({}): {}.\n", c.name(), c.status(), c.meaning()))
        .collect()
}

/// The table as the `x-error-codes` extension's value.
fn error_table_json() -> serde_json::Value {
    ErrorCode::ALL
        .iter()
        .map(|c| {
            serde_json::json!({
                "error": c.name(),
                "status": c.status(),
                "meaning": c.meaning(),
            })
        })
        .collect()
}

/// `429 rate_limited` with `Retry-After`, for `responses(..., RateLimited)` of rate-limited
/// operations.
#[derive(Debug, utoipa::IntoResponses)]
#[response(
    status = 429,
    description = "`rate_limited`: too many requests from this IP, username or user",
    headers(("Retry-After" = u64, description = "Seconds to wait"))
)]
pub struct RateLimited(pub ErrorReply);

/// The two answers of `/health`, for `responses(HealthResponses)`.
#[derive(Debug, utoipa::IntoResponses)]
pub enum HealthResponses {
    /// Ready and every dependency answers.
    #[response(status = 200)]
    Healthy(#[to_schema] crate::envelope::Envelope<crate::http::HealthData>),
    /// Shutting down, or a dependency is down (`checks` says which).
    #[response(status = 503)]
    Unhealthy(#[to_schema] crate::envelope::Envelope<crate::http::HealthData>),
}

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorReply::name())))
                .build(),
        )
        .build()
}

/// Documents that `op` may answer `codes`: per status, a new response if the handler has none,
/// else the names its own description lacks, appended to it.
fn add(op: &mut Operation, codes: &[ErrorCode]) {
    let mut statuses: Vec<u16> = codes.iter().map(|c| c.status()).collect();
    statuses.sort_unstable();
    statuses.dedup();
    for status in statuses {
        let group: Vec<ErrorCode> = codes
            .iter()
            .copied()
            .filter(|c| c.status() == status)
            .collect();
        match op.responses.responses.entry(status.to_string()) {
            Entry::Vacant(slot) => {
                slot.insert(error_response(&names(&group)).into());
            }
            Entry::Occupied(mut slot) => {
                if let RefOr::T(response) = slot.get_mut() {
                    let missing: Vec<ErrorCode> = group
                        .into_iter()
                        .filter(|c| !response.description.contains(&format!("`{}`", c.name())))
                        .collect();
                    if !missing.is_empty() {
                        response.description =
                            format!("{}; also {}", response.description, names(&missing));
                    }
                }
            }
        }
    }
}

fn requires(op: &Operation, scheme: &str) -> bool {
    op.security
        .iter()
        .flatten()
        .any(|req| serde_json::to_value(req).is_ok_and(|v| v.get(scheme).is_some()))
}

/// Fills in the service's title, the security schemes, the shared schemas and the responses every
/// operation of a kind can give (see the module docs).
pub fn complete(doc: &mut OpenApi, service: &str) {
    doc.info = utoipa::openapi::InfoBuilder::new()
        .title(format!("RustStacker {service}"))
        .version(env!("CARGO_PKG_VERSION"))
        .license(Some(
            utoipa::openapi::LicenseBuilder::new()
                .name("MIT OR Apache-2.0")
                .identifier(Some("MIT OR Apache-2.0"))
                .build(),
        ))
        .build();
    doc.info.description = Some(format!(
        "The {service} service of RustStacker. Every reply is the envelope \
         `{{\"code\", \"message\", \"data\"}}`; errors add a stable `error` name and have \
         `data: null`. A path no operation has answers {}. Any request may be answered {} \
         by the listener, before routing (the connection is closed after it).\n\n\
         Every `error` name of the API, with its status:\n\n{}",
        names(ROUTER_ERRORS),
        names(CONNECTION_ERRORS),
        error_table(),
    ));
    doc.extensions
        .get_or_insert_with(Extensions::default)
        .insert("x-error-codes".to_owned(), error_table_json());
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "A token from `POST /api/user/login` (or `?token=` on the WebSocket handshake)",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        INTERNAL,
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            crate::auth::INTERNAL_TOKEN_HEADER,
            "The `internal_token` of the configuration (service-to-service calls)",
        ))),
    );
    components
        .schemas
        .insert(ErrorReply::name().into(), ErrorReply::schema());
    components
        .schemas
        .insert(EmptyReply::name().into(), EmptyReply::schema());
    // What `HealthResponses` refers to (derived responses do not register their schemas).
    add_schema::<crate::http::HealthData>(doc);

    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
            if op.request_body.is_some() {
                add(op, BODY_ERRORS);
            } else if has_params {
                add(op, PARAMETER_ERRORS);
            }
            if requires(op, BEARER) {
                add(op, BEARER_ERRORS);
            }
            if requires(op, INTERNAL) {
                add(op, INTERNAL_ERRORS);
            }
            add(op, EVERY_OPERATION_ERRORS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    use utoipa::openapi::request_body::RequestBody;
    use utoipa::openapi::{OpenApiBuilder, PathsBuilder};

    #[test]
    fn names_read_as_a_list() {
        assert_eq!(names(&[]), "");
        assert_eq!(names(&[ErrorCode::NotAMember]), "`not_a_member`");
        assert_eq!(
            names(&[ErrorCode::NotAMember, ErrorCode::NotAnAdmin]),
            "`not_a_member` or `not_an_admin`"
        );
        assert_eq!(
            names(&[
                ErrorCode::InvalidPath,
                ErrorCode::InvalidQuery,
                ErrorCode::InvalidInternalToken
            ]),
            "`invalid_path`, `invalid_query` or `invalid_internal_token`"
        );
    }

    /// A handler's own description keeps its words and gains only the generic names it lacks;
    /// a status it does not describe gets the generic names alone.
    #[test]
    fn complete_adds_generic_errors_to_what_handlers_wrote() {
        let op = OperationBuilder::new()
            .request_body(Some(RequestBody::new()))
            .response("400", error_response("`not_a_group` or `invalid_body`"))
            .build();
        let mut doc = OpenApiBuilder::new()
            .paths(PathsBuilder::new().path("/x", PathItem::new(HttpMethod::Post, op)))
            .build();
        complete(&mut doc, "test");
        let json = serde_json::to_value(&doc).expect("serializes");
        let responses = &json["paths"]["/x"]["post"]["responses"];
        assert_eq!(
            responses["400"]["description"],
            "`not_a_group` or `invalid_body`; also `invalid_json`"
        );
        assert_eq!(responses["413"]["description"], "`body_too_large`");
        assert_eq!(responses["500"]["description"], "`internal_error`");
        assert!(responses.get("401").is_none(), "no token is required");
        let table = json["x-error-codes"].as_array().expect("x-error-codes");
        assert_eq!(table.len(), ErrorCode::ALL.len());
        assert_eq!(table[0]["error"], ErrorCode::ALL[0].name());
        let description = json["info"]["description"].as_str().unwrap_or_default();
        assert!(
            description.contains("- `not_a_member` (403): only members of the room may do that.")
        );
    }
}
