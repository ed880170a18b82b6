//! The registry's HTTP API behind [`Instances`] and [`Routes`]: the seed's model, where a gateway
//! or Send instance configured with `registry.url` registers, heartbeats, deregisters and (a
//! gateway) reports its users' routes to the Registry service, which keeps them in its own backend.
//!
//! The registry's internal endpoints take the shared `internal_token` in `X-Internal-Token`; the
//! instance lists are public. What the registry does itself is not repeated here: it counts the
//! placements it hands out ([`Instances::placed`] is a no-op) and answers
//! `/registry/gateway/available` from its own route table (so [`Routes::last_gateway`], which only
//! the registry asks, sees connected routes only through this client).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use proto::UserId;
use proto::api::{
    GatewayHeartbeatRequest, GatewayView, InstancesReply, RefreshRoutesRequest,
    RegisterGatewayRequest, RegisterSendRequest, RoutesBatchReply, RoutesBatchRequest,
    SendHeartbeatRequest, SendInstancesReply, SendView, UserRouteRequest,
};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::{BusError, GatewayId, GatewayRegistration, Instances, Ping, Routes, SendRegistration};

/// The header the registry's internal endpoints check.
pub const INTERNAL_TOKEN_HEADER: &str = "x-internal-token";

/// Most users one `routes/batch` or `routes/refresh` call may carry (the registry refuses more).
pub const MAX_USERS_PER_CALL: usize = 1000;

/// A whole call, connect included. The registry answers from Redis in milliseconds; a caller
/// (a heartbeat, a connection's route write) must not hang on a registry that stopped answering.
const TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a `registry.url` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("registry.url {url:?} {why}")]
pub struct InvalidUrl {
    url: String,
    why: &'static str,
}

/// Parses and checks a `registry.url` (`http://host:port`, optionally with a path prefix).
pub fn parse_registry_url(url: &str) -> Result<Url, InvalidUrl> {
    let invalid = |why| InvalidUrl {
        url: url.to_owned(),
        why,
    };
    let parsed = Url::parse(url)
        .map_err(|_| invalid("is not a URL; expected the registry's http://host:port"))?;
    match parsed.scheme() {
        "http" => {}
        // reqwest is built without a TLS backend in this workspace (no TLS crate is vendored):
        // refuse here rather than fail on the first call with a transport error.
        "https" => {
            return Err(invalid(
                "uses https, which this build cannot speak (no TLS client); reach the registry over http:// on the internal network",
            ));
        }
        _ => return Err(invalid("must start with http://")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("has no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("must not have a query or fragment"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "must not carry credentials (internal_token authenticates the calls)",
        ));
    }
    Ok(parsed)
}

/// The registry's HTTP API as [`Instances`] and [`Routes`]. Cheap to clone: one connection pool
/// shared by every clone.
#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    base: Url,
    token: Arc<str>,
}

impl std::fmt::Debug for RegistryClient {
    // Never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// A call that did not succeed.
enum Failure {
    /// No answer: connection refused, timeout, a broken or unreadable reply.
    Unreachable(String),
    /// An error reply (the envelope's stable `error` name when there is one).
    Answered {
        status: StatusCode,
        error: String,
        message: String,
    },
}

impl Failure {
    /// 5xx and no answer are worth retrying (`Unavailable`); any other error reply is a refusal.
    fn into_bus(self) -> BusError {
        match self {
            Self::Unreachable(cause) => BusError::Unavailable(format!("registry: {cause}")),
            Self::Answered { status, error, .. } if status.is_server_error() => {
                BusError::Unavailable(format!("registry answered {status} {error}"))
            }
            Self::Answered { status, error, .. } if status == StatusCode::UNAUTHORIZED => {
                BusError::Refused(format!(
                    "registry answered {status} {error}: internal_token is not the registry's"
                ))
            }
            Self::Answered {
                status,
                error,
                message,
            } => BusError::Refused(format!("registry answered {status} {error}: {message}")),
        }
    }

    /// A heartbeat for an instance the registry does not know (it expired, or the registry's
    /// store was emptied): 404 `not_registered`, as the registry answers.
    fn into_heartbeat(self, instance: &str) -> BusError {
        match self {
            Self::Answered { status, error, .. }
                if status == StatusCode::NOT_FOUND
                    && error == proto::error::ErrorCode::NotRegistered.name() =>
            {
                BusError::NotRegistered(instance.to_owned())
            }
            other => other.into_bus(),
        }
    }
}

/// The error envelope: `{code, message, data: null, error}`.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    error: String,
}

