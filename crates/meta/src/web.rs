//! The web chat page: plain HTML, CSS and JavaScript from the workspace's `web/` directory, and
//! the JavaScript SDK's modules (`clients/js/src/*.js`) it is built on, compiled into the binary
//! (no build step, nothing fetched from elsewhere), served by Meta at `GET /` and
//! `GET /web/{file}`; and `GET /api/web/config`, which tells the page where Send and
//! the registry are (the page finds its gateway through the registry, like any client).
//!
//! The page uses the public API and the WebSocket protocol only; it talks to Send and the registry
//! across origins, which the CORS policy of every service allows (`http.cors_origins`).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use kit::envelope::Envelope;
use kit::openapi::ErrorReply;
use kit::{ApiError, Path, ok};
use proto::api::WebConfigReply;
use proto::error::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, MetaState};

/// Where the page finds Send and the registry (the `web:` block). Unset, Meta answers the port
/// that service listens on in this process (`all`) or its configured port (a Meta alone), on the
/// host the page was loaded from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Send's base URL as a browser reaches it, `http(s)://host:port`.
    pub send_url: Option<String>,
    /// The registry's base URL as a browser reaches it, `http(s)://host:port`.
    pub registry_url: Option<String>,
}

impl WebConfig {
    /// Checks that each URL set is an `http(s)://host[:port]` base URL.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [
            ("web.send_url", &self.send_url),
            ("web.registry_url", &self.registry_url),
        ] {
            let Some(url) = url else { continue };
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .map(|r| r.trim_end_matches('/'));
            if !rest.is_some_and(host_port) {
                return Err(ConfigError::WebUrl { key });
            }
        }
        Ok(())
    }
}

/// A `host[:port]` of letters, digits, `.`, `-`, `:`, `[` and `]` (IPv6 literals).
fn host_port(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// How the page reaches one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// A configured base URL.
    Url(String),
    /// This port on the host the page came from.
    Port(u16),
}

impl Link {
    /// The configured URL (without a trailing slash), else `port`.
    pub fn new(url: Option<&str>, port: u16) -> Self {
        match url {
            Some(u) => Self::Url(u.trim_end_matches('/').to_owned()),
            None => Self::Port(port),
        }
    }

    fn resolve(&self, page_host: &str) -> String {
        match self {
            Self::Url(u) => u.clone(),
            Self::Port(p) => format!("http://{page_host}:{p}"),
        }
    }
}

/// Where the page reaches Send and the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    pub send: Link,
    pub registry: Link,
}

impl Default for Links {
    /// The seed's ports on the page's host.
    fn default() -> Self {
        Self {
            send: Link::Port(8081),
            registry: Link::Port(8084),
        }
    }
}

/// The host name (without the port) of the request's `Host` header when it is a plain host name
/// or IP literal, else `127.0.0.1`. It only shapes the answer to the same client, which is never
/// cached (`no-store`).
fn page_host(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let name = if let Some(v6) = host.strip_prefix('[') {
        v6.split_once(']').map(|(ip, _)| format!("[{ip}]"))
    } else {
        host.split(':').next().map(str::to_owned)
    };
    name.filter(|n| host_port(n))
        .unwrap_or_else(|| "127.0.0.1".to_owned())
}

/// The page's files: name, content type, contents.
const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../../web/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/style.css"),
    ),
    // The JavaScript SDK (`clients/js/src`), byte for byte, served flat next to the page's own
    // files: `app.js` imports `./index.js`, whose relative imports resolve to these.
    sdk("index.js", include_str!("../../../clients/js/src/index.js")),
    sdk(
        "client.js",
        include_str!("../../../clients/js/src/client.js"),
    ),
    sdk(
        "delivery.js",
        include_str!("../../../clients/js/src/delivery.js"),
    ),
    sdk(
        "emitter.js",
        include_str!("../../../clients/js/src/emitter.js"),
    ),
    sdk(
        "errors.js",
        include_str!("../../../clients/js/src/errors.js"),
    ),
    sdk("live.js", include_str!("../../../clients/js/src/live.js")),
    sdk(
        "session.js",
        include_str!("../../../clients/js/src/session.js"),
    ),
];

/// A module of the SDK, served as JavaScript.
const fn sdk(name: &'static str, body: &'static str) -> (&'static str, &'static str, &'static str) {
    (name, "text/javascript; charset=utf-8", body)
}

/// What the page may do, as the browser enforces it: scripts (module scripts included) and styles
/// from this origin only (no inline script, so injected markup cannot run), connections to any http(s)/ws(s) service
/// (Send, the registry and the gateway are on other ports), no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src http: https: ws: wss:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

