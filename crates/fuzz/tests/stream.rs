//! Fuzz target: the decoder of gateway stream entries and of receipts (`bus::redis`). Anything
//! may have been written to a Redis stream (another version, a person with `redis-cli`): every
//! field map decodes to an entry or to "skip" without a panic, what Send appends decodes to
//! itself, and a real stream with such entries among good ones yields exactly the good ones, in
//! order, and acknowledges them all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bus::redis::{FIELD, ORIGIN, RedisBus, RedisSettings, decode_entry, decode_receipt};
use bus::{PushStream, Receipt, StreamUpkeep};
use proptest::prelude::*;
use proto::api::MessageType;
use proto::frame::{Notice, NoticeEvent};
use proto::stream::{PushEntry, PushMessage};
use redis::Value as RedisValue;

fn message_type() -> impl Strategy<Value = MessageType> {
    prop::sample::select(vec![
        MessageType::Text,
        MessageType::Image,
        MessageType::File,
    ])
}

fn targets() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(fuzz::edge_i64(), 0..8)
}

/// Every kind of entry Send appends, with hostile contents.
fn entry() -> impl Strategy<Value = PushEntry> {
    let id = fuzz::edge_i64;
    let message = (
        (id(), id(), id(), id()),
        message_type(),
        fuzz::text(),
        prop::option::of(fuzz::text()),
        id(),
    )
        .prop_map(
            |((id, room_id, seq, sender_id), msg_type, content, client_msg_id, created_at_ms)| {
                PushMessage {
                    id,
                    room_id,
                    seq,
                    sender_id,
                    msg_type,
                    content,
                    client_msg_id,
                    created_at_ms,
                }
            },
        );
    let event = prop::sample::select(vec![
        NoticeEvent::MemberAdded,
        NoticeEvent::MemberJoined,
        NoticeEvent::MemberLeft,
        NoticeEvent::MemberRemoved,
        NoticeEvent::RoleChanged,
        NoticeEvent::OwnerChanged,
        NoticeEvent::GroupRenamed,
        NoticeEvent::JoinRequested,
        NoticeEvent::JoinRejected,
        NoticeEvent::Dissolved,
    ]);
    let notice = (
        id(),
        event,
        targets(),
        prop::option::of(id()),
        prop::option::of(fuzz::text()),
        prop::option::of(id()),
    )
        .prop_map(
            |(room_id, event, user_ids, by, detail, request_id)| Notice {
                room_id,
                event,
                user_ids,
                by,
                detail,
                request_id,
            },
        );
    prop_oneof![
        3 => (message, targets()).prop_map(|(m, targets)| PushEntry::Chat {
            message: Arc::new(m),
            targets,
        }),
        1 => (notice, targets()).prop_map(|(n, targets)| PushEntry::Notice {
            notice: Arc::new(n),
            targets,
        }),
        1 => (id(), id()).prop_map(|(user_id, token_version)| PushEntry::Revoke {
            user_id,
            token_version,
        }),
        1 => (id(), fuzz::text()).prop_map(|(user_id, device_id)| PushEntry::DropDevice {
            user_id,
            device_id,
        }),
        1 => (id(), id(), id(), targets()).prop_map(|(room_id, user_id, seq, targets)| {
            PushEntry::Read {
                room_id,
                user_id,
                seq,
                targets,
            }
        }),
        1 => (id(), id(), targets()).prop_map(|(room_id, user_id, targets)| PushEntry::Typing {
            room_id,
            user_id,
            targets,
        }),
        1 => (id(), id(), id(), id(), prop::option::of(fuzz::text())).prop_map(
            |(sender_id, message_id, room_id, seq, client_msg_id)| PushEntry::Ack {
                sender_id,
                message_id,
                room_id,
                seq,
                client_msg_id,
            }
        ),
    ]
}

/// The bytes Send writes for `entry` (as `RedisBus` appends it).
fn entry_bytes(entry: &PushEntry) -> Vec<u8> {
    serde_json::to_vec(entry).expect("entries serialize")
}