/// The success envelope: `{code, message, data}`.
#[derive(Deserialize)]
struct Envelope<T> {
    data: T,
}

/// The error and its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl RegistryClient {
    /// A client of the registry at `base` (see [`parse_registry_url`]) that sends
    /// `internal_token` to the internal endpoints.
    pub fn new(base: Url, internal_token: &str) -> Result<Self, BusError> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| BusError::Unavailable(format!("HTTP client: {}", chain(&e))))?;
        Ok(Self {
            http,
            base,
            token: internal_token.into(),
        })
    }

    /// The registry's base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("parse_registry_url admits only http URLs, which have a path")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn public(&self, segments: &[&str]) -> RequestBuilder {
        self.http.get(self.url(segments))
    }

    fn internal(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        self.http
            .request(method, self.url(segments))
            .header(INTERNAL_TOKEN_HEADER, &*self.token)
    }

    async fn call<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, Failure> {
        let resp = req
            .send()
            .await
            .map_err(|e| Failure::Unreachable(chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .json::<Envelope<T>>()
                .await
                .map(|e| e.data)
                .map_err(|e| Failure::Unreachable(format!("unreadable reply: {}", chain(&e))));
        }
        // Not the registry's envelope (a proxy's page): the status alone says enough.
        let body = resp.json::<ErrorBody>().await.unwrap_or(ErrorBody {
            message: String::new(),
            error: String::new(),
        });
        Err(Failure::Answered {
            status,
            error: body.error,
            message: body.message,
        })
    }
}

#[async_trait]
impl Instances for RegistryClient {
    async fn register_send(&self, reg: SendRegistration) -> Result<(), BusError> {
        let body = RegisterSendRequest {
            instance_id: reg.instance_id,
            address: reg.address,
            port: reg.port,
        };
        let req = self
            .internal(Method::POST, &["registry", "send", "register"])
            .json(&body);
        self.call(req).await.map_err(Failure::into_bus)
    }

    async fn heartbeat_send(&self, instance: &str) -> Result<(), BusError> {
        let body = SendHeartbeatRequest {
            instance_id: instance.to_owned(),
        };
        let req = self
            .internal(Method::POST, &["registry", "send", "heartbeat"])
            .json(&body);
        self.call(req).await.map_err(|f| f.into_heartbeat(instance))
    }

    async fn deregister_send(&self, instance: &str) -> Result<(), BusError> {
        let req = self.internal(Method::DELETE, &["registry", "send", instance]);
        self.call(req).await.map_err(Failure::into_bus)
    }

    async fn live_sends(&self) -> Result<Vec<SendView>, BusError> {
        let req = self.public(&["registry", "send", "instances"]);
        let reply: SendInstancesReply = self.call(req).await.map_err(Failure::into_bus)?;
        Ok(reply.instances)
    }

    async fn register_gateway(&self, reg: GatewayRegistration) -> Result<(), BusError> {
        let body = RegisterGatewayRequest {
            gateway_id: reg.gateway_id.to_string(),
            address: reg.address,
            port: reg.port,
            max_connections: reg.max_connections,
        };
        let req = self
            .internal(Method::POST, &["registry", "gateway", "register"])
            .json(&body);
        self.call(req).await.map_err(Failure::into_bus)
    }

    async fn heartbeat_gateway(&self, gateway: &str, connections: u64) -> Result<(), BusError> {
        let body = GatewayHeartbeatRequest {
            gateway_id: gateway.to_owned(),
            connections,
        };
        let req = self
            .internal(Method::POST, &["registry", "gateway", "heartbeat"])
            .json(&body);
        self.call(req).await.map_err(|f| f.into_heartbeat(gateway))
    }

    async fn deregister_gateway(&self, gateway: &str) -> Result<(), BusError> {
        let req = self.internal(Method::DELETE, &["registry", "gateway", gateway]);
        self.call(req).await.map_err(Failure::into_bus)
    }

    async fn live_gateways(&self) -> Result<Vec<GatewayView>, BusError> {
        let req = self.public(&["registry", "gateway", "instances"]);
        let reply: InstancesReply = self.call(req).await.map_err(Failure::into_bus)?;
        Ok(reply.gateways)
    }

    /// The registry's list does not say how long each gateway was silent, so this is every live
    /// one. Nothing places clients through this client: the registry places them from its own
    /// table, which knows.
    async fn responsive_gateways(&self, _within: Duration) -> Result<Vec<GatewayView>, BusError> {
        self.live_gateways().await
    }

