//! HTTP helpers: raw requests that return the parsed envelope, and typed helpers that set the scene.

use std::net::SocketAddr;

use futures_util::StreamExt;
use proto::api::{
    CreateGroupReply, HistoryReply, JoinRequestView, JoinRequestsReply, JoinedRoomsReply,
    LoginReply, MembersReply, MembershipReply, MessageView, Role, RoomView, SendMessageReply,
    UserView,
};
use proto::{MessageId, RoomId, Seq, UserId};
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::names::unique_username;

/// Each member's role and group nickname, by user id.
pub type Roster = std::collections::BTreeMap<UserId, (Role, Option<String>)>;
use crate::{PASSWORD, WAIT};

/// Substrings that must never reach a client: driver, database and panic text.
pub const LEAKS: [&str; 3] = ["sqlx", "SQLITE", "panicked"];

/// One of the four services of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Meta,
    Send,
    Gateway,
    Registry,
}

impl Service {
    pub const ALL: [Self; 4] = [Self::Meta, Self::Send, Self::Gateway, Self::Registry];
}

/// Where each service of the current run listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    pub meta: SocketAddr,
    pub send: SocketAddr,
    pub gateway: SocketAddr,
    pub registry: SocketAddr,
}

impl Addrs {
    pub fn of(&self, service: Service) -> SocketAddr {
        match service {
            Service::Meta => self.meta,
            Service::Send => self.send,
            Service::Gateway => self.gateway,
            Service::Registry => self.registry,
        }
    }

    /// `http://{addr}{path}`; `path` starts with `/` and may carry a query string.
    pub fn url(&self, service: Service, path: &str) -> String {
        format!("http://{}{path}", self.of(service))
    }
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    None,
    /// Serialized with `Content-Type: application/json`.
    Json(Value),
    /// Sent as is, with the given content type (or none).
    Raw {
        content_type: Option<String>,
        bytes: Vec<u8>,
    },
}

impl Body {
    /// `bytes` labelled `application/json` (for malformed or oversized JSON).
    pub fn json_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self::Raw {
            content_type: Some("application/json".to_owned()),
            bytes: bytes.into(),
        }
    }
}

/// A reply: the HTTP status, the raw text and the JSON envelope (`Value::Null` when the body is not
/// JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    /// The `Retry-After` header, in seconds, when there is one.
    pub retry_after: Option<u64>,
    pub text: String,
    pub json: Value,
}

impl Reply {
    /// The envelope's `data` (or `Value::Null`).
    pub fn data_value(&self) -> &Value {
        &self.json["data"]
    }

    /// The envelope's `error` name, if any.
    pub fn error_name(&self) -> Option<&str> {
        self.json["error"].as_str()
    }

    /// Asserts the success envelope (HTTP 200, `code` 200, `message` "success") and returns `data`.
    #[track_caller]
    pub fn assert_success(&self) -> &Value {
        assert!(
            self.status == 200
                && self.json["code"] == 200
                && self.json["message"] == "success"
                && self.json.get("data").is_some(),
            "expected the success envelope, got HTTP {}: {}",
            self.status,
            self.text
        );
        self.data_value()
    }

    /// Asserts the success envelope and parses `data` as `T`.
    #[track_caller]
    pub fn data<T: DeserializeOwned>(&self) -> T {
        let data = self.assert_success().clone();
        serde_json::from_value(data).unwrap_or_else(|e| {
            panic!(
                "data does not parse as {}: {e}; reply: {}",
                std::any::type_name::<T>(),
                self.text
            )
        })
    }

    /// Asserts the error envelope: HTTP `status`, `code` == `status`, a non-empty `message`, the
    /// stable `error` name, and no internal text anywhere in the body.
    #[track_caller]
    pub fn assert_error(&self, status: u16, error: &str) {
        assert_eq!(
            (self.status, self.error_name()),
            (status, Some(error)),
            "expected HTTP {status} `{error}`, got HTTP {}: {}",
            self.status,
            self.text
        );
        assert_eq!(
            self.json["code"], status,
            "code must equal the HTTP status: {}",
            self.text
        );
        assert!(
            self.json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "an error carries a message for people: {}",
            self.text
        );
        self.assert_no_leaks();
    }

    /// Asserts that no driver, database or panic text is in the body.
    #[track_caller]
    pub fn assert_no_leaks(&self) {
        for leak in LEAKS {
            assert!(
                !self.text.contains(leak),
                "the body leaks internal text ({leak}): {}",
                self.text
            );
        }
    }
}