fn file_reply(name: &str) -> Result<Response, ApiError> {
    let (_, content_type, body) = FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| ApiError::new(ErrorCode::FileNotFound, "no such file of the web page"))?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Small files without versioned names: revalidate every time rather than run a
            // stale script against a newer server.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        *body,
    )
        .into_response())
}

/// The web chat page.
#[utoipa::path(get, path = "/", tag = "web",
    responses(
        (status = 200, description = "The page (HTML)", content_type = "text/html", body = String),
    ))]
pub(crate) async fn index() -> Result<Response, ApiError> {
    file_reply("index.html")
}

/// A file of the web page (`index.html`, `app.js`, `style.css`) or a module of the JavaScript SDK
/// it imports (`index.js`, `client.js`, `delivery.js`, `emitter.js`, `errors.js`, `live.js`,
/// `session.js`: `clients/js/src` as it is).
#[utoipa::path(get, path = "/web/{file}", tag = "web",
    params(("file" = String, Path, description = "The file's name")),
    responses(
        (status = 200, description = "The file, with its content type", content(
            (String = "text/html"), (String = "text/javascript"), (String = "text/css"))),
        (status = 404, description = "`file_not_found`", body = ErrorReply),
    ))]
pub(crate) async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    file_reply(&file)
}

/// Where the web page reaches Send and the registry: the `web.send_url` and `web.registry_url`
/// keys, or when unset the service's port on the host this request was sent to.
#[utoipa::path(get, path = "/api/web/config", tag = "web",
    responses(
        (status = 200, description = "Base URLs of Send and the registry", body = Envelope<WebConfigReply>),
    ))]
pub(crate) async fn config(State(s): State<MetaState>, headers: HeaderMap) -> Response {
    let host = page_host(&headers);
    let links = &s.links();
    let reply = WebConfigReply {
        send_url: links.send.resolve(&host),
        registry_url: links.registry.resolve(&host),
    };
    ([(header::CACHE_CONTROL, "no-store")], ok(reply)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(value: &str) -> String {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(value).expect("header"));
        page_host(&h)
    }

    #[test]
    fn the_page_host_is_the_host_header_without_its_port_or_a_safe_default() {
        assert_eq!(host_of("localhost:8080"), "localhost");
        assert_eq!(host_of("10.1.2.3"), "10.1.2.3");
        assert_eq!(host_of("[::1]:8080"), "[::1]");
        assert_eq!(host_of("evil\"<x>:80"), "127.0.0.1");
        assert_eq!(page_host(&HeaderMap::new()), "127.0.0.1");
    }

    #[test]
    fn a_link_is_the_configured_url_or_the_port_on_the_page_host() {
        let url = Link::new(Some("http://send.example:9081/"), 1);
        assert_eq!(url.resolve("localhost"), "http://send.example:9081");
        assert_eq!(
            Link::new(None, 8081).resolve("localhost"),
            "http://localhost:8081"
        );
    }

    #[test]
    fn web_urls_must_be_http_base_urls() {
        let ok = WebConfig {
            send_url: Some("http://127.0.0.1:8081".into()),
            registry_url: Some("https://registry.example/".into()),
        };
        assert!(ok.validate().is_ok());
        for bad in ["127.0.0.1:8081", "ws://x:1", "http://x/path", "http://"] {
            let cfg = WebConfig {
                send_url: Some(bad.into()),
                registry_url: None,
            };
            assert!(cfg.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn file_names_are_unique_and_the_sdk_modules_are_all_served() {
        let names: std::collections::HashSet<_> = FILES.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(names.len(), FILES.len(), "two files of one name");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/js/src");
        for entry in std::fs::read_dir(&dir).expect("clients/js/src") {
            let path = entry.expect("an entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).expect("a name");
            let (_, _, body) = FILES
                .iter()
                .find(|(n, _, _)| *n == name)
                .unwrap_or_else(|| panic!("{name} of the SDK is not served"));
            let on_disk = std::fs::read_to_string(&path).expect("the module");
            assert_eq!(*body, on_disk, "{name} differs from the SDK's");
        }
    }

    #[test]
    fn every_file_is_served_with_its_type_and_an_unknown_one_is_a_404() {
        for (name, ty, _) in FILES {
            let r = file_reply(name).expect("a file");
            assert_eq!(r.headers()[header::CONTENT_TYPE], *ty);
            assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        }
        for unknown in ["", "../Cargo.toml", "index.htm", "tests", "index.d.ts"] {
            assert!(file_reply(unknown).is_err(), "{unknown}");
        }
    }
}
