//! The OpenAPI documents: each service serves one, with a browsable page; every route a service
//! answers is in its document, and everything in the document is a route that answers.

use std::collections::BTreeSet;
use std::path::Path;

use proto::error::ErrorCode;
use reqwest::Method;
use serde_json::Value;
use testkit::{Body, Service, TestApp};

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

async fn document(app: &TestApp, service: Service) -> Value {
    let reply = app.api.get(service, "/api/openapi.json", None).await;
    assert_eq!(reply.status, 200, "{service:?}: {}", reply.text);
    reply.json
}

/// Every (method, path template) a document describes.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths is an object");
    let mut ops = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if item.get(method).is_some() {
                ops.push((method.to_owned(), path.clone()));
            }
        }
    }
    ops
}

/// The template with every `{param}` filled: `7` for ids, `gw-1` for the registry's names.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{gateway_id}" | "{instance_id}" => "gw-1".to_owned(),
            s if s.starts_with('{') => "7".to_owned(),
            s => s.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_an_openapi_3_1_document_and_a_docs_page() {
    let app = TestApp::spawn().await;
    for service in Service::ALL {
        let doc = document(&app, service).await;
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "{service:?}: {}",
            doc["openapi"]
        );
        assert!(
            doc["info"]["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("RustStacker ")),
            "{service:?}"
        );
        for scheme in ["bearer", "internal_token"] {
            assert!(
                doc["components"]["securitySchemes"].get(scheme).is_some(),
                "{service:?}: no {scheme} scheme"
            );
        }
        let text = doc.to_string();
        for reference in text.split("\"$ref\":\"").skip(1) {
            let target = reference.split('"').next().unwrap_or_default();
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{service:?}: a $ref outside the schemas: {target}"));
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{service:?}: $ref {target} names no schema"
            );
        }
        let page = app.api.get(service, "/api/docs/", None).await;
        assert_eq!(page.status, 200, "{service:?}");
        assert!(
            page.text.contains("swagger-ui"),
            "{service:?}: {}",
            &page.text[..page.text.len().min(300)]
        );
    }
    // The WebSocket frames are documented as schemas on the gateway.
    let gateway = document(&app, Service::Gateway).await;
    for frame in ["ServerFrame", "ClientFrame", "Notice", "ChatPayload"] {
        assert!(
            gateway["components"]["schemas"].get(frame).is_some(),
            "no {frame} schema"
        );
    }
}

/// Each documented operation is a real route: asked with placeholder parameters and no body, it
/// answers with anything but the router's own `not_found`/`method_not_allowed` fallbacks. And
/// every answer's status is one the document lists for that operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_a_route_and_documents_what_it_answers() {
    let app = TestApp::spawn().await;
    let user = app.user("openapi").await;
    let mut seen = 0;
    for service in Service::ALL {
        let doc = document(&app, service).await;
        let ops = operations(&doc);
        assert!(!ops.is_empty(), "{service:?} documents nothing");
        for (method, template) in ops {
            let op = &doc["paths"][&template][&method];
            let path = concrete(&template);
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let reply = app
                .api
                .request(m, service, &path, Some(&user.token), Body::None)
                .await;
            let fallback = matches!(reply.error_name(), Some("not_found" | "method_not_allowed"));
            assert!(
                !fallback,
                "{service:?} {method} {path}: the document describes a route that does not exist: {}",
                reply.text
            );
            let status = reply.status.to_string();
            assert!(
                op["responses"].get(&status).is_some(),
                "{service:?} {method} {template}: answered {status}, which the document does not list: {}",
                reply.text
            );
            assert!(
                op["responses"].get("200").is_some() || op["responses"].get("101").is_some(),
                "{service:?} {method} {template}: no success response"
            );
            seen += 1;
        }
    }
    assert!(seen >= 45, "only {seen} operations documented");
}