/// A registered, logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: UserId,
    pub username: String,
    pub password: String,
    pub token: String,
}

/// The HTTP client for one run of a deployment.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    pub addrs: Addrs,
}

impl Client {
    pub fn new(addrs: Addrs) -> Self {
        let http = reqwest::Client::builder()
            .timeout(WAIT)
            .build()
            .expect("a plain-HTTP reqwest client always builds");
        Self { http, addrs }
    }

    /// A client whose connections come from `source` (a loopback address such as 127.0.0.2,
    /// which Linux routes without setup): another client address, for per-address limits.
    pub fn from_source(addrs: Addrs, source: std::net::IpAddr) -> Self {
        let http = reqwest::Client::builder()
            .timeout(WAIT)
            .local_address(source)
            .build()
            .expect("a plain-HTTP reqwest client always builds");
        Self { http, addrs }
    }

    pub fn url(&self, service: Service, path: &str) -> String {
        self.addrs.url(service, path)
    }

    /// Any request; the building block of every other helper. Panics only when the server cannot
    /// be reached or does not answer in time, which no test expects.
    pub async fn request(
        &self,
        method: Method,
        service: Service,
        path: &str,
        token: Option<&str>,
        body: Body,
    ) -> Reply {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let header = bearer.as_deref().map(|b| (AUTHORIZATION.as_str(), b));
        self.send_request(method, service, path, header, body).await
    }

    /// A request with one extra header (for example an `Authorization` of another scheme).
    pub async fn request_with_header(
        &self,
        method: Method,
        service: Service,
        path: &str,
        header: (&str, &str),
        body: Body,
    ) -> Reply {
        self.send_request(method, service, path, Some(header), body)
            .await
    }

