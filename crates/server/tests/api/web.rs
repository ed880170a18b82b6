//! The web chat page and what it needs from the server: Meta serves the page and its files, tells
//! it where Send and the registry are, and finds users by name; every service answers the page's
//! cross-origin calls (CORS) from Meta's origin and from no other by default.

use std::collections::BTreeSet;

use testkit::proto::UserId;
use testkit::proto::api::{SearchUsersReply, WebConfigReply};
use testkit::{Service, TestApp};

fn meta_origin(app: &TestApp) -> String {
    format!("http://127.0.0.1:{}", app.addrs().meta.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_serves_the_page_and_its_files_with_their_types() {
    let app = TestApp::spawn().await;
    let page = app.api.get(Service::Meta, "/", None).await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(
        page.content_type.as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert!(
        page.text
            .contains("<script type=\"module\" src=\"/web/app.js\""),
        "{}",
        page.text
    );
    for (file, ty, needle) in [
        (
            "index.html",
            "text/html; charset=utf-8",
            "id=\"login-form\"",
        ),
        (
            "app.js",
            "text/javascript; charset=utf-8",
            "from './index.js'",
        ),
        ("style.css", "text/css; charset=utf-8", "@media (max-width"),
        // The SDK the page imports, next to it.
        (
            "index.js",
            "text/javascript; charset=utf-8",
            "export { Client",
        ),
        (
            "client.js",
            "text/javascript; charset=utf-8",
            "/api/web/config",
        ),
    ] {
        let reply = app
            .api
            .get(Service::Meta, &format!("/web/{file}"), None)
            .await;
        assert_eq!(reply.status, 200, "{file}");
        assert_eq!(reply.content_type.as_deref(), Some(ty), "{file}");
        assert!(reply.text.contains(needle), "{file} lacks {needle}");
    }
    // The SDK's modules as they are in the repository.
    let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/js/src");
    for module in ["index.js", "client.js", "live.js"] {
        let reply = app
            .api
            .get(Service::Meta, &format!("/web/{module}"), None)
            .await;
        let on_disk = std::fs::read_to_string(sdk.join(module)).expect("the SDK's module");
        assert_eq!(reply.text, on_disk, "{module} differs from clients/js/src");
    }
    for unknown in ["missing.js", "..%2FCargo.toml", "app.js.map", "index.d.ts"] {
        app.api
            .get(Service::Meta, &format!("/web/{unknown}"), None)
            .await
            .assert_error(404, "file_not_found");
    }
    // Only Meta serves the page.
    let elsewhere = app.api.get(Service::Send, "/", None).await;
    elsewhere.assert_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_sent_with_a_policy_that_runs_no_inline_script() {
    let app = TestApp::spawn().await;
    let resp = reqwest::get(app.api.url(Service::Meta, "/"))
        .await
        .expect("an answer");
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_config_names_this_deployments_send_and_registry() {
    let app = TestApp::spawn().await;
    let cfg: WebConfigReply = app
        .api
        .get(Service::Meta, "/api/web/config", None)
        .await
        .data();
    let addrs = app.addrs();
    assert_eq!(
        cfg.send_url,
        format!("http://127.0.0.1:{}", addrs.send.port())
    );
    assert_eq!(
        cfg.registry_url,
        format!("http://127.0.0.1:{}", addrs.registry.port())
    );
    // The URLs work: the registry answers where to connect.
    let user = app.user("webcfg").await;
    let available = reqwest::get(format!(
        "{}/registry/gateway/available?user_id={}",
        cfg.registry_url, user.id
    ))
    .await
    .expect("an answer");
    assert_eq!(available.status(), 200);

    // Configured URLs are answered as they are, whatever host the page came from.
    let configured = TestApp::spawn_with(|cfg| {
        cfg.web.send_url = Some("http://chat.example:9081/".into());
        cfg.web.registry_url = Some("https://chat.example:9084".into());
    })
    .await;
    let cfg: WebConfigReply = configured
        .api
        .get(Service::Meta, "/api/web/config", None)
        .await
        .data();
    assert_eq!(cfg.send_url, "http://chat.example:9081");
    assert_eq!(cfg.registry_url, "https://chat.example:9084");
}

async fn preflight(app: &TestApp, service: Service, path: &str, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, app.api.url(service, path))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("an answer")
}

fn allowed(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_lets_metas_page_call_it_and_no_other_origin_by_default() {
    let app = TestApp::spawn().await;
    let page = meta_origin(&app);
    let localhost = page.replace("127.0.0.1", "localhost");
    let paths = [
        (Service::Meta, "/api/group/create"),
        (Service::Send, "/api/chat/send_message"),
        (Service::Gateway, "/health"),
        (Service::Registry, "/registry/gateway/available"),
    ];
    for (service, path) in paths {
        for origin in [&page, &localhost] {
            let resp = preflight(&app, service, path, origin).await;
            assert!(resp.status().is_success(), "{service:?}: {}", resp.status());
            assert_eq!(
                allowed(&resp).as_deref(),
                Some(origin.as_str()),
                "{service:?}"
            );
            let headers = resp.headers()["access-control-allow-headers"]
                .to_str()
                .expect("ascii")
                .to_ascii_lowercase();
            assert!(
                headers.contains("authorization") && headers.contains("content-type"),
                "{service:?}: {headers}"
            );
        }
        let evil = preflight(&app, service, path, "http://evil.example").await;
        assert_eq!(
            allowed(&evil),
            None,
            "{service:?} lets another site read it"
        );
    }
    // The answers themselves carry the header, errors included, so the page can read them.
    let user = app.user("corsuser").await;
    let resp = reqwest::Client::new()
        .post(app.api.url(Service::Send, "/api/chat/send_message"))
        .header("origin", &page)
        .bearer_auth(&user.token)
        .json(&serde_json::json!({"room_id": 987_654_321, "content": "hi"}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(resp.status(), 404);
    assert_eq!(allowed(&resp).as_deref(), Some(page.as_str()));
    assert!(
        resp.headers()
            .get("access-control-allow-credentials")
            .is_none(),
        "no cookies, ever"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_cors_origins_replace_the_default() {
    let app = TestApp::spawn_with(|cfg| {
        cfg.http.cors_origins = Some(vec!["https://chat.example".into()]);
    })
    .await;
    let ok = preflight(
        &app,
        Service::Send,
        "/api/chat/send_message",
        "https://chat.example",
    )
    .await;
    assert_eq!(allowed(&ok).as_deref(), Some("https://chat.example"));
    let page = meta_origin(&app);
    let not_any_more = preflight(&app, Service::Send, "/api/chat/send_message", &page).await;
    assert_eq!(allowed(&not_any_more), None);
}

fn ids(page: &SearchUsersReply) -> Vec<UserId> {
    page.users.iter().map(|u| u.user_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_found_by_username_or_nickname_a_page_at_a_time() {
    let app = TestApp::spawn().await;
    let me = app.user("finder").await;
    let zed = app
        .api
        .register("websearch_zed", "password123", Some("Zebedee Quux"))
        .await
        .data::<testkit::proto::api::UserView>();
    let zoe = app
        .api
        .register("websearch_zoe", "password123", Some("Zoe"))
        .await
        .data::<testkit::proto::api::UserView>();
    let found: SearchUsersReply = app.api.search_users(&me.token, "q=WEBSEARCH_").await.data();
    assert_eq!(ids(&found), vec![zed.user_id, zoe.user_id]);
    assert_eq!(found.next_after_id, None);
    let by_nick: SearchUsersReply = app.api.search_users(&me.token, "q=quux").await.data();
    assert_eq!(ids(&by_nick), vec![zed.user_id]);
    let fields: BTreeSet<&str> = found.users.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(fields, ["websearch_zed", "websearch_zoe"].into());
    let raw = app.api.search_users(&me.token, "q=quux").await;
    let keys: BTreeSet<String> = raw.data_value()["users"][0]
        .as_object()
        .expect("a profile")
        .keys()
        .cloned()
        .collect();
    let public: BTreeSet<String> = ["avatar", "created_at", "nickname", "user_id", "username"]
        .map(String::from)
        .into();
    assert_eq!(keys, public, "public fields only");

    let first: SearchUsersReply = app
        .api
        .search_users(&me.token, "q=websearch&limit=1")
        .await
        .data();
    assert_eq!(ids(&first), vec![zed.user_id]);
    let after = first.next_after_id.expect("a next page");
    let second: SearchUsersReply = app
        .api
        .search_users(&me.token, &format!("q=websearch&limit=1&after_id={after}"))
        .await
        .data();
    assert_eq!(ids(&second), vec![zoe.user_id]);
    assert_eq!(second.next_after_id, None);

    for bad in ["limit=0", "limit=101", "after_id=-1", "q=%07"] {
        app.api
            .search_users(&me.token, bad)
            .await
            .assert_error(400, "invalid_query");
    }
    let long = "x".repeat(65);
    app.api
        .search_users(&me.token, &format!("q={long}"))
        .await
        .assert_error(400, "invalid_query");
    app.api
        .get(Service::Meta, "/api/user/search?q=zed", None)
        .await
        .assert_error(401, "missing_token");
}