/// The names a text quotes in backticks. Documents quote error names that way and nothing else
/// in error responses, so these are the errors a response description promises.
fn quoted(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

/// The error table is the one source of the documented `error` names: each document lists it
/// (for people and as `x-error-codes`), every name an error response describes is in it with that
/// response's status, and every name in it is answered by some documented operation (or by the
/// router, for paths and methods no operation has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_error_names_are_the_table_with_its_statuses() {
    let app = TestApp::spawn().await;
    let mut documented = BTreeSet::new();
    let mut wrong = Vec::new();
    for service in Service::ALL {
        let doc = document(&app, service).await;
        let listed = doc["x-error-codes"]
            .as_array()
            .unwrap_or_else(|| panic!("{service:?}: no x-error-codes"));
        let listed: Vec<(&str, u64)> = listed
            .iter()
            .map(|e| {
                (
                    e["error"].as_str().unwrap_or_default(),
                    e["status"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        let table: Vec<(&str, u64)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.name(), u64::from(c.status())))
            .collect();
        assert_eq!(listed, table, "{service:?}: x-error-codes is not the table");
        let description = doc["info"]["description"].as_str().unwrap_or_default();
        for code in ErrorCode::ALL {
            let line = format!("`{}` ({}): {}.", code.name(), code.status(), code.meaning());
            assert!(
                description.contains(&line),
                "{service:?}: the description does not list {line}"
            );
        }

        for (method, template) in operations(&doc) {
            let responses = doc["paths"][&template][&method]["responses"]
                .as_object()
                .expect("responses is an object");
            for (status, response) in responses {
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                if schema != "#/components/schemas/ErrorReply" {
                    continue;
                }
                let text = response["description"].as_str().unwrap_or_default();
                let at = format!("{service:?} {method} {template} {status}");
                if quoted(text).next().is_none() {
                    wrong.push(format!("{at}: names no error: {text:?}"));
                }
                for name in quoted(text) {
                    match ErrorCode::from_name(name) {
                        None => wrong.push(format!("{at}: `{name}` is not in the table: {text:?}")),
                        Some(code) if code.status().to_string() != *status => wrong.push(format!(
                            "{at}: `{name}` is a {} error: {text:?}",
                            code.status()
                        )),
                        Some(_) => {
                            documented.insert(name.to_owned());
                        }
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let undocumented: Vec<&str> = ErrorCode::ALL
        .iter()
        .filter(|c| {
            !kit::openapi::ROUTER_ERRORS.contains(c) && !kit::openapi::CONNECTION_ERRORS.contains(c)
        })
        .map(|c| c.name())
        .filter(|name| !documented.contains(*name))
        .collect();
    assert!(
        undocumented.is_empty(),
        "in the error table but answered by no documented operation: {undocumented:?}"
    );
}

/// Routes exist only through `utoipa_axum::routes!`, which documents them as it adds them: any
/// `.route(` call in a service (which would add an undocumented route) fails this test.
#[test]
fn no_route_is_added_past_the_document() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut offenders = BTreeSet::new();
    for krate in ["kit", "meta", "send", "registry", "gateway", "server"] {
        let src = crates.join(krate).join("src");
        let mut stack = vec![src];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read src dir").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).expect("read source");
                    for (i, line) in text.lines().enumerate() {
                        let code = line.split("//").next().unwrap_or_default();
                        if code.contains(".route(")
                            || code.contains(".route_service(")
                            || code.contains(".nest(")
                        {
                            offenders.insert(format!("{}:{}", path.display(), i + 1));
                        }
                    }
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "routes added without documentation (use `.routes(routes!(handler))` with a \
         #[utoipa::path] on the handler): {offenders:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_body_that_is_not_an_object_is_invalid() {
    let app = TestApp::spawn().await;
    let user = app.user("arrays").await;
    let cases = [
        ("[null, null]", "invalid_body"),
        ("[\"x\"]", "invalid_body"),
        ("\"text\"", "invalid_body"),
        ("42", "invalid_body"),
        ("null", "invalid_body"),
        ("  ", "invalid_json"),
        ("[1, 2", "invalid_json"),
    ];
    for (body, error) in cases {
        app.api
            .request(
                Method::PUT,
                Service::Meta,
                "/api/user/me",
                Some(&user.token),
                Body::json_bytes(body),
            )
            .await
            .assert_error(400, error);
    }
}
