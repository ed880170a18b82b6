//! What every service's router gets: common routes, limits, metrics and envelope fallbacks
//! ([`finish`]), and the CORS policy every listener answers with ([`cors_layer`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension, MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use proto::error::ErrorCode;
use serde::Serialize;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::InvalidSetting;
use crate::monitor::{Monitor, Snapshot};
use crate::{ApiError, envelope::Envelope, telemetry};

/// Readiness: true from start until shutdown begins. `/health` answers 503 once it is false.
#[derive(Debug, Clone)]
pub struct Ready(Arc<AtomicBool>);

impl Default for Ready {
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl Ready {
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set_not_ready(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// The state of one dependency in `/health`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Check {
    #[schema(value_type = String)]
    pub name: &'static str,
    pub ok: bool,
    /// A short, safe description ("ok", "unreachable").
    pub detail: String,
}

impl Check {
    pub fn from_result<E>(name: &'static str, r: &Result<(), E>) -> Self {
        Self {
            name,
            ok: r.is_ok(),
            detail: if r.is_ok() { "ok" } else { "unavailable" }.into(),
        }
    }
}

/// `data` of a `/health` reply (200 when healthy, 503 with the same shape when not).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthData {
    /// `ok` or `unhealthy`.
    #[schema(value_type = String)]
    pub status: &'static str,
    pub service: String,
    /// False from the start of a graceful shutdown.
    pub ready: bool,
    pub checks: Vec<Check>,
}

/// The `/health` reply: 200 when ready and every check passes, else 503, always the envelope.
pub fn health_reply(service: &str, ready: &Ready, checks: Vec<Check>) -> Response {
    let healthy = ready.is_ready() && checks.iter().all(|c| c.ok);
    let (status, code, message) = if healthy {
        (StatusCode::OK, 200, "success")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, 503, "unhealthy")
    };
    let body = Envelope {
        code,
        message: message.into(),
        data: HealthData {
            status: if healthy { "ok" } else { "unhealthy" },
            service: service.to_owned(),
            ready: ready.is_ready(),
            checks,
        },
    };
    (status, axum::Json(body)).into_response()
}

/// Liveness: answers as long as the process serves HTTP.
#[utoipa::path(get, path = "/ping", tag = "operations",
    responses((status = 200, description = "`{\"code\":200,\"message\":\"pong\",\"data\":null}`", body = crate::openapi::EmptyReply)))]
async fn ping() -> axum::Json<Envelope<()>> {
    axum::Json(Envelope {
        code: 200,
        message: "pong".into(),
        data: (),
    })
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
async fn metrics_text() -> Response {
    crate::monitor::mirror_to_metrics();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        telemetry::render_metrics(),
    )
        .into_response()
}

/// The seed's Monitor: per-route latency (average, p50, p99) and success rate over the last
/// `monitor.window_secs` (sliding by a twelfth of it), busiest route first.
#[utoipa::path(get, path = "/debug/monitor", tag = "operations",
    responses((status = 200, description = "The window's statistics", body = Envelope<Snapshot>)))]
async fn debug_monitor(
    Extension(monitor): Extension<Arc<Monitor>>,
) -> axum::Json<Envelope<Snapshot>> {
    crate::ok(monitor.snapshot())
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take that method",
    )
}

/// Limits for [`finish`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
}

/// Adds `/ping` and `/metrics`, the OpenAPI document (`/api/openapi.json`) and its browsable page
/// (`/api/docs`), the 404/405 envelope fallbacks, the body limit, the panic catcher (a 500
/// envelope, never a dropped connection) and per-route metrics labelled with `service`.
///
/// Every route comes in through `router`, registered with `utoipa_axum::routes!`, so no route
/// can exist that the document does not describe.
pub fn finish(router: OpenApiRouter, service: &'static str, limits: Limits) -> Router {
    let (router, mut doc) = router
        .routes(routes!(ping))
        .routes(routes!(metrics_text))
        .routes(routes!(debug_monitor))
        .split_for_parts();
    crate::openapi::complete(&mut doc, service);
    let monitor = Monitor::new(
        service,
        doc.paths.paths.iter().flat_map(|(path, item)| {
            [
                ("get", item.get.is_some()),
                ("put", item.put.is_some()),
                ("post", item.post.is_some()),
                ("delete", item.delete.is_some()),
                ("patch", item.patch.is_some()),
            ]
            .into_iter()
            .filter(|(_, has)| *has)
            .map(move |(method, _)| (method, path.as_str()))
        }),
    );
    let recorder = monitor.clone();
    router
        .merge(SwaggerUi::new("/api/docs").url(crate::openapi::DOCUMENT_PATH, doc))
        .layer(Extension(monitor))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            record_request(service, recorder.clone(), req, next)
        }))
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                ApiError::internal(&"handler panicked").into_response()
            },
        ))
}

