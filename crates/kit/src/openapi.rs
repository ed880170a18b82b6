//! The OpenAPI 3.1 document every service serves at `/api/openapi.json` (with a Swagger UI at
//! `/api/docs`), built from the handlers' `#[utoipa::path]` attributes.
//!
//! Handlers describe what is theirs: the success body and the errors only they answer (403, 404,
//! 409, 429). [`complete`] adds what every operation of a kind can answer, so that no handler
//! can forget it: 400 for bad parameters or bodies, 401 where a token is required, 413/415 for
//! bodies, 500 and 503 everywhere.

use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref};
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
    /// A stable snake_case name for clients to branch on (`not_a_member`, `rate_limited`, ...).
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

/// `429 rate_limited` with `Retry-After`, for `responses(..., RateLimited)` of rate-limited
/// operations.
#[derive(Debug, utoipa::IntoResponses)]
#[response(
    status = 429,
    description = "`rate_limited`: too many requests from this IP, username or user",
    headers(("Retry-After" = u64, description = "Seconds to wait"))
)]
pub struct RateLimited(#[to_schema] pub ErrorReply);

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

fn add(op: &mut Operation, status: &str, description: &str) {
    op.responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| error_response(description).into());
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
         `data: null`."
    ));
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
                add(
                    op,
                    "400",
                    "`invalid_json`, `invalid_body`, or a field that breaks its rule \
                     (`invalid_username`, `invalid_room_name`, ...)",
                );
                add(op, "413", "`body_too_large`");
                add(op, "415", "`unsupported_media_type`: the body must be JSON");
            } else if has_params {
                add(op, "400", "`invalid_path` or `invalid_query`");
            }
            if requires(op, BEARER) {
                add(
                    op,
                    "401",
                    "`missing_token`, `invalid_token`, `token_expired` or \
                     `token_revoked`",
                );
            }
            if requires(op, INTERNAL) {
                add(op, "401", "`invalid_internal_token`");
            }
            add(
                op,
                "500",
                "`internal_error` (the cause is logged, never sent)",
            );
            add(
                op,
                "503",
                "`database_unavailable`, `bus_unavailable` or another dependency is down; retry",
            );
        }
    }
}
