//! Fuzz target: every HTTP request body type of the API (`proto::api`), as serde reads it and
//! as `kit`'s `Json` extractor (the one every handler uses) answers it. Arbitrary JSON never
//! panics and what parses round-trips; every value the type's OpenAPI schema admits parses (so
//! Schemathesis and clients can trust the documents); arbitrary bytes and content types get
//! either the body or a refusal in the JSON envelope.

use axum::extract::FromRequest;
use axum::response::IntoResponse;
use proptest::prelude::*;
use proto::api::*;
use proto::error::ErrorCode;
use serde_json::{Map, Value};
use utoipa::{PartialSchema, ToSchema};

/// A refusal: the response's status and body.
type Refusal = (u16, Vec<u8>);

/// One request body type, behind function pointers so that one loop checks them all.
struct Body {
    name: &'static str,
    /// Deserializes and serializes again (`None`: refused).
    parse: fn(Value) -> Option<Value>,
    /// Whether serde takes these bytes as the type (no `Value` in between: serde skips an
    /// unknown key's value without the nesting limit a `Value` has).
    takes: fn(&[u8]) -> bool,
    /// The type's schema and the schemas it refers to, as JSON.
    schema: fn() -> (Value, Map<String, Value>),
    /// `kit::envelope::Json` on a request with this body and content type: `Ok(())` with the
    /// body taken, else the response's status and body.
    extract: fn(Vec<u8>, Option<String>) -> Result<(), Refusal>,
}

fn parse<T: serde::de::DeserializeOwned + serde::Serialize>(v: Value) -> Option<Value> {
    let t = serde_json::from_value::<T>(v).ok()?;
    Some(serde_json::to_value(t).expect("request bodies serialize"))
}

fn takes<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> bool {
    serde_json::from_slice::<T>(bytes).is_ok()
}

fn schema<T: ToSchema>() -> (Value, Map<String, Value>) {
    let mut deps = Vec::new();
    T::schemas(&mut deps);
    let components = deps
        .into_iter()
        .map(|(name, s)| (name, serde_json::to_value(s).expect("schemas serialize")))
        .collect();
    (
        serde_json::to_value(<T as PartialSchema>::schema()).expect("schemas serialize"),
        components,
    )
}

fn extract<T: serde::de::DeserializeOwned + Send>(
    body: Vec<u8>,
    content_type: Option<String>,
) -> Result<(), Refusal> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let mut req = axum::http::Request::post("/");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let req = req.body(axum::body::Body::from(body)).expect("a request");
        match kit::envelope::Json::<T>::from_request(req, &()).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let resp = e.into_response();
                let status = resp.status().as_u16();
                let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                    .await
                    .expect("an error body");
                Err((status, bytes.to_vec()))
            }
        }
    })
}

macro_rules! bodies {
    ($($t:ty),+ $(,)?) => {
        vec![$(Body {
            name: stringify!($t),
            parse: parse::<$t>,
            takes: takes::<$t>,
            schema: schema::<$t>,
            extract: extract::<$t>,
        }),+]
    };
}

fn all() -> Vec<Body> {
    bodies![
        RegisterRequest,
        LoginRequest,
        UpdateProfileRequest,
        ChangePasswordRequest,
        CreateGroupRequest,
        AddMembersRequest,
        ChangeRoleRequest,
        GroupNicknameRequest,
        SetOpenRequest,
        JoinRequestBody,
        DecideRequest,
        TransferRequest,
        RenameGroupRequest,
        DirectRoomRequest,
        SendMessageRequest,
        ResendMessageRequest,
        RegisterGatewayRequest,
        GatewayHeartbeatRequest,
        RegisterSendRequest,
        SendHeartbeatRequest,
        UserRouteRequest,
        RefreshRoutesRequest,
        RoutesBatchRequest,
    ]
}

/// The keys a body's schema names.
fn keys(schema: &Value) -> Vec<String> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// Near misses of `body`: its own keys with values of any type.
fn near_misses(body: &Body) -> impl Strategy<Value = Value> {
    let (schema, _) = (body.schema)();
    fuzz::object_with(keys(&schema), fuzz::json_value())
}

/// A value that parsed once serializes to a value that parses to itself.
fn round_trips(body: &Body, v: Value) -> Result<(), TestCaseError> {
    if let Some(once) = (body.parse)(v) {
        let twice = (body.parse)(once.clone());
        prop_assert_eq!(
            twice.as_ref(),
            Some(&once),
            "{} does not round-trip",
            body.name
        );
    }
    Ok(())
}