    async fn send_request(
        &self,
        method: Method,
        service: Service,
        path: &str,
        header: Option<(&str, &str)>,
        body: Body,
    ) -> Reply {
        let url = self.url(service, path);
        let mut req = self.http.request(method.clone(), &url);
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Raw {
                content_type,
                bytes,
            } => {
                let req = match content_type {
                    Some(ct) => req.header(CONTENT_TYPE, ct),
                    None => req,
                };
                req.body(bytes)
            }
        };
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: no answer: {e}"));
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            content_type,
            retry_after,
            text,
            json,
        }
    }

    pub async fn get(&self, service: Service, path: &str, token: Option<&str>) -> Reply {
        self.request(Method::GET, service, path, token, Body::None)
            .await
    }

    pub async fn post_json(
        &self,
        service: Service,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Reply {
        self.request(Method::POST, service, path, token, Body::Json(body))
            .await
    }

    // ---- meta ----

    pub async fn register(&self, username: &str, password: &str, nickname: Option<&str>) -> Reply {
        let mut body = json!({"username": username, "password": password});
        if let Some(n) = nickname {
            body["nickname"] = json!(n);
        }
        self.post_json(Service::Meta, "/api/user/register", None, body)
            .await
    }

    pub async fn login(&self, username: &str, password: &str) -> Reply {
        self.post_json(
            Service::Meta,
            "/api/user/login",
            None,
            json!({"username": username, "password": password}),
        )
        .await
    }

    /// `POST /api/user/refresh`: spends `refresh_token` for a new pair.
    pub async fn refresh(&self, refresh_token: &str) -> Reply {
        self.post_json(
            Service::Meta,
            "/api/user/refresh",
            None,
            json!({ "refresh_token": refresh_token }),
        )
        .await
    }

    /// `POST /api/user/logout`: revokes the session `token` was issued for.
    pub async fn logout(&self, token: &str) -> Reply {
        self.request(
            Method::POST,
            Service::Meta,
            "/api/user/logout",
            Some(token),
            Body::None,
        )
        .await
    }

    pub async fn create_group(&self, token: &str, name: &str, member_ids: &[UserId]) -> Reply {
        self.post_json(
            Service::Meta,
            "/api/group/create",
            Some(token),
            json!({"name": name, "member_ids": member_ids}),
        )
        .await
    }

    pub async fn members(&self, token: &str, room_id: RoomId) -> Reply {
        self.get(
            Service::Meta,
            &format!("/api/group/{room_id}/members"),
            Some(token),
        )
        .await
    }

    /// `POST /api/group/{room_id}/members`.
    pub async fn add_members(&self, token: &str, room_id: RoomId, member_ids: &[UserId]) -> Reply {
        self.post_json(
            Service::Meta,
            &format!("/api/group/{room_id}/members"),
            Some(token),
            json!({ "member_ids": member_ids }),
        )
        .await
    }

    /// `DELETE /api/group/{room_id}/members/{user_id}`.
    pub async fn remove_member(&self, token: &str, room_id: RoomId, user_id: UserId) -> Reply {
        self.request(
            Method::DELETE,
            Service::Meta,
            &format!("/api/group/{room_id}/members/{user_id}"),
            Some(token),
            Body::None,
        )
        .await
    }

    /// `DELETE /api/group/{room_id}`: dissolve the group.
    pub async fn dissolve_group(&self, token: &str, room_id: RoomId) -> Reply {
        self.request(
            Method::DELETE,
            Service::Meta,
            &format!("/api/group/{room_id}"),
            Some(token),
            Body::None,
        )
        .await
    }

    /// `POST /api/group/{room_id}/leave`.
    pub async fn leave(&self, token: &str, room_id: RoomId) -> Reply {
        self.request(
            Method::POST,
            Service::Meta,
            &format!("/api/group/{room_id}/leave"),
            Some(token),
            Body::None,
        )
        .await
    }

    /// `PUT /api/group/{room_id}/members/{user_id}/role` with `role` as given.
    pub async fn change_role(
        &self,
        token: &str,
        room_id: RoomId,
        user_id: UserId,
        role: &str,
    ) -> Reply {
        self.request(
            Method::PUT,
            Service::Meta,
            &format!("/api/group/{room_id}/members/{user_id}/role"),
            Some(token),
            Body::Json(json!({ "role": role })),
        )
        .await
    }

    /// `PUT /api/group/{room_id}/nickname`.
    pub async fn set_group_nickname(
        &self,
        token: &str,
        room_id: RoomId,
        nickname: Option<&str>,
    ) -> Reply {
        self.request(
            Method::PUT,
            Service::Meta,
            &format!("/api/group/{room_id}/nickname"),
            Some(token),
            Body::Json(json!({ "nickname": nickname })),
        )
        .await
    }

    /// `GET /api/user/me`.
    pub async fn me(&self, token: &str) -> Reply {
        self.get(Service::Meta, "/api/user/me", Some(token)).await
    }

    /// `GET /api/user/{user_id}`.
    pub async fn profile(&self, token: &str, user_id: UserId) -> Reply {
        self.get(Service::Meta, &format!("/api/user/{user_id}"), Some(token))
            .await
    }

    /// `PUT /api/user/me` with the body as given.
    pub async fn update_profile(&self, token: &str, body: Value) -> Reply {
        self.request(
            Method::PUT,
            Service::Meta,
            "/api/user/me",
            Some(token),
            Body::Json(body),
        )
        .await
    }

    /// `PUT /api/user/password`.
    pub async fn change_password(&self, token: &str, old: &str, new: &str) -> Reply {
        self.request(
            Method::PUT,
            Service::Meta,
            "/api/user/password",
            Some(token),
            Body::Json(json!({ "old_password": old, "new_password": new })),
        )
        .await
    }

    /// `POST /api/group/{room_id}/transfer`.
    pub async fn transfer(&self, token: &str, room_id: RoomId, user_id: UserId) -> Reply {
        self.post_json(
            Service::Meta,
            &format!("/api/group/{room_id}/transfer"),
            Some(token),
            json!({ "user_id": user_id }),
        )
        .await
    }

    /// `PUT /api/group/{room_id}/name`.
    pub async fn rename_group(&self, token: &str, room_id: RoomId, name: &str) -> Reply {
        self.request(
            Method::PUT,
            Service::Meta,
            &format!("/api/group/{room_id}/name"),
            Some(token),
            Body::Json(json!({ "name": name })),
        )
        .await
    }

    /// `GET /api/group/search?{query}` with the query as given (already encoded).
    pub async fn search_groups(&self, token: &str, query: &str) -> Reply {
        self.get(
            Service::Meta,
            &format!("/api/group/search?{query}"),
            Some(token),
        )
        .await
    }

    /// `GET /api/user/search?{query}` with the query as given (already encoded).
    pub async fn search_users(&self, token: &str, query: &str) -> Reply {
        self.get(
            Service::Meta,
            &format!("/api/user/search?{query}"),
            Some(token),
        )
        .await
    }

    /// `PUT /api/group/{room_id}/open`.
    pub async fn set_open(&self, token: &str, room_id: RoomId, open: bool) -> Reply {
        self.request(
            Method::PUT,
            Service::Meta,
            &format!("/api/group/{room_id}/open"),
            Some(token),
            Body::Json(json!({ "open": open })),
        )
        .await
    }

    /// `POST /api/group/{room_id}/join`.
    pub async fn join(&self, token: &str, room_id: RoomId) -> Reply {
        self.request(
            Method::POST,
            Service::Meta,
            &format!("/api/group/{room_id}/join"),
            Some(token),
            Body::None,
        )
        .await
    }

    /// `POST /api/group/{room_id}/requests`.
    pub async fn request_to_join(&self, token: &str, room_id: RoomId, message: &str) -> Reply {
        self.post_json(
            Service::Meta,
            &format!("/api/group/{room_id}/requests"),
            Some(token),
            json!({ "message": message }),
        )
        .await
    }

    /// `GET /api/group/{room_id}/requests`.
    pub async fn join_requests(&self, token: &str, room_id: RoomId) -> Reply {
        self.get(
            Service::Meta,
            &format!("/api/group/{room_id}/requests"),
            Some(token),
        )
        .await
    }

    /// `POST /api/group/{room_id}/requests/{request_id}`.
    pub async fn decide_request(
        &self,
        token: &str,
        room_id: RoomId,
        request_id: i64,
        approve: bool,
    ) -> Reply {
        self.post_json(
            Service::Meta,
            &format!("/api/group/{room_id}/requests/{request_id}"),
            Some(token),
            json!({ "approve": approve }),
        )
        .await
    }

    /// `POST /api/room/direct`.
    pub async fn direct_room(&self, token: &str, user_id: UserId) -> Reply {
        self.post_json(
            Service::Meta,
            "/api/room/direct",
            Some(token),
            json!({ "user_id": user_id }),
        )
        .await
    }

    pub async fn joined_rooms(&self, token: &str) -> Reply {
        self.get(Service::Meta, "/api/joined_rooms", Some(token))
            .await
    }

    // ---- send ----

    /// `POST /api/chat/send_message` with any body.
    pub async fn send_message(&self, token: &str, body: Value) -> Reply {
        self.post_json(Service::Send, "/api/chat/send_message", Some(token), body)
            .await
    }

    /// A text message without `client_msg_id`.
    pub async fn send(&self, token: &str, room_id: RoomId, content: &str) -> Reply {
        self.send_message(token, json!({"room_id": room_id, "content": content}))
            .await
    }

    /// `POST /api/chat/resend_message`.
    pub async fn resend(&self, token: &str, message_id: MessageId) -> Reply {
        self.post_json(
            Service::Send,
            "/api/chat/resend_message",
            Some(token),
            json!({ "message_id": message_id }),
        )
        .await
    }

    /// `GET /api/chat/history?{query}` with the query as given.
    pub async fn history_query(&self, token: &str, query: &str) -> Reply {
        self.get(
            Service::Send,
            &format!("/api/chat/history?{query}"),
            Some(token),
        )
        .await
    }

    pub async fn history(
        &self,
        token: &str,
        room_id: RoomId,
        after_seq: Seq,
        limit: Option<u32>,
    ) -> Reply {
        let mut query = format!("room_id={room_id}&after_seq={after_seq}");
        if let Some(limit) = limit {
            query.push_str(&format!("&limit={limit}"));
        }
        self.history_query(token, &query).await
    }

    // ---- registry ----

    pub async fn gateway_available(&self, user_id: UserId) -> Reply {
        self.get(
            Service::Registry,
            &format!("/registry/gateway/available?user_id={user_id}"),
            None,
        )
        .await
    }

    pub async fn gateway_instances(&self) -> Reply {
        self.get(Service::Registry, "/registry/gateway/instances", None)
            .await
    }

    // ---- typed helpers that set the scene (they panic with the reply when refused) ----

    /// Registers `username` with [`PASSWORD`] and returns the new user.
    pub async fn register_ok(&self, username: &str) -> UserView {
        self.register(username, PASSWORD, None).await.data()
    }

    pub async fn login_ok(&self, username: &str, password: &str) -> LoginReply {
        self.login(username, password).await.data()
    }

    /// Registers a user named after `prefix` (made unique) and logs them in.
    pub async fn register_and_login(&self, prefix: &str) -> TestUser {
        let username = unique_username(prefix);
        let user = self.register_ok(&username).await;
        let login = self.login_ok(&username, PASSWORD).await;
        assert_eq!(
            login.user_id, user.user_id,
            "login returns the registered user's id"
        );
        TestUser {
            id: user.user_id,
            username,
            password: PASSWORD.to_owned(),
            token: login.token,
        }
    }

    /// [`Client::register_and_login`] for each prefix, concurrently.
    pub async fn register_users(&self, prefixes: &[&str]) -> Vec<TestUser> {
        // At most 64 at once: each request in flight is a socket from this one address, and a
        // few hundred at once would pass the listeners' per-address cap
        // (`http.max_connections_per_ip`, 256), which refuses the rest.
        // The futures made first: a stream over a closure would make callers' spawned futures
        // fail the `Send` check.
        let each: Vec<_> = prefixes
            .iter()
            .map(|p| self.register_and_login(p))
            .collect();
        futures_util::stream::iter(each)
            .buffered(64)
            .collect()
            .await
    }

    /// Creates a group owned by `owner` with `members` (the owner is added by the server).
    pub async fn create_group_ok(
        &self,
        owner: &TestUser,
        name: &str,
        members: &[&TestUser],
    ) -> CreateGroupReply {
        let ids: Vec<UserId> = members.iter().map(|u| u.id).collect();
        self.create_group(&owner.token, name, &ids).await.data()
    }

    /// Each member's role and group nickname, by user id, as `viewer` sees the room.
    pub async fn roster(&self, viewer: &TestUser, room: RoomId) -> Roster {
        let reply: MembersReply = self.members(&viewer.token, room).await.data();
        assert_eq!(reply.room_id, room, "members answers for the room asked");
        reply
            .members
            .into_iter()
            .map(|m| (m.user_id, (m.role, m.group_nickname)))
            .collect()
    }

    /// The room as `viewer` sees it in their joined rooms, or `None` when they are not in it.
    pub async fn joined_view(&self, viewer: &TestUser, room: RoomId) -> Option<RoomView> {
        let joined: JoinedRoomsReply = self.joined_rooms(&viewer.token).await.data();
        let listed = joined.room_ids.contains(&room);
        let view = joined.rooms.into_iter().find(|r| r.room_id == room);
        // The room's state only: the caller's own read_seq and unread count are set aside.
        let view = view.map(|r| RoomView {
            read_seq: None,
            unread: None,
            ..r
        });
        assert_eq!(
            listed,
            view.is_some(),
            "room_ids and rooms agree about room {room}"
        );
        view
    }

    /// The group's pending join requests, as `viewer` (its owner or an admin) sees them.
    pub async fn pending_requests(&self, viewer: &TestUser, room: RoomId) -> Vec<JoinRequestView> {
        let reply: JoinRequestsReply = self.join_requests(&viewer.token, room).await.data();
        assert_eq!(reply.room_id, room, "requests answers for the room asked");
        reply.requests
    }

    /// `owner` makes `user` an admin of `room` (setting the scene).
    pub async fn promote(&self, owner: &TestUser, room: RoomId, user: &TestUser) {
        let reply: MembershipReply = self
            .change_role(&owner.token, room, user.id, "admin")
            .await
            .data();
        assert_eq!((reply.user_id, reply.role), (user.id, Role::Admin));
    }

    pub async fn send_ok(
        &self,
        sender: &TestUser,
        room_id: RoomId,
        content: &str,
    ) -> SendMessageReply {
        self.send(&sender.token, room_id, content).await.data()
    }

    /// Every message of the room after `after_seq`, following `has_more` page by page (200 a page).
    pub async fn history_all(
        &self,
        reader: &TestUser,
        room_id: RoomId,
        after_seq: Seq,
    ) -> Vec<MessageView> {
        let mut out = Vec::new();
        let mut after = after_seq;
        loop {
            let page: HistoryReply = self
                .history(&reader.token, room_id, after, Some(200))
                .await
                .data();
            assert_eq!(page.room_id, room_id, "history answers for the room asked");
            let Some(last) = page.messages.last() else {
                assert!(!page.has_more, "an empty page cannot have more after it");
                break;
            };
            after = last.seq;
            out.extend(page.messages);
            if !page.has_more {
                break;
            }
        }
        out
    }
}
