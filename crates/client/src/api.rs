//! The HTTP side: where each service is ([`Endpoints`]) and the calls the client makes ([`Api`]),
//! each returning the envelope's `data` parsed into the `proto` type or a [`ClientError`] made
//! from the status and the stable error name.
//!
//! The session renews itself: a call made within [`RENEW_AHEAD`] of the access token's expiry
//! (or within half its lifetime, for tokens living shorter) first spends the refresh token for a new pair (`POST /api/user/refresh`), and a call answered
//! 401 is made once more after a refresh. Refreshes are serialized (one refresh token must never
//! be spent twice: that revokes the session), and a task that waited for another's refresh uses
//! its result. Only a refused refresh reaches the caller, as [`ClientError::Auth`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use proto::api::{
    CreateGroupReply, DirectRoomReply, GatewayView, HistoryReply, JoinedRoomsReply, LoginReply,
    MembersReply, MessageView, RoomView, SearchUsersReply, SendMessageReply, SendView, UserView,
    WebConfigReply,
};
use proto::{RoomId, Seq, UserId};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{ClientError, Result};

/// Meta's default port; Send's and the registry's defaults are on the same host.
const SEND_PORT: u16 = 8081;
const REGISTRY_PORT: u16 = 8084;
/// A whole request, reply included; a gateway lookup or a send answers in milliseconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long before the access token's expiry a call renews it first.
pub const RENEW_AHEAD: Duration = Duration::from_secs(60);

/// The base URLs of the services the client talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Meta: users, log-in, rooms and groups.
    pub meta: Url,
    /// Send: sending and history.
    pub send: Url,
    /// The registry: gateway placement and live Send instances.
    pub registry: Url,
}

impl Endpoints {
    /// Meta at `server`; Send and the registry at the given URLs, or else on Meta's host at
    /// ports 8081 and 8084 (the seed's layout).
    pub fn new(server: &str, send: Option<&str>, registry: Option<&str>) -> Result<Self> {
        let meta = parse_base(server, "--server")?;
        let beside = |port: u16| {
            let mut u = meta.clone();
            // A URL with a host always takes a port; `parse_base` refused the others.
            let _ = u.set_port(Some(port));
            u
        };
        Ok(Self {
            send: match send {
                Some(s) => parse_base(s, "--send-url")?,
                None => beside(SEND_PORT),
            },
            registry: match registry {
                Some(r) => parse_base(r, "--registry-url")?,
                None => beside(REGISTRY_PORT),
            },
            meta,
        })
    }
}

fn parse_base(s: &str, flag: &str) -> Result<Url> {
    let url = Url::parse(s).map_err(|e| ClientError::Usage(format!("{flag} {s:?}: {e}")))?;
    if url.scheme() != "http" || url.host_str().is_none() {
        return Err(ClientError::Usage(format!(
            "{flag} {s:?}: expected http://HOST[:PORT] (this build has no TLS client)"
        )));
    }
    Ok(url)
}

/// Which service a call goes to, for URLs and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Meta,
    Send,
    Registry,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Self::Meta => "meta",
            Self::Send => "send",
            Self::Registry => "registry",
        }
    }
}

/// The tokens of a logged-in session.
#[derive(Clone)]
struct Tokens {
    access: String,
    /// When the access token is due for renewal (Unix ms): [`RENEW_AHEAD`] before its expiry, or
    /// half its remaining life when that is shorter; 0 when the server's time was unreadable,
    /// which makes every call renew first rather than fail.
    renew_at_ms: i64,
    refresh: String,
}

impl Tokens {
    fn from_reply(r: &LoginReply) -> Self {
        let expires_at_ms =
            chrono::DateTime::parse_from_rfc3339(&r.expires_at).map_or(0, |t| t.timestamp_millis());
        let left = expires_at_ms - chrono::Utc::now().timestamp_millis();
        let ahead = i64::try_from(RENEW_AHEAD.as_millis())
            .unwrap_or(i64::MAX)
            .min(left.max(0) / 2);
        Self {
            access: r.token.clone(),
            renew_at_ms: expires_at_ms - ahead,
            refresh: r.refresh_token.clone(),
        }
    }

    fn due(&self) -> bool {
        chrono::Utc::now().timestamp_millis() >= self.renew_at_ms
    }
}