/// How long a browser may cache a preflight's answer.
const CORS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// The CORS policy of every service: pages from `origins` (each `http(s)://host[:port]`, or the
/// single entry `*` for any origin) may call the API with `Authorization` and JSON bodies and read
/// the answers, `Retry-After` included. Credentials (cookies) are never allowed: the API
/// authenticates with bearer tokens that a page sends explicitly, so an origin that is allowed
/// gains nothing a token does not already give it, and one that is not cannot read answers.
///
/// Applied outside [`finish`]'s router (by the composition root, around each listener's
/// service), so a preflight `OPTIONS` is answered before routing and never reaches the 405
/// fallback, the metrics or the Monitor. Fails with a sentence naming the bad origin.
pub fn cors_layer(origins: &[String]) -> Result<CorsLayer, InvalidSetting> {
    use axum::http::{HeaderValue, Method, header};
    const KEY: &str = "http.cors_origins";
    let allow = if origins.iter().any(|o| o == "*") {
        if origins.len() > 1 {
            return Err(InvalidSetting::new(
                KEY,
                "`*` allows every origin; list it alone",
            ));
        }
        AllowOrigin::any()
    } else {
        let mut list = Vec::with_capacity(origins.len());
        for o in origins {
            list.push(parse_origin(o)?);
        }
        AllowOrigin::list(list)
    };
    fn parse_origin(o: &str) -> Result<HeaderValue, InvalidSetting> {
        let bad =
            || InvalidSetting::new(KEY, format!("`{o}` is not an origin like http://host:port"));
        let rest = o
            .strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
            .ok_or_else(bad)?;
        let host_ok = !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !host_ok {
            return Err(bad());
        }
        HeaderValue::from_str(o).map_err(|_| bad())
    }
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::RETRY_AFTER])
        .max_age(CORS_MAX_AGE))
}

/// Numbers requests in logs (per process), so one request's lines can be found together.
static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

async fn record_request(
    service: &'static str,
    monitor: Arc<Monitor>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = req.method().as_str().to_owned();
    // The route template only: the raw path and query may carry ids and (`/api/ws?token=`) secrets.
    let span = tracing::info_span!(
        "request",
        id = NEXT_REQUEST.fetch_add(1, Ordering::Relaxed),
        service,
        method = %method,
        route = %route,
        status = tracing::field::Empty,
    );
    let start = Instant::now();
    let resp = next.run(req).instrument(span.clone()).await;
    let took = start.elapsed();
    span.record("status", resp.status().as_u16());
    if resp.status().is_server_error() {
        span.in_scope(|| tracing::warn!(took_ms = took.as_millis() as u64, "request failed"));
    } else {
        span.in_scope(|| tracing::debug!(took_ms = took.as_millis() as u64, "request done"));
    }
    monitor.record(
        &method,
        (route != "unmatched").then_some(route.as_str()),
        resp.status().as_u16(),
        took,
    );
    let status = resp.status().as_u16().to_string();
    let labels = [
        ("service", service.to_owned()),
        ("route", route),
        ("method", method),
        ("status", status),
    ];
    metrics::counter!("ruststacker_http_requests_total", &labels).increment(1);
    metrics::histogram!("ruststacker_http_request_duration_seconds", &labels[..3])
        .record(took.as_secs_f64());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn preflight(router: Router, origin: &str) -> Response {
        use tower::ServiceExt;
        let req = Request::builder()
            .method("OPTIONS")
            .uri("/api/anything")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .body(axum::body::Body::empty())
            .expect("a request");
        router.oneshot(req).await.expect("infallible")
    }

    fn allowed_origin(resp: &Response) -> Option<&str> {
        resp.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn a_preflight_from_a_listed_origin_is_allowed_and_another_is_not() {
        let origins = vec![
            "http://127.0.0.1:8080".to_owned(),
            "http://localhost:8080".into(),
        ];
        let router = || {
            Router::new()
                .fallback(not_found)
                .layer(cors_layer(&origins).expect("valid origins"))
        };
        let ok = preflight(router(), "http://localhost:8080").await;
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(allowed_origin(&ok), Some("http://localhost:8080"));
        let headers = ok.headers()["access-control-allow-headers"]
            .to_str()
            .expect("ascii");
        assert!(headers.contains("authorization") && headers.contains("content-type"));
        assert!(
            ok.headers()
                .get("access-control-allow-credentials")
                .is_none(),
            "never credentials"
        );
        let other = preflight(router(), "http://evil.example").await;
        assert_eq!(
            allowed_origin(&other),
            None,
            "an unlisted origin reads nothing"
        );
        let any = Router::new()
            .fallback(not_found)
            .layer(cors_layer(&["*".to_owned()]).expect("valid"));
        assert_eq!(
            allowed_origin(&preflight(any, "http://anywhere.example:1234").await),
            Some("*")
        );
    }

    #[test]
    fn an_origin_with_a_path_or_another_scheme_is_refused() {
        for bad in [
            "127.0.0.1:8080",
            "ftp://host",
            "http://host/path",
            "http://",
            "http://a b",
        ] {
            let err = cors_layer(&[bad.to_owned()]).expect_err(bad);
            assert_eq!(err.key, "http.cors_origins");
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert!(cors_layer(&["*".to_owned(), "http://a".to_owned()]).is_err());
        assert!(cors_layer(&[]).is_ok(), "no origin: no page may call");
    }

    #[test]
    fn health_is_503_and_not_ready_from_the_start_of_a_shutdown_even_with_every_check_ok() {
        let ready = Ready::default();
        let ok = || vec![Check::from_result::<()>("database", &Ok(()))];
        assert_eq!(health_reply("meta", &ready, ok()).status(), StatusCode::OK);
        ready.set_not_ready();
        assert_eq!(
            health_reply("meta", &ready, ok()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let down = vec![Check::from_result("database", &Err(()))];
        assert_eq!(
            health_reply("meta", &Ready::default(), down).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