/// Any value a Redis reply can hold, nested.
fn redis_value() -> impl Strategy<Value = RedisValue> {
    let leaf = prop_oneof![
        Just(RedisValue::Nil),
        Just(RedisValue::Okay),
        fuzz::edge_i64().prop_map(RedisValue::Int),
        fuzz::json_bytes().prop_map(RedisValue::BulkString),
        entry().prop_map(|e| RedisValue::BulkString(entry_bytes(&e))),
        fuzz::text().prop_map(RedisValue::SimpleString),
        any::<f64>().prop_map(RedisValue::Double),
        any::<bool>().prop_map(RedisValue::Boolean),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(RedisValue::Array),
            prop::collection::vec(inner.clone(), 0..4).prop_map(RedisValue::Set),
            prop::collection::vec((inner.clone(), inner), 0..3).prop_map(RedisValue::Map),
        ]
    })
}

/// A stream entry's fields: mostly the two the decoder reads, with any values, plus strangers.
fn fields() -> impl Strategy<Value = HashMap<String, RedisValue>> {
    let key = prop_oneof![
        4 => Just(FIELD.to_owned()),
        2 => Just(ORIGIN.to_owned()),
        1 => fuzz::text(),
    ];
    prop::collection::hash_map(key, redis_value(), 0..4)
}

proptest! {
    #![proptest_config(fuzz::config())]

    #[test]
    fn any_field_map_decodes_to_an_entry_or_a_skip(fields in fields()) {
        let (entry, origin) = decode_entry(&fields);
        if let Some(e) = &entry {
            // Only an entry's own JSON decodes, and it decodes to what it says.
            let raw = match &fields[FIELD] {
                RedisValue::BulkString(b) => b.clone(),
                RedisValue::SimpleString(s) => s.clone().into_bytes(),
                other => return Err(TestCaseError::fail(format!("decoded from {other:?}"))),
            };
            prop_assert_eq!(&serde_json::from_slice::<PushEntry>(&raw).expect("json"), e);
        }
        prop_assert!(origin.is_none() || fields.contains_key(ORIGIN));
        let _ = decode_receipt(&fields);
    }

    #[test]
    fn what_send_appends_decodes_to_itself(entry in entry(), origin in prop::option::of("[a-z0-9-]{1,20}")) {
        let mut fields = HashMap::from([(FIELD.to_owned(), RedisValue::BulkString(entry_bytes(&entry)))]);
        if let Some(o) = &origin {
            fields.insert(ORIGIN.to_owned(), RedisValue::BulkString(o.clone().into_bytes()));
        }
        prop_assert_eq!(decode_entry(&fields), (Some(entry), origin));
    }

    #[test]
    fn receipts_decode_to_themselves(gateway in fuzz::text(), ids in targets()) {
        let receipt = Receipt { gateway, ids };
        let raw = serde_json::to_vec(&receipt).expect("receipts serialize");
        let fields = HashMap::from([(FIELD.to_owned(), RedisValue::BulkString(raw))]);
        prop_assert_eq!(decode_receipt(&fields), Some(receipt));
    }
}

/// One entry written to a real stream: Send's own, or any fields and values at all.
#[derive(Debug, Clone)]
enum Written {
    Good(PushEntry),
    Raw(Vec<(Vec<u8>, Vec<u8>)>),
}

fn written() -> impl Strategy<Value = Written> {
    let name = prop_oneof![
        3 => Just(FIELD.as_bytes().to_vec()),
        1 => Just(ORIGIN.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 1..6),
    ];
    let value = prop_oneof![
        2 => fuzz::json_bytes(),
        1 => entry().prop_map(|e| {
            // A good entry's text, cut: what a half-written or foreign entry looks like.
            let b = entry_bytes(&e);
            b[..b.len() / 2].to_vec()
        }),
    ];
    prop_oneof![
        2 => entry().prop_map(Written::Good),
        1 => prop::collection::vec((name, value), 1..4).prop_map(Written::Raw),
    ]
}

/// Whether the decoder takes `raw` fields, as Redis would hand them back (the last of a
/// repeated field wins).
fn decodes(raw: &[(Vec<u8>, Vec<u8>)]) -> Option<PushEntry> {
    let fields: HashMap<String, RedisValue> = raw
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                RedisValue::BulkString(v.clone()),
            )
        })
        .collect();
    decode_entry(&fields).0
}

/// A bus under a key prefix of its own on the test Redis, a plain connection for raw writes,
/// and a counter naming one gateway stream per case, so that a failing case leaves nothing
/// behind for the next (nor for the shrinking that follows it).
struct Harness {
    rt: tokio::runtime::Runtime,
    bus: RedisBus,
    conn: redis::aio::MultiplexedConnection,
    prefix: String,
    cases: std::sync::atomic::AtomicUsize,
}