/// The session, shared by every clone of an [`Api`] (the live connection's included).
#[derive(Default)]
struct Session {
    tokens: Mutex<Option<Tokens>>,
    /// Held while a refresh is in flight, so one refresh token is spent once.
    renewing: tokio::sync::Mutex<()>,
}

/// An API client; after [`Api::login`] it carries the session's tokens (never printed: it has
/// no `Debug` output beyond the endpoints), renewed as the module docs say.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    endpoints: Endpoints,
    session: Arc<Session>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("endpoints", &self.endpoints)
            .field("logged_in", &self.tokens().is_some())
            .finish()
    }
}

impl Api {
    /// A client of `endpoints`, not logged in yet.
    pub fn new(endpoints: Endpoints) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| ClientError::Other(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            endpoints,
            session: Arc::default(),
        })
    }

    fn tokens(&self) -> Option<Tokens> {
        self.session
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn keep(&self, reply: &LoginReply) {
        *self
            .session
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Tokens::from_reply(reply));
    }

    /// An access token for the WebSocket handshake, renewed first when it is about to expire;
    /// `None` when not logged in.
    pub(crate) async fn fresh_token(&self) -> Result<Option<String>> {
        match self.tokens() {
            Some(t) if t.due() => self.renew(&t.access).await.map(Some),
            Some(t) => Ok(Some(t.access)),
            None => Ok(None),
        }
    }

    /// Spends the refresh token for a new pair, unless the access token is no longer `stale`
    /// (another task renewed it meanwhile). Answers the current access token.
    pub(crate) async fn renew(&self, stale: &str) -> Result<String> {
        let _one_at_a_time = self.session.renewing.lock().await;
        let Some(current) = self.tokens() else {
            return Err(ClientError::Auth("not logged in".into()));
        };
        if current.access != stale {
            return Ok(current.access);
        }
        let body = json!({"refresh_token": current.refresh});
        let reply: LoginReply = self
            .call_once(
                Service::Meta,
                Method::POST,
                "/api/user/refresh",
                Some(body),
                None,
            )
            .await?;
        self.keep(&reply);
        Ok(reply.token)
    }

    /// Asks Meta where Send and the registry are (`GET /api/web/config`, what the web page
    /// reads) and uses its answer for each of them the command line did not name; keeps the
    /// defaults (Meta's host, ports 8081 and 8084) when Meta does not answer it.
    pub async fn discover_services(&mut self, send_given: bool, registry_given: bool) {
        if send_given && registry_given {
            return;
        }
        let Ok(config) = self
            .call::<WebConfigReply>(Service::Meta, Method::GET, "/api/web/config", None)
            .await
        else {
            return;
        };
        if !send_given && let Ok(url) = parse_base(&config.send_url, "Meta's Send URL") {
            self.endpoints.send = url;
        }
        if !registry_given && let Ok(url) = parse_base(&config.registry_url, "Meta's registry URL")
        {
            self.endpoints.registry = url;
        }
    }

    /// Asks the registry for a live Send instance and uses it from now on; keeps the configured
    /// URL when the registry has none or cannot be reached (in `all` they are the same).
    pub async fn discover_send(&mut self) {
        let picked: Result<SendView> = self
            .call(
                Service::Registry,
                Method::GET,
                "/registry/send/available",
                None,
            )
            .await;
        if let Ok(view) = picked
            && let Ok(url) = parse_base(&view.url, "the registry's Send URL")
        {
            self.endpoints.send = url;
        }
    }

    /// Logs in and keeps the session's tokens.
    pub async fn login(&mut self, username: &str, password: &str) -> Result<LoginReply> {
        let body = json!({"username": username, "password": password});
        let reply: LoginReply = self
            .call_once(
                Service::Meta,
                Method::POST,
                "/api/user/login",
                Some(body),
                None,
            )
            .await?;
        self.keep(&reply);
        Ok(reply)
    }

    /// Registers a user; `Ok(None)` when the username is taken (409).
    pub async fn register(
        &self,
        username: &str,
        password: &str,
        nickname: Option<&str>,
    ) -> Result<Option<UserView>> {
        let body = json!({"username": username, "password": password, "nickname": nickname});
        match self
            .call(
                Service::Meta,
                Method::POST,
                "/api/user/register",
                Some(body),
            )
            .await
        {
            Ok(user) => Ok(Some(user)),
            Err(ClientError::Server { status: 409, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// My rooms (`GET /api/joined_rooms`).
    pub async fn joined_rooms(&self) -> Result<Vec<RoomView>> {
        let reply: JoinedRoomsReply = self
            .call(Service::Meta, Method::GET, "/api/joined_rooms", None)
            .await?;
        Ok(reply.rooms)
    }

    /// A user's public profile.
    pub async fn user(&self, user_id: UserId) -> Result<UserView> {
        self.call(
            Service::Meta,
            Method::GET,
            &format!("/api/user/{user_id}"),
            None,
        )
        .await
    }

    /// A room's members (`GET /api/group/{room_id}/members`; one-to-one rooms answer too).
    pub async fn members(&self, room_id: RoomId) -> Result<MembersReply> {
        self.call(
            Service::Meta,
            Method::GET,
            &format!("/api/group/{room_id}/members"),
            None,
        )
        .await
    }

    /// The user whose username is `name` (ignoring ASCII case, as accounts compare), found with
    /// `GET /api/user/search` (it matches usernames and nicknames containing the text, a page
    /// at a time). `None` when no username is exactly `name` among the first pages' results.
    pub async fn user_named(&self, name: &str) -> Result<Option<UserView>> {
        /// Pages of 100 read before giving up on a very common name.
        const PAGES: usize = 5;
        let mut after_id = 0;
        for _ in 0..PAGES {
            let mut url = Url::parse("http://meta/api/user/search").expect("a valid URL");
            url.query_pairs_mut()
                .append_pair("q", name)
                .append_pair("after_id", &after_id.to_string())
                .append_pair("limit", "100");
            let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
            let page: SearchUsersReply = self.call(Service::Meta, Method::GET, &path, None).await?;
            if let Some(u) = page
                .users
                .into_iter()
                .find(|u| u.username.eq_ignore_ascii_case(name))
            {
                return Ok(Some(u));
            }
            match page.next_after_id {
                Some(next) => after_id = next,
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Joins an open group (`POST /api/group/{room_id}/join`).
    pub async fn join_open_group(&self, room_id: RoomId) -> Result<Value> {
        self.call(
            Service::Meta,
            Method::POST,
            &format!("/api/group/{room_id}/join"),
            None,
        )
        .await
    }

    /// The one-to-one room with `user_id` (made on first use).
    pub async fn direct_room(&self, user_id: UserId) -> Result<DirectRoomReply> {
        let body = json!({"user_id": user_id});
        self.call(Service::Meta, Method::POST, "/api/room/direct", Some(body))
            .await
    }

    /// A new group of mine with `member_ids`.
    pub async fn create_group(
        &self,
        name: &str,
        member_ids: &[UserId],
    ) -> Result<CreateGroupReply> {
        let body = json!({"name": name, "member_ids": member_ids});
        self.call(Service::Meta, Method::POST, "/api/group/create", Some(body))
            .await
    }

    /// Sends `content` to `room_id` with an idempotency key; answers once it is stored.
    pub async fn send_message(
        &self,
        room_id: RoomId,
        content: &str,
        client_msg_id: &str,
    ) -> Result<SendMessageReply> {
        let body = json!({"room_id": room_id, "content": content, "client_msg_id": client_msg_id});
        self.call(
            Service::Send,
            Method::POST,
            "/api/chat/send_message",
            Some(body),
        )
        .await
    }

    /// Up to `limit` messages of `room_id` after `after_seq`, in `seq` order, and whether more
    /// follow.
    pub async fn history(
        &self,
        room_id: RoomId,
        after_seq: Seq,
        limit: u32,
    ) -> Result<(Vec<MessageView>, bool)> {
        let path =
            format!("/api/chat/history?room_id={room_id}&after_seq={after_seq}&limit={limit}");
        let reply: HistoryReply = self.call(Service::Send, Method::GET, &path, None).await?;
        Ok((reply.messages, reply.has_more))
    }

    /// The gateway the registry places `user_id` on, other than the `excluded` ones (gateways
    /// this client just lost or could not reach).
    pub async fn gateway_for(&self, user_id: UserId, excluded: &[String]) -> Result<GatewayView> {
        let mut path = format!("/registry/gateway/available?user_id={user_id}");
        if !excluded.is_empty() {
            // Gateway ids are letters, digits, '-', '_' and '.': nothing to escape.
            path.push_str("&exclude=");
            path.push_str(&excluded.join(","));
        }
        self.call(Service::Registry, Method::GET, &path, None).await
    }

    /// One call with the session's token, renewed first when due and once more after a 401.
    async fn call<T: DeserializeOwned>(
        &self,
        service: Service,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T> {
        let Some(mut token) = self.tokens() else {
            return self.call_once(service, method, path, body, None).await;
        };
        if token.due() {
            token.access = self.renew(&token.access).await?;
        }
        let first = self
            .call_once(
                service,
                method.clone(),
                path,
                body.clone(),
                Some(&token.access),
            )
            .await;
        match first {
            Err(ClientError::Auth(_)) => {
                let access = self.renew(&token.access).await?;
                self.call_once(service, method, path, body, Some(&access))
                    .await
            }
            done => done,
        }
    }

    async fn call_once<T: DeserializeOwned>(
        &self,
        service: Service,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Result<T> {
        let base = match service {
            Service::Meta => &self.endpoints.meta,
            Service::Send => &self.endpoints.send,
            Service::Registry => &self.endpoints.registry,
        };
        let url = format!("{}{path}", base.as_str().trim_end_matches('/'));
        let mut req = self.http.request(method, &url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        // The URL in errors is the base only: paths carry no secret, but keep lines short.
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                ClientError::Timeout(format!(
                    "{} at {base} did not answer within {}s",
                    service.name(),
                    REQUEST_TIMEOUT.as_secs()
                ))
            } else {
                ClientError::Unreachable {
                    service: service.name(),
                    url: base.to_string(),
                    cause: root_cause(&e),
                }
            }
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let text = resp.text().await.map_err(transport)?;
        decode(service, status, &text)
    }
}

/// The innermost cause of a transport error ("Connection refused (os error 111)"), which is
/// what a person needs; reqwest's outer layers only say "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The envelope's `data` as `T`, or the error the status and the `error` name stand for.
fn decode<T: DeserializeOwned>(service: Service, status: StatusCode, text: &str) -> Result<T> {
    let envelope: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    if status.is_success() {
        return serde_json::from_value(envelope["data"].clone()).map_err(|e| {
            ClientError::Other(format!(
                "{} answered a reply this client does not understand: {e}",
                service.name()
            ))
        });
    }
    let name = envelope["error"].as_str().unwrap_or("error").to_owned();
    let message = envelope["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
    Err(match status.as_u16() {
        401 => ClientError::Auth(format!("{name}: {message}")),
        403 | 404 => ClientError::NotFound(format!("{name}: {message}")),
        code => ClientError::Server {
            service: service.name(),
            status: code,
            name,
            message,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_and_registry_default_to_the_servers_host_on_the_seeds_ports() {
        let e = Endpoints::new("http://10.1.2.3:9000", None, None).expect("valid");
        assert_eq!(e.meta.as_str(), "http://10.1.2.3:9000/");
        assert_eq!(e.send.as_str(), "http://10.1.2.3:8081/");
        assert_eq!(e.registry.as_str(), "http://10.1.2.3:8084/");
        let e = Endpoints::new("http://localhost", Some("http://s:1"), Some("http://r:2"))
            .expect("valid");
        assert_eq!(
            (e.send.as_str(), e.registry.as_str()),
            ("http://s:1/", "http://r:2/")
        );
    }

    #[test]
    fn only_plain_http_base_urls_are_accepted() {
        for bad in ["localhost:8080", "https://x", "ftp://x", "http://"] {
            assert!(
                matches!(Endpoints::new(bad, None, None), Err(ClientError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn statuses_become_the_errors_scripts_branch_on() {
        let err = |status: u16, body: &str| {
            decode::<Value>(
                Service::Send,
                StatusCode::from_u16(status).expect("status"),
                body,
            )
            .expect_err("an error status")
        };
        let body = r#"{"code":404,"message":"no such room","error":"room_not_found"}"#;
        assert!(
            matches!(err(404, body), ClientError::NotFound(m) if m == "room_not_found: no such room")
        );
        assert!(matches!(err(403, "{}"), ClientError::NotFound(_)));
        assert!(matches!(err(401, "{}"), ClientError::Auth(_)));
        assert!(matches!(
            err(503, "not json"),
            ClientError::Server { status: 503, .. }
        ));
        let ok: Value = decode(
            Service::Meta,
            StatusCode::OK,
            r#"{"code":200,"data":{"a":1}}"#,
        )
        .expect("success");
        assert_eq!(ok, json!({"a": 1}));
    }
}