    async fn placed(&self, _gateway: &str) -> Result<(), BusError> {
        // The registry counts the placements it hands out itself.
        Ok(())
    }
}

impl RegistryClient {
    async fn user_route(
        &self,
        action: &str,
        user: UserId,
        gateway: &GatewayId,
    ) -> Result<(), BusError> {
        let body = UserRouteRequest {
            user_id: user,
            gateway_id: gateway.to_string(),
        };
        let req = self
            .internal(Method::POST, &["registry", "user", action])
            .json(&body);
        self.call(req).await.map_err(Failure::into_bus)
    }
}

#[async_trait]
impl Routes for RegistryClient {
    async fn connected(&self, user: UserId, gateway: &GatewayId) -> Result<(), BusError> {
        self.user_route("connect", user, gateway).await
    }

    async fn disconnected(&self, user: UserId, gateway: &GatewayId) -> Result<(), BusError> {
        self.user_route("disconnect", user, gateway).await
    }

    async fn locate(&self, users: &[UserId]) -> Result<HashMap<GatewayId, Vec<UserId>>, BusError> {
        let mut out: HashMap<GatewayId, Vec<UserId>> = HashMap::new();
        for chunk in users.chunks(MAX_USERS_PER_CALL) {
            let body = RoutesBatchRequest {
                user_ids: chunk.to_vec(),
            };
            let req = self
                .internal(Method::POST, &["registry", "user", "routes", "batch"])
                .json(&body);
            let reply: RoutesBatchReply = self.call(req).await.map_err(Failure::into_bus)?;
            for route in reply.routes {
                for gateway in route.gateway_ids {
                    out.entry(gateway.into()).or_default().push(route.user_id);
                }
            }
        }
        Ok(out)
    }

    /// Only the registry asks this, of its own route table. Through this client it sees what
    /// `routes/batch` shows: connected routes on live gateways, not the lease of a user who
    /// disconnected.
    async fn last_gateway(&self, user: UserId) -> Result<Option<GatewayId>, BusError> {
        let mut located = self.locate(&[user]).await?;
        let mut gateways: Vec<GatewayId> = located.drain().map(|(g, _)| g).collect();
        gateways.sort();
        Ok(gateways.into_iter().next())
    }

    async fn refresh(&self, users: &[UserId], gateway: &GatewayId) -> Result<(), BusError> {
        for chunk in users.chunks(MAX_USERS_PER_CALL) {
            let body = RefreshRoutesRequest {
                gateway_id: gateway.to_string(),
                user_ids: chunk.to_vec(),
            };
            let req = self
                .internal(Method::POST, &["registry", "user", "routes", "refresh"])
                .json(&body);
            self.call::<()>(req).await.map_err(Failure::into_bus)?;
        }
        Ok(())
    }
}

#[async_trait]
impl Ping for RegistryClient {
    async fn ping(&self) -> Result<(), BusError> {
        self.call(self.public(&["ping"]))
            .await
            .map_err(Failure::into_bus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_url_is_an_http_url_with_a_host() {
        for ok in [
            "http://127.0.0.1:8084",
            "http://registry:8084/",
            "http://localhost:8084/prefix",
        ] {
            assert!(parse_registry_url(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("localhost:8084", "http://"),
            ("127.0.0.1:8084", "URL"),
            ("ftp://registry", "http://"),
            ("https://registry:8084", "https"),
            ("http://registry:8084/?x=1", "query"),
            ("http://user:pw@registry:8084", "credentials"),
            ("", "URL"),
        ] {
            let err = parse_registry_url(bad).expect_err(bad).to_string();
            assert!(
                err.contains("registry.url") && err.contains(why),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn endpoint_urls_keep_the_base_path_and_escape_ids() {
        let client = |base: &str| {
            RegistryClient::new(parse_registry_url(base).expect("valid"), "t").expect("client")
        };
        assert_eq!(
            client("http://r:1")
                .url(&["registry", "gateway", "g-1"])
                .as_str(),
            "http://r:1/registry/gateway/g-1"
        );
        assert_eq!(
            client("http://r:1/base/").url(&["ping"]).as_str(),
            "http://r:1/base/ping"
        );
        assert_eq!(
            client("http://r:1")
                .url(&["registry", "send", "a/b c"])
                .as_str(),
            "http://r:1/registry/send/a%2Fb%20c"
        );
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let c = RegistryClient::new(
            parse_registry_url("http://r:1").expect("valid"),
            "secret-token",
        )
        .expect("client");
        assert!(!format!("{c:?}").contains("secret-token"));
    }
}