impl Harness {
    fn new() -> Self {
        let url = std::env::var("RUSTSTACKER_TEST_REDIS_URL").expect(
            "RUSTSTACKER_TEST_REDIS_URL must point at a Redis for these tests (scripts/test.sh sets it)",
        );
        let rt = tokio::runtime::Runtime::new().expect("a runtime");
        let prefix = format!("rsfuzz{:016x}", rand::random::<u64>());
        let (bus, conn) = rt.block_on(async {
            let bus = RedisBus::connect(
                &url,
                RedisSettings {
                    prefix: prefix.clone(),
                    gateway_ttl: Duration::from_secs(30),
                    route_ttl: Duration::from_secs(60),
                    lease_ttl: Duration::from_secs(60),
                    stream_maxlen: 10_000,
                },
            )
            .await
            .expect("redis reachable");
            let client = redis::Client::open(url.as_str()).expect("a redis url");
            let conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis reachable");
            (bus, conn)
        });
        Self {
            rt,
            bus,
            conn,
            prefix,
            cases: Default::default(),
        }
    }

    /// Writes `batch` to a fresh gateway stream, reads it as a gateway does and acknowledges
    /// it: every entry is read, exactly the good ones come out in order, none stays pending.
    fn case(&self, batch: &[Written]) -> Result<(), TestCaseError> {
        self.rt.block_on(async {
            let n = self
                .cases
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let gateway = format!("gw-{n}");
            let key = self.bus.stream_key(&gateway);
            let mut stream = self.bus.consume(&gateway).await.map_err(bus_fail)?;
            let mut conn = self.conn.clone();
            let mut want = Vec::new();
            for w in batch {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&key).arg("*");
                match w {
                    Written::Good(e) => {
                        cmd.arg(FIELD).arg(entry_bytes(e));
                        want.push(e.clone());
                    }
                    Written::Raw(fields) => {
                        for (k, v) in fields {
                            cmd.arg(k).arg(v);
                        }
                        want.extend(decodes(fields));
                    }
                }
                let _: String = cmd.query_async(&mut conn).await.map_err(redis_fail)?;
            }
            let mut got = Vec::new();
            let mut read = 0;
            let mut failed = None;
            while read < batch.len() {
                match stream.read(&mut got, 64, Duration::from_secs(5)).await {
                    Ok(0) => break,
                    Ok(n) => read += n,
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            stream.ack().await.map_err(bus_fail)?;
            prop_assert_eq!(failed, None, "the read failed");
            prop_assert_eq!(read, batch.len(), "entries the stream did not give");
            prop_assert_eq!(got, want);
            let stats = self.bus.stream_stats(&gateway).await.map_err(bus_fail)?;
            prop_assert_eq!(stats.pending, 0, "entries left unacknowledged");
            Ok(())
        })
    }
}

impl Drop for Harness {
    /// The streams, their groups and the receipt streams of the origins written.
    fn drop(&mut self) {
        self.rt.block_on(async {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.prefix))
                .query_async(&mut self.conn)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<i64, _> = redis::cmd("DEL")
                    .arg(keys)
                    .query_async(&mut self.conn)
                    .await;
            }
        });
    }
}

#[test]
fn a_real_stream_yields_exactly_the_good_entries_in_order_and_acknowledges_all() {
    let h = Harness::new();
    fuzz::check(
        fuzz::config_scaled(8),
        file!(),
        prop::collection::vec(written(), 1..6),
        |batch| h.case(&batch),
    );
}

/// Found by the target above: redis-rs refused a whole XREADGROUP reply over one field name that
/// is not UTF-8, after Redis had handed the batch over, so the good entries beside it were never
/// pushed nor acknowledged.
#[test]
fn a_field_name_that_is_not_utf8_does_not_lose_the_entries_read_with_it() {
    let good = |seq| {
        Written::Good(PushEntry::Revoke {
            user_id: 7,
            token_version: seq,
        })
    };
    let h = Harness::new();
    let batch = [
        good(1),
        Written::Raw(vec![(vec![0x80], b"null".to_vec())]),
        good(2),
    ];
    if let Err(e) = h.case(&batch) {
        panic!("{e}");
    }
}

fn redis_fail(e: redis::RedisError) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

fn bus_fail(e: bus::BusError) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}