#[test]
fn arbitrary_json_never_panics_and_what_parses_round_trips() {
    for body in all() {
        let any = prop_oneof![near_misses(&body), fuzz::json_value()];
        fuzz::check(fuzz::config(), file!(), any, |v| round_trips(&body, v));
    }
}

#[test]
fn every_value_the_document_admits_parses_and_round_trips() {
    for body in all() {
        let (schema, components) = (body.schema)();
        let admitted = fuzz::from_schema(&schema, &components);
        fuzz::check(fuzz::config(), file!(), admitted, |v| {
            prop_assert!(
                (body.parse)(v.clone()).is_some(),
                "{} refuses {} although its schema admits it: {}",
                body.name,
                v,
                schema
            );
            round_trips(&body, v)
        });
    }
}

/// A required key left out is refused, so the document's `required` is what the server needs.
#[test]
fn a_required_key_left_out_is_refused() {
    for body in all() {
        let (schema, components) = (body.schema)();
        let required: Vec<String> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if required.is_empty() {
            continue;
        }
        let admitted = fuzz::from_schema(&schema, &components);
        let drop = prop::sample::select(required);
        fuzz::check(
            fuzz::config_scaled(4),
            file!(),
            (admitted, drop),
            |(mut v, key)| {
                v.as_object_mut().expect("an object").remove(&key);
                prop_assert!(
                    (body.parse)(v.clone()).is_none(),
                    "{} takes {} without its required {:?}",
                    body.name,
                    v,
                    key
                );
                Ok(())
            },
        );
    }
}

/// Content types a client sends: JSON in its spellings, other types, none, and garbage.
fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/problem+json",
            "application/+json",
            "application/json+",
            "text/plain",
            "json",
            "",
            "application/x-www-form-urlencoded",
        ])
        .prop_map(|s| Some(s.to_owned())),
        1 => Just(None),
        1 => "[ -~]{0,40}".prop_map(Some),
    ]
}

fn is_plain_json(ct: Option<&str>) -> bool {
    matches!(
        ct,
        Some("application/json" | "application/json; charset=utf-8" | "Application/JSON")
    )
}

/// The extractor takes a body exactly when serde takes it (an object, with a JSON content
/// type), and refuses anything else with 400, 413 or 415 in the envelope, the `error` name
/// matching the status.
#[test]
fn the_extractor_takes_what_serde_takes_and_refuses_the_rest_in_the_envelope() {
    for body in all() {
        let (schema, components) = (body.schema)();
        let bytes = prop_oneof![
            2 => fuzz::json_bytes(),
            1 => near_misses(&body).prop_map(|v| v.to_string().into_bytes()),
            1 => fuzz::from_schema(&schema, &components).prop_map(|v| v.to_string().into_bytes()),
        ];
        fuzz::check(
            fuzz::config_scaled(2),
            file!(),
            (bytes, content_type()),
            |(bytes, ct)| {
                let plain = is_plain_json(ct.as_deref());
                let object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
                let serde_takes = (body.takes)(&bytes);
                match (body.extract)(bytes.clone(), ct.clone()) {
                    Ok(()) => prop_assert!(serde_takes && object, "{} took {:?}", body.name, ct),
                    Err((status, reply)) => {
                        prop_assert!(
                            !(plain && object && serde_takes),
                            "{} refused a good body",
                            body.name
                        );
                        let v: Value = serde_json::from_slice(&reply).map_err(|e| {
                            TestCaseError::fail(format!("a refusal that is not JSON: {e}"))
                        })?;
                        let name = v["error"].as_str().unwrap_or_default();
                        let want: &[ErrorCode] = match status {
                            400 => &[ErrorCode::InvalidJson, ErrorCode::InvalidBody],
                            413 => &[ErrorCode::BodyTooLarge],
                            415 => &[ErrorCode::UnsupportedMediaType],
                            other => {
                                return Err(TestCaseError::fail(format!("status {other}: {v}")));
                            }
                        };
                        prop_assert!(
                            want.iter().any(|c| c.name() == name),
                            "{} answers {}",
                            status,
                            v
                        );
                        prop_assert_eq!(&v["code"], &Value::from(status));
                        prop_assert_eq!(&v["data"], &Value::Null);
                        prop_assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
                        if plain && status == 415 {
                            return Err(TestCaseError::fail(format!("415 for {ct:?}")));
                        }
                    }
                }
                Ok(())
            },
        );
    }
}
