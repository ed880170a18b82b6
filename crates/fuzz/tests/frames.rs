//! Fuzz target: the frames a WebSocket client sends. The parser (`ClientFrame`, as the gateway's
//! read loop calls it) is checked against a model of the protocol page, and a real gateway is
//! checked to close with 1007 on exactly the frames the parser refuses and to keep answering the
//! rest.

use proptest::prelude::*;
use proto::frame::ClientFrame;
use serde_json::Value;

/// What the protocol page allows: an object with `type` `ack` or `read` (integer `room_id` and
/// `seq`), `sync` (integer `room_id` and `after_seq`), `typing` (integer `room_id`) or `ping`, and
/// no other key.
fn model(v: &Value) -> Option<ClientFrame> {
    let obj = v.as_object()?;
    let int = |k: &str| obj.get(k).and_then(Value::as_i64);
    let (frame, keys): (ClientFrame, &[&str]) = match obj.get("type")?.as_str()? {
        "ack" => (
            ClientFrame::Ack {
                room_id: int("room_id")?,
                seq: int("seq")?,
            },
            &["room_id", "seq"],
        ),
        "sync" => (
            ClientFrame::Sync {
                room_id: int("room_id")?,
                after_seq: int("after_seq")?,
            },
            &["room_id", "after_seq"],
        ),
        "ping" => (ClientFrame::Ping {}, &[]),
        "read" => (
            ClientFrame::Read {
                room_id: int("room_id")?,
                seq: int("seq")?,
            },
            &["room_id", "seq"],
        ),
        "typing" => (
            ClientFrame::Typing {
                room_id: int("room_id")?,
            },
            &["room_id"],
        ),
        _ => return None,
    };
    obj.keys()
        .all(|k| k == "type" || keys.contains(&k.as_str()))
        .then_some(frame)
}

/// Near misses of real frames: a protocol word (or anything) as `type`, the keys of one of the
/// frames (or any subset of them, or one more), with integers at the edges, floats, strings and
/// nested values.
fn frame_like() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        8 => prop::sample::select(vec![
            "ack", "sync", "ping", "read", "typing", "Ack", "chat", "pong", "Read", ""
        ])
            .prop_map(|s| Value::String(s.to_owned())),
        1 => fuzz::json_value(),
    ];
    let keys = prop_oneof![
        2 => Just(vec![]),
        2 => Just(vec!["room_id", "seq"]),
        2 => Just(vec!["room_id", "after_seq"]),
        2 => Just(vec!["room_id"]),
        2 => prop::sample::subsequence(vec!["room_id", "seq", "after_seq"], 0..=3),
    ];
    let value = prop_oneof![
        4 => fuzz::number().prop_map(Value::Number),
        1 => fuzz::json_value(),
    ];
    (
        prop::option::weighted(0.95, kind),
        keys.prop_flat_map(move |keys| {
            let n = keys.len();
            (Just(keys), prop::collection::vec(value.clone(), n))
        }),
        prop::option::weighted(0.1, ("[a-z_]{1,9}", fuzz::json_value())),
    )
        .prop_map(|(kind, (keys, values), extra)| {
            let mut m = serde_json::Map::new();
            if let Some(k) = kind {
                m.insert("type".to_owned(), k);
            }
            m.extend(keys.into_iter().map(str::to_owned).zip(values));
            m.extend(extra);
            Value::Object(m)
        })
}

fn any_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (fuzz::edge_i64(), fuzz::edge_i64())
            .prop_map(|(room_id, seq)| ClientFrame::Ack { room_id, seq }),
        (fuzz::edge_i64(), fuzz::edge_i64())
            .prop_map(|(room_id, after_seq)| ClientFrame::Sync { room_id, after_seq }),
        Just(ClientFrame::Ping {}),
        (fuzz::edge_i64(), fuzz::edge_i64())
            .prop_map(|(room_id, seq)| ClientFrame::Read { room_id, seq }),
        fuzz::edge_i64().prop_map(|room_id| ClientFrame::Typing { room_id }),
    ]
}

/// Texts a client may send: a frame-like value, any JSON, or bytes that are almost JSON.
fn client_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => frame_like().prop_map(|v| v.to_string()),
        1 => fuzz::json_value().prop_map(|v| v.to_string()),
        2 => fuzz::json_text(),
    ]
}

proptest! {
    #![proptest_config(fuzz::config())]

    #[test]
    fn the_parser_takes_exactly_the_frames_the_protocol_allows(v in frame_like()) {
        let parsed = serde_json::from_value::<ClientFrame>(v.clone()).ok();
        prop_assert_eq!(&parsed, &model(&v));
        // The text of the same value parses the same way.
        prop_assert_eq!(serde_json::from_str::<ClientFrame>(&v.to_string()).ok(), parsed);
    }

    #[test]
    fn any_json_value_parses_only_as_the_model_says(v in fuzz::json_value()) {
        prop_assert_eq!(serde_json::from_value::<ClientFrame>(v.clone()).ok(), model(&v));
    }

    #[test]
    fn bytes_never_panic_and_what_parses_is_a_valid_frame(bytes in fuzz::json_bytes()) {
        if let Ok(frame) = serde_json::from_slice::<ClientFrame>(&bytes) {
            let v: Value = serde_json::from_slice(&bytes).expect("a frame is JSON");
            prop_assert_eq!(model(&v), Some(frame));
        }
    }

    #[test]
    fn every_frame_round_trips(frame in any_frame()) {
        let text = serde_json::to_string(&frame).expect("frames serialize");
        prop_assert_eq!(model(&serde_json::from_str(&text).expect("json")), Some(frame.clone()));
        prop_assert_eq!(serde_json::from_str::<ClientFrame>(&text).expect("parses"), frame);
    }
}

/// The gateway's default `max_frame_bytes`: a longer text is refused (1009) before parsing.
const MAX_FRAME_BYTES: usize = 64 * 1024;

/// What one case sends over a socket.
#[derive(Debug, Clone)]
enum Sent {
    Text(String),
    Binary(Vec<u8>),
}

/// A real gateway, one socket per case: every frame the parser refuses ends the socket with 1007
/// (a binary frame with 1003), every `ping` is answered in order, and after frames that parse
/// (acks, syncs, reads and typing of rooms the user is in or not, with any `seq`) the socket still
/// answers.
#[test]
fn a_gateway_closes_on_exactly_the_frames_the_parser_refuses() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let (app, user, room) = rt.block_on(async {
        let app = testkit::TestApp::spawn().await;
        let user = app.user("fz").await;
        let room = app.api.create_group_ok(&user, "fuzz", &[]).await.room_id;
        app.api.send_ok(&user, room, "hello").await;
        (app, user, room)
    });
    // Frames naming the user's room as well as any other.
    let room_frame = (0..2i64, fuzz::edge_i64(), 0..4u8).prop_map(move |(r, s, kind)| {
        let room_id = if r == 0 { room } else { r + 1_000_000 };
        match kind {
            0 => serde_json::json!({"type": "ack", "room_id": room_id, "seq": s}),
            1 => serde_json::json!({"type": "sync", "room_id": room_id, "after_seq": s}),
            2 => serde_json::json!({"type": "read", "room_id": room_id, "seq": s}),
            _ => serde_json::json!({"type": "typing", "room_id": room_id}),
        }
        .to_string()
    });
    let sent = prop_oneof![
        6 => client_text().prop_map(Sent::Text),
        3 => room_frame.prop_map(Sent::Text),
        1 => prop::collection::vec(any::<u8>(), 0..16).prop_map(Sent::Binary),
    ];
    fuzz::check(
        fuzz::config_scaled(8),
        file!(),
        prop::collection::vec(sent, 1..5),
        |frames| {
            rt.block_on(async {
                let mut ws = app.ws(&user).await;
                for f in &frames {
                    let refused = match f {
                        Sent::Binary(b) => {
                            ws.send_binary(b.clone()).await.map_err(fail)?;
                            Some(1003)
                        }
                        Sent::Text(t) => {
                            ws.send_text(t.clone()).await.map_err(fail)?;
                            match serde_json::from_str::<ClientFrame>(t) {
                                _ if t.len() > MAX_FRAME_BYTES => Some(1009),
                                Err(_) => Some(1007),
                                Ok(ClientFrame::Ping {}) => {
                                    ws.next_pong().await.map_err(fail)?;
                                    None
                                }
                                Ok(_) => None,
                            }
                        }
                    };
                    if let Some(code) = refused {
                        prop_assert_eq!(
                            ws.close_code().await.map_err(fail)?,
                            Some(code),
                            "after {:?}",
                            f
                        );
                        return Ok(());
                    }
                }
                ws.ping().await.map_err(fail)?;
                ws.next_pong().await.map_err(fail)?;
                ws.close().await.map_err(fail)?;
                Ok(())
            })
        },
    );
    rt.block_on(app.shutdown());
}

fn fail(e: anyhow::Error) -> TestCaseError {
    TestCaseError::fail(format!("{e:#}"))
}
